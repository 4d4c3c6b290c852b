"""Notebook spawn benchmark: Dockyard's spawner against a bare ``docker run`` of the same
image, in the same run, on the image users get (default ``dockyard/notebook:latest``).

- Bare: the Docker SDK starts the image's own command (``jupyterhub-singleuser``) as uid
  1000 with the environment a hub gives it (the same hub API address, so the server does
  the same start-up work, its check that the hub answers included); no hub in between.
- Dockyard: an admin asks the hub's REST API to start a user's server (``POST
  /hub/api/users/NAME/server`` with a real hub token, to a real ``dockyard up``) and
  follows the spawn's progress stream, as the hub's spawn page does, until it says ready.

Both sides are "ready" on the same criterion: the first HTTP 200 for ``GET
/user/NAME/api`` of the user's Jupyter server, asked every 10 ms without credentials by
the same plain GET on a fresh connection (bare: on the container's address, from the
moment it is created; Dockyard: through the proxy, where users reach it, once the progress
stream says ready, which is when the hub's page sends a browser there).
That path is the server's version endpoint, which a Jupyter server answers without a
login, so neither side needs a token the other lacks; before the server runs, Dockyard's
proxy answers it with the hub's redirect or error page, never a 200. The clock runs from
the request to start (``containers.run``, or the hub API's POST) until that 200.

Single spawns: one warm-up per side (not counted), then the timed spawns one at a time,
the sides alternating which goes first, the server stopped and its container removed
after each. Then a burst: N servers started at once on each side (N users on Dockyard).
Goals: single spawn ≤ 1.15× bare on p50 and on p95; the burst all ready with p95 ≤ 1.2×
the bare burst's p95. Percentiles are nearest-rank (with 3 spawns, p95 is the slowest).

    .venv/bin/python bench/spawn.py [--image IMAGE] [--single 5] [--burst 20] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import docker

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.report import Results, percentile  # noqa: E402
from dockyard.containers import container_gateway  # noqa: E402
from dockyard.settings import Settings  # noqa: E402
from spawner.notebooks.docker import server_answers  # noqa: E402
from tests.support.hubproc import RunningHub, start_hub  # noqa: E402

BARE_LABEL = "dockyard.bench"
READY_LIMIT = 300.0  # seconds a spawn may take before the benchmark counts it as failed
PROBE_SECONDS = 0.01
SINGLE_GOAL = 1.15
BURST_GOAL = 1.2


def ready_path(user: str) -> str:
    """What both sides ask until it answers 200: the user's server's version endpoint."""
    return f"/user/{user}/api"


async def wait_for_200(host: str, port: int, path: str, started: float, what: str) -> float:
    """Seconds since ``started`` until ``path`` answers 200, asked every 10 ms."""
    while time.perf_counter() - started < READY_LIMIT:
        # Without credentials: a redirect (the proxy's or the hub's) does not count.
        if await server_answers(host, port, path, accept=lambda status: status == 200):
            return time.perf_counter() - started
        await asyncio.sleep(PROBE_SECONDS)
    raise TimeoutError(f"{what} did not answer 200 on {host}:{port}{path}")


# -- bare docker run -----------------------------------------------------------------------
class Bare:
    def __init__(self, image: str, hub_api_url: str, tag: str) -> None:
        self.image = image
        self.hub_api_url = hub_api_url
        self.tag = tag
        self.client = docker.from_env(timeout=300, max_pool_size=64)

    async def run_one(self, index: int) -> float:
        name = f"{self.tag}-bare-{index}"
        prefix = f"/user/{name}/"
        env = {
            "JUPYTERHUB_API_URL": self.hub_api_url,
            "JUPYTERHUB_API_TOKEN": secrets.token_hex(16),  # not valid: only start-up matters
            "JUPYTERHUB_USER": name,
            "JUPYTERHUB_SERVICE_PREFIX": prefix,
            "JUPYTERHUB_SERVICE_URL": f"http://0.0.0.0:8888{prefix}",
            "JUPYTERHUB_CLIENT_ID": f"jupyterhub-user-{name}",
            "JUPYTERHUB_OAUTH_CALLBACK_URL": f"{prefix}oauth_callback",
        }
        started = time.perf_counter()
        container = await asyncio.to_thread(
            self.client.containers.run, self.image, detach=True, name=name, environment=env,
            user="1000:100", labels={BARE_LABEL: self.tag},
        )
        container = await asyncio.to_thread(self.client.containers.get, container.id)
        ip = container.attrs["NetworkSettings"]["IPAddress"]
        return await wait_for_200(ip, 8888, ready_path(name), started, f"bare container {name}")

    async def clean(self) -> None:
        def remove() -> None:
            mine = {"label": f"{BARE_LABEL}={self.tag}"}
            for container in self.client.containers.list(all=True, filters=mine):
                container.remove(force=True)

        await asyncio.to_thread(remove)

    def close(self) -> None:
        self.client.close()


# -- Dockyard through the hub's REST API -----------------------------------------------------
class Hub:
    def __init__(self, hub: RunningHub, token: str, session: aiohttp.ClientSession) -> None:
        self.hub = hub
        self.headers = {"Authorization": f"token {token}"}
        self.session = session

    async def create_users(self, names: list[str]) -> None:
        async with self.session.post(f"{self.hub.url}/hub/api/users", headers=self.headers,
                                     json={"usernames": names}) as response:
            if response.status not in (201, 409):
                raise RuntimeError(f"creating users: {response.status} {await response.text()}")

    async def spawn(self, user: str) -> float:
        started = time.perf_counter()
        api = f"{self.hub.url}/hub/api/users/{user}"
        async with self.session.post(f"{api}/server", headers=self.headers,
                                     json={}) as response:
            if response.status not in (201, 202):
                raise RuntimeError(f"spawn {user}: {response.status} {await response.text()}")
            pending = response.status == 202
        if pending:
            await self._wait_ready(f"{api}/server/progress")
        proxy = urlsplit(self.hub.url)
        assert proxy.hostname and proxy.port
        return await wait_for_200(proxy.hostname, proxy.port, ready_path(user), started,
                                  f"{user}'s server")

    async def _wait_ready(self, url: str) -> None:
        timeout = aiohttp.ClientTimeout(total=READY_LIMIT)
        async with self.session.get(url, headers=self.headers, timeout=timeout) as response:
            async for raw in response.content:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[5:])
                if event.get("failed"):
                    raise RuntimeError(f"spawn failed: {event.get('message')}")
                if event.get("ready"):
                    return
        raise RuntimeError("progress stream ended before the server was ready")

    async def stop(self, user: str) -> None:
        api = f"{self.hub.url}/hub/api/users/{user}"
        async with self.session.delete(f"{api}/server", headers=self.headers) as response:
            if response.status not in (202, 204, 400):
                raise RuntimeError(f"stop {user}: {response.status}")
        deadline = time.monotonic() + READY_LIMIT
        while time.monotonic() < deadline:
            async with self.session.get(api, headers=self.headers) as response:
                model = await response.json()
            if not model.get("servers"):
                return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{user}'s server did not stop")


async def burst(run: Callable[[int], Awaitable[float]], count: int) -> list[float]:
    outcomes = await asyncio.gather(*(run(i) for i in range(count)), return_exceptions=True)
    for outcome in outcomes:
        if not isinstance(outcome, float):
            print(f"    not ready: {outcome!r}", file=sys.stderr)
    return [o for o in outcomes if isinstance(o, float)]


def row(label: str, times: list[float], total: int | None = None) -> str:
    if not times:
        return f"{label:<34} (none ready)"
    p50, p95 = percentile(times, 0.5), percentile(times, 0.95)
    text = f"{label:<34} p50 {p50:6.2f} s   p95 {p95:6.2f} s   max {max(times):6.2f} s"
    if total is not None:
        text += f"   ready {len(times)}/{total}"
    return text


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


async def settle() -> None:
    """Let the machine go quiet between phases (containers stopping, page cache)."""
    await asyncio.sleep(3)


async def measure(args: argparse.Namespace, hub: RunningHub, tag: str,
                  results: Results) -> None:
    admin = hub.login()
    gateway = container_gateway(Settings(home=hub.home))
    hub_api_url = f"http://{gateway}:{hub.env['DOCKYARD_HUB_PORT']}/hub/api"
    timeout = aiohttp.ClientTimeout(total=READY_LIMIT + 60)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        ours = Hub(hub, hub.hub_token(admin, hub.admin), session)
        bare = Bare(args.image, hub_api_url, tag)
        try:
            await ours.create_users(["benchsingle"])

            async def bare_single(index: int) -> float:
                try:
                    return await bare.run_one(index)
                finally:
                    await bare.clean()

            async def dockyard_single(_index: int) -> float:
                try:
                    return await ours.spawn("benchsingle")
                finally:
                    await ours.stop("benchsingle")

            # Warm-up, not counted: caches on both sides, the user's home volume made.
            await bare_single(0)
            await dockyard_single(0)
            bare_times: list[float] = []
            our_times: list[float] = []
            for index in range(1, args.single + 1):
                order = [(bare_single, bare_times), (dockyard_single, our_times)]
                for run, times in order if index % 2 else reversed(order):
                    times.append(await run(index))
            await settle()

            bare_burst = await burst(lambda i: bare.run_one(100 + i), args.burst)
            await bare.clean()
            await settle()

            users = [f"benchu{i:02d}" for i in range(args.burst)]
            await ours.create_users(users)
            our_burst = await burst(lambda i: ours.spawn(users[i]), args.burst)
            await asyncio.gather(*(ours.stop(u) for u in users), return_exceptions=True)
        finally:
            await bare.clean()
            bare.close()

    print()
    print(row("bare docker run, single", bare_times))
    print(row("Dockyard spawn, single", our_times))
    print(row(f"bare docker run, {args.burst} at once", bare_burst, args.burst))
    print(row(f"Dockyard spawn, {args.burst} at once", our_burst, args.burst))
    print()
    singles = f"{args.single} timed spawns per side on {args.image}"
    for name, fraction in (("p50", 0.5), ("p95", 0.95)):
        ratio = percentile(our_times, fraction) / percentile(bare_times, fraction)
        print(f"single, {name}: Dockyard / bare = {ratio:.2f}   goal ≤ {SINGLE_GOAL}  "
              f"{verdict(ratio <= SINGLE_GOAL)}")
        results.add(f"single spawn until {ready_path('NAME')} answers 200, {name}",
                    percentile(our_times, fraction), unit="s",
                    baseline=percentile(bare_times, fraction),
                    baseline_name="bare docker run (Docker SDK)", goal_ratio=SINGLE_GOAL,
                    note=singles)
    bursts = f"{args.burst} at once on {args.image}"
    if bare_burst and our_burst:
        ratio = percentile(our_burst, 0.95) / percentile(bare_burst, 0.95)
        all_ready = len(our_burst) == args.burst
        print(f"{args.burst} at once, p95: Dockyard / bare = {ratio:.2f}, "
              f"{len(our_burst)}/{args.burst} ready   goal all ready and ≤ {BURST_GOAL}  "
              f"{verdict(all_ready and ratio <= BURST_GOAL)}")
        results.add(f"burst of {args.burst} spawns, p95", percentile(our_burst, 0.95), unit="s",
                    baseline=percentile(bare_burst, 0.95),
                    baseline_name=f"{args.burst} bare docker runs at once",
                    goal_ratio=BURST_GOAL, note=bursts)
    results.add(f"burst of {args.burst} spawns, servers ready", len(our_burst), unit="servers",
                baseline=len(bare_burst), baseline_name=f"{args.burst} bare docker runs at once",
                better="higher", goal_value=args.burst, note=bursts)


async def main(args: argparse.Namespace) -> int:
    # A SIGTERM (``make bench`` stopping an overrun) cancels the measurement, so that the
    # clean-up below still removes the hub, containers and volumes.
    loop = asyncio.get_running_loop()
    current = asyncio.current_task()
    assert current is not None
    loop.add_signal_handler(signal.SIGTERM, current.cancel)
    # Enough threads that all bare `docker run`s of a burst are requested at once.
    loop.set_default_executor(ThreadPoolExecutor(4 * args.burst))
    tag = "dybench" + secrets.token_hex(3)
    home = Path(tempfile.mkdtemp(prefix="dockyard-bench-spawn-"))
    print(f"Notebook spawn benchmark: image {args.image}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} at start")
    client = docker.from_env(timeout=120)
    hub: RunningHub | None = None
    try:
        client.images.get(args.image)  # a missing image fails here, not in every spawn
        hub = await asyncio.to_thread(
            start_hub, home, DOCKYARD_SPAWNER="docker", DOCKYARD_NOTEBOOK_IMAGE=args.image,
            DOCKYARD_DOCKER_NAME_PREFIX=tag, DOCKYARD_JOB_BACKEND="local",
            DOCKYARD_LOG_LEVEL="WARNING")
        results = Results("spawn")
        await measure(args, hub, tag, results)
        print(f"load average {os.getloadavg()[0]:.2f} at the end")
        results.write()
        return 0
    finally:
        if hub is not None:
            hub.stop()
        ours = {"label": f"dockyard.prefix={tag}"}
        for container in client.containers.list(all=True, filters=ours):
            container.remove(force=True)
        for container in client.containers.list(all=True,
                                                 filters={"label": f"{BARE_LABEL}={tag}"}):
            container.remove(force=True)
        for volume in client.volumes.list(filters=ours):
            volume.remove(force=True)
        client.close()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default="dockyard/notebook:latest")
    parser.add_argument("--single", type=int, default=5, help="timed single spawns per side")
    parser.add_argument("--burst", type=int, default=20, help="servers started at once")
    parser.add_argument("--quick", action="store_true",
                        help="3 timed single spawns per side and a burst of 5")
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.single = min(arguments.single, 3)
        arguments.burst = min(arguments.burst, 5)
    sys.exit(asyncio.run(main(arguments)))
