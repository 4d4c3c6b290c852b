"""Notebook spawn benchmark: Dockyard's spawner against a bare ``docker run``.

Runs, on one image and in one go:

1. bare ``docker run`` (Docker SDK, no hub in between) until the Jupyter server answers,
   one at a time, then 20 started at once;
2. Dockyard: a spawn through the hub's REST API until the server answers through the
   proxy, one at a time, then 20 users at once;

and prints p50 / p95 / max, how many became ready, and the ratios (goals: single spawn
<= 1.15x bare; 20 at once all ready with p95 <= 1.2x the bare 20-at-once p95).

Both sides get one warm-up run first and are timed the same way: from the request to
the first HTTP answer of the Jupyter server (bare: probed every 10 ms on the container's
address; Dockyard: the proxy route answers once the hub reports the server ready). The
bare containers run the image's own command with the same hub API address, so the
server does the same start-up work (including its check that the hub answers).

    .venv/bin/python bench/spawn.py [--image dockyard/test:latest] [--single 5] [--burst 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import docker

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dockyard.containers import container_gateway  # noqa: E402
from dockyard.settings import Settings  # noqa: E402
from spawner.notebooks.docker import server_answers  # noqa: E402
from tests.support.hubproc import RunningHub, start_hub  # noqa: E402

BARE_LABEL = "dockyard.bench"
READY_LIMIT = 300.0  # seconds a spawn may take before the benchmark counts it as failed


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


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
        while time.perf_counter() - started < READY_LIMIT:
            if await server_answers(ip, 8888, prefix + "api"):
                return time.perf_counter() - started
            await asyncio.sleep(0.01)
        raise TimeoutError(f"bare container {name} did not answer")

    async def clean(self) -> None:
        def remove() -> None:
            mine = {"label": f"{BARE_LABEL}={self.tag}"}
            for container in self.client.containers.list(all=True, filters=mine):
                container.remove(force=True)

        await asyncio.to_thread(remove)


# -- Dockyard through the hub's REST API -----------------------------------------------------
class Hub:
    def __init__(self, hub: RunningHub, token: str) -> None:
        self.hub = hub
        self.headers = {"Authorization": f"token {token}"}

    async def create_users(self, session: aiohttp.ClientSession, names: list[str]) -> None:
        async with session.post(f"{self.hub.url}/hub/api/users", headers=self.headers,
                                json={"usernames": names}) as response:
            if response.status not in (201, 409):
                raise RuntimeError(f"creating users: {response.status} {await response.text()}")

    async def spawn(self, session: aiohttp.ClientSession, user: str) -> float:
        started = time.perf_counter()
        api = f"{self.hub.url}/hub/api/users/{user}"
        async with session.post(f"{api}/server", headers=self.headers, json={}) as response:
            if response.status not in (201, 202):
                raise RuntimeError(f"spawn {user}: {response.status} {await response.text()}")
            pending = response.status == 202
        if pending:
            await self._wait_ready(session, f"{api}/server/progress")
        while time.perf_counter() - started < READY_LIMIT:
            async with session.get(f"{self.hub.url}/user/{user}/api", headers=self.headers,
                                   allow_redirects=False) as response:
                if response.status == 200:
                    return time.perf_counter() - started
            await asyncio.sleep(0.01)
        raise TimeoutError(f"{user}'s server did not answer through the proxy")

    async def _wait_ready(self, session: aiohttp.ClientSession, url: str) -> None:
        timeout = aiohttp.ClientTimeout(total=READY_LIMIT)
        async with session.get(url, headers=self.headers, timeout=timeout) as response:
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

    async def stop(self, session: aiohttp.ClientSession, user: str) -> None:
        api = f"{self.hub.url}/hub/api/users/{user}"
        async with session.delete(f"{api}/server", headers=self.headers) as response:
            if response.status not in (202, 204, 400):
                raise RuntimeError(f"stop {user}: {response.status}")
        while True:
            async with session.get(api, headers=self.headers) as response:
                model = await response.json()
            if not model.get("servers"):
                return
            await asyncio.sleep(0.2)


async def timed_series(run: Callable[[int], Awaitable[float]], count: int,
                       between: Callable[[], Awaitable[None]]) -> list[float]:
    results = []
    for index in range(count + 1):
        seconds = await run(index)
        if index:  # the first run warms caches on both sides and is not counted
            results.append(seconds)
        await between()
    return results


async def burst(run: Callable[[int], Awaitable[float]], count: int) -> tuple[list[float], int]:
    outcomes = await asyncio.gather(*(run(i) for i in range(count)), return_exceptions=True)
    times = [o for o in outcomes if isinstance(o, float)]
    for outcome in outcomes:
        if not isinstance(outcome, float):
            print(f"    not ready: {outcome!r}", file=sys.stderr)
    return times, len(times)


def row(label: str, times: list[float], ready: int | None = None, total: int | None = None) -> str:
    if not times:
        return f"{label:<34} (none ready)"
    p50, p95 = percentile(times, 0.5), percentile(times, 0.95)
    text = f"{label:<34} p50 {p50:6.2f} s   p95 {p95:6.2f} s   max {max(times):6.2f} s"
    if ready is not None:
        text += f"   ready {ready}/{total}"
    return text


async def settle() -> None:
    """Let the machine go quiet between phases (containers stopping, page cache)."""
    await asyncio.sleep(3)


async def main(args: argparse.Namespace) -> int:
    # Enough threads that all bare `docker run`s of a burst are requested at once.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(4 * args.burst))
    tag = "dybench" + secrets.token_hex(3)
    home = Path(tempfile.mkdtemp(prefix="dockyard-bench-"))
    print(f"Notebook spawn benchmark: image {args.image}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} at start")
    hub = start_hub(home, DOCKYARD_SPAWNER="docker", DOCKYARD_NOTEBOOK_IMAGE=args.image,
                    DOCKYARD_DOCKER_NAME_PREFIX=tag, DOCKYARD_JOB_BACKEND="local",
                    DOCKYARD_LOG_LEVEL="WARNING")
    client = docker.from_env(timeout=120)
    try:
        admin = hub.login()
        hub_api = Hub(hub, hub.hub_token(admin, hub.admin))
        gateway = container_gateway(Settings(home=home))
        bare = Bare(args.image, f"http://{gateway}:{hub.env['DOCKYARD_HUB_PORT']}/hub/api", tag)
        timeout = aiohttp.ClientTimeout(total=READY_LIMIT + 60)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            bare_single = await timed_series(bare.run_one, args.single, bare.clean)
            await settle()
            await hub_api.create_users(session, ["benchsingle"])

            async def dockyard_one(_index: int) -> float:
                return await hub_api.spawn(session, "benchsingle")

            async def stop_single() -> None:
                await hub_api.stop(session, "benchsingle")

            dockyard_single = await timed_series(dockyard_one, args.single, stop_single)
            await settle()

            bare_burst, bare_ready = await burst(lambda i: bare.run_one(100 + i), args.burst)
            await bare.clean()
            await settle()

            users = [f"benchu{i:02d}" for i in range(args.burst)]
            await hub_api.create_users(session, users)
            dockyard_burst, dockyard_ready = await burst(
                lambda i: hub_api.spawn(session, users[i]), args.burst)
            await asyncio.gather(*(hub_api.stop(session, u) for u in users),
                                 return_exceptions=True)

        print()
        print(row("bare docker run, single", bare_single))
        print(row("Dockyard spawn, single", dockyard_single))
        print(row(f"bare docker run, {args.burst} at once", bare_burst, bare_ready, args.burst))
        print(row(f"Dockyard spawn, {args.burst} at once", dockyard_burst, dockyard_ready,
                  args.burst))
        print()
        if bare_single and dockyard_single:
            ratio = percentile(dockyard_single, 0.5) / percentile(bare_single, 0.5)
            ratio95 = percentile(dockyard_single, 0.95) / percentile(bare_single, 0.95)
            print(f"single: Dockyard / bare = {ratio:.2f} (p50), {ratio95:.2f} (p95)   "
                  f"goal <= 1.15  {'met' if ratio <= 1.15 else 'NOT met'}")
        if bare_burst and dockyard_burst:
            ratio = percentile(dockyard_burst, 0.95) / percentile(bare_burst, 0.95)
            all_ready = dockyard_ready == args.burst
            print(f"{args.burst} at once: Dockyard / bare = {ratio:.2f} (p95), "
                  f"{dockyard_ready}/{args.burst} ready   goal all ready and <= 1.2  "
                  f"{'met' if all_ready and ratio <= 1.2 else 'NOT met'}")
        print(f"load average {os.getloadavg()[0]:.2f} at the end")
        return 0
    finally:
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
    parser.add_argument("--image", default="dockyard/test:latest")
    parser.add_argument("--single", type=int, default=5, help="timed single spawns per side")
    parser.add_argument("--burst", type=int, default=20, help="servers started at once")
    sys.exit(asyncio.run(main(parser.parse_args())))
