"""Users on one box: how many idle notebook servers one machine holds, what they cost, and
whether the hub and Dockyard's pages stay quick while they run.

On a real ``dockyard up`` (JupyterHub, proxy, the web service under gunicorn, worker, the
idle culler; Docker spawner, SQLite, its own home and name prefix), as an admin would
through the hub's REST API with a hub token:

1. Create N users (``POST /hub/api/users``), then measure the **baseline**: the hub API
   (``GET /hub/api/users/{name}`` with the token, one request at a time over one
   keep-alive connection through the proxy, cycling through the users) and Dockyard's
   runs list (``GET /services/dockyard/jobs/``, the page the service's home redirects to,
   with a session logged in through the hub's login form, the same way), no server
   running.
2. Start the users' servers on the ``small`` profile (``POST /hub/api/users/{name}/server``
   with ``{"profile": "small"}``) in waves (10 at once by default), each wave until every
   server answers HTTP 200 on ``/user/{name}/api`` through the proxy, until N servers run or
   the machine's available memory (``MemAvailable``) would fall below a safety margin.
3. With them all idle: memory per server (the container's memory use from the Docker
   engine's stats, page cache excluded as ``docker stats`` does, and the machine's
   ``MemAvailable`` drop divided by the servers), then the same two p95s as the baseline,
   the same number of requests, the same way.
4. Leave them idle: the time the idle culler (``jupyterhub-idle-culler`` as Dockyard runs
   it, the shortest ``DOCKYARD_IDLE_TIMEOUT`` the settings allow, its interval as the hub
   configuration derives it) takes from the servers' last activity until the hub reports
   every one stopped, against the configured timeout + the culler's interval.

While servers start, the bench records activity for the running ones through the hub API
(``POST /hub/api/users/{name}/activity``, what a server in use reports itself) so that none
is culled before all have started; it does not while measuring. Everything the bench
started (servers, containers, volumes, the hub) is stopped and removed at the end.

Goal: 100 idle servers on a 2-core / 24 GB machine with the hub API p95 ≤ 100 ms meanwhile.

    .venv/bin/python bench/scale.py [--users 100] [--wave 10] [--min-available-gb 2]
    .venv/bin/python bench/scale.py --quick      # 10 servers in waves of 5
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.report import Results, percentile  # noqa: E402
from tests.support.hubproc import RunningHub, start_hub  # noqa: E402

PROFILE = "small"
READY_LIMIT = 300.0  # seconds a server may take to answer before it counts as not ready
# The shortest idle timeout Dockyard's settings accept (DOCKYARD_IDLE_TIMEOUT, ge=60).
IDLE_TIMEOUT = 60
# Servers still start while earlier ones must not look idle: their activity is recorded
# this often, well inside the idle timeout.
KEEP_ALIVE_SECONDS = 15.0
# Before the first server is measured, assume this much memory per server (a JupyterLab
# server idles at a few hundred MB at most) so that the first wave cannot overshoot.
FIRST_GUESS_MB = 400.0
MIN_GUESS_MB = 150.0
MB = 1024 * 1024


def mem_available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def utc_stamp() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Latencies:
    hub_api: list[float] = field(default_factory=list)
    pages: list[float] = field(default_factory=list)

    def line(self, label: str) -> str:
        def part(name: str, values: list[float]) -> str:
            if not values:
                return f"{name} (none)"
            return (f"{name} p50 {percentile(values, 0.5) * 1e3:6.1f} ms  "
                    f"p95 {percentile(values, 0.95) * 1e3:6.1f} ms  "
                    f"max {max(values) * 1e3:6.1f} ms")
        return f"{label:<26} {part('hub API', self.hub_api)}   {part('runs page', self.pages)}"


class ScaleBench:
    """The hub's REST API as an admin, and the Dockyard pages as a logged-in person."""

    def __init__(self, hub: RunningHub, users: list[str]) -> None:
        self.hub = hub
        self.users = users
        self.browser = hub.login()
        # Sign in to Dockyard through the hub (OAuth) once; a measured page must then be
        # served as it is: a redirect would mean the login was lost.
        landed = self.browser.get(hub.service("jobs/"), timeout=60)
        if landed.status_code != 200 or landed.url != hub.service("jobs/"):
            raise RuntimeError(f"could not sign in to Dockyard: {landed.status_code} {landed.url}")
        token = hub.hub_token(self.browser, hub.admin)
        self.headers = {"Authorization": f"token {token}"}
        self.api = f"{hub.url}/hub/api"
        self.threads = ThreadPoolExecutor(16)
        self._calls = threading.local()

    def _http(self) -> requests.Session:
        """One keep-alive session per thread (requests' sessions are not thread-safe)."""
        session = getattr(self._calls, "session", None)
        if session is None:
            session = self._calls.session = requests.Session()
            session.headers.update(self.headers)
        return session

    # -- users and servers ------------------------------------------------------------
    def create_users(self) -> None:
        response = self._http().post(f"{self.api}/users", json={"usernames": self.users},
                                     timeout=60)
        if response.status_code not in (201, 409):
            raise RuntimeError(f"creating users: {response.status_code} {response.text}")

    def start_server(self, user: str) -> float:
        """Seconds from the request until the server answers 200 through the proxy."""
        http = self._http()
        started = time.monotonic()
        response = http.post(f"{self.api}/users/{user}/server", json={"profile": PROFILE},
                             timeout=60)
        if response.status_code not in (201, 202):
            raise RuntimeError(f"start {user}: {response.status_code} {response.text[:200]}")
        while time.monotonic() - started < READY_LIMIT:
            model = http.get(f"{self.api}/users/{user}", timeout=30).json()
            server = model.get("servers", {}).get("")
            if server is None:
                raise RuntimeError(f"{user}'s server failed to start (see the hub log)")
            if server.get("ready"):
                break
            time.sleep(0.5)
        while time.monotonic() - started < READY_LIMIT:
            answer = http.get(f"{self.hub.url}/user/{user}/api", timeout=30,
                              allow_redirects=False)
            if answer.status_code == 200:
                return time.monotonic() - started
            time.sleep(0.2)
        raise TimeoutError(f"{user}'s server did not answer through the proxy")

    def start_wave(self, users: list[str]) -> tuple[list[str], list[float]]:
        futures = {user: self.threads.submit(self.start_server, user) for user in users}
        ready, seconds = [], []
        for user, future in futures.items():
            try:
                seconds.append(future.result())
                ready.append(user)
            except Exception as exc:  # noqa: BLE001 - a failed start is counted, not fatal
                print(f"    not ready: {user}: {exc}", file=sys.stderr)
        return ready, seconds

    def record_activity(self, users: list[str]) -> None:
        """Tell the hub these users' servers are in use now, as a busy server does."""
        def post(user: str) -> None:
            now = utc_stamp()
            response = self._http().post(f"{self.api}/users/{user}/activity", timeout=30,
                                         json={"last_activity": now,
                                               "servers": {"": {"last_activity": now}}})
            response.raise_for_status()

        list(self.threads.map(post, users))

    def running(self) -> set[str]:
        """Bench users whose server the hub reports as running or stopping."""
        response = self._http().get(f"{self.api}/users", params={"state": "active"},
                                    timeout=60)
        response.raise_for_status()
        mine = set(self.users)
        return {u["name"] for u in response.json() if u["name"] in mine and u.get("servers")}

    # -- what a person waits for -------------------------------------------------------
    def measure(self, requests_each: int) -> Latencies:
        """Hub API and runs page, one request at a time, alternating."""
        result = Latencies()
        http = requests.Session()
        http.headers.update(self.headers)
        for index in range(requests_each):
            user = self.users[index % len(self.users)]
            result.hub_api.append(timed(lambda u=user: http.get(
                f"{self.api}/users/{u}", timeout=30, allow_redirects=False)))
            result.pages.append(timed(lambda: self.browser.get(
                self.hub.service("jobs/"), timeout=30, allow_redirects=False)))
        http.close()
        return result


def timed(call: Callable[[], requests.Response]) -> float:
    started = time.perf_counter()
    response = call()
    took = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.method} {response.url}: {response.status_code}")
    return took


class KeepAlive:
    """Records activity of the running servers every few seconds until stopped."""

    def __init__(self, bench: ScaleBench) -> None:
        self.bench = bench
        self.users: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(KEEP_ALIVE_SECONDS):
            try:
                self.bench.record_activity(list(self.users))
            except requests.RequestException as exc:
                print(f"    activity not recorded: {exc}", file=sys.stderr)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# -- memory ----------------------------------------------------------------------------
def container_memory(client: docker.DockerClient, prefix: str) -> list[float]:
    """Memory (MB) of each running notebook container of this bench, page cache excluded
    as ``docker stats`` computes it."""
    filters = {"label": ["dockyard.notebook=true", f"dockyard.prefix={prefix}"],
               "status": "running"}
    containers = client.containers.list(filters=filters)

    def used(container: Any) -> float:
        stats = container.stats(stream=False, one_shot=True)["memory_stats"]
        detail = stats.get("stats", {})
        cache = detail.get("inactive_file", detail.get("total_inactive_file", 0))
        return (stats["usage"] - cache) / MB

    with ThreadPoolExecutor(8) as threads:
        return list(threads.map(used, containers))


def culler_settings(hub: RunningHub) -> tuple[int, int]:
    """The idle culler's --timeout and --cull-every as the hub started it."""
    for process in hub.started:
        try:
            command = " ".join(process.cmdline())
        except Exception:  # noqa: BLE001, S112 - gone or not ours to read: look further
            continue
        if "jupyterhub_idle_culler" in command:
            timeout = re.search(r"--timeout=(\d+)", command)
            every = re.search(r"--cull-every=(\d+)", command)
            if timeout and every:
                return int(timeout.group(1)), int(every.group(1))
    raise RuntimeError("the idle culler is not running")


def remove_everything(client: docker.DockerClient, prefix: str) -> None:
    ours = {"label": f"dockyard.prefix={prefix}"}
    for container in client.containers.list(all=True, filters=ours):
        container.remove(force=True)
    for volume in client.volumes.list(filters=ours):
        volume.remove(force=True)
    for network in client.networks.list(filters=ours):
        network.remove()


# -- the run ---------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    target, wave_size = (10, 5) if args.quick else (args.users, args.wave)
    samples = 100 if args.quick else args.samples
    margin = int(args.min_available_gb * 1024**3)
    prefix = "dyscale" + secrets.token_hex(3)
    home = Path(tempfile.mkdtemp(prefix="dockyard-scale-"))
    results = Results("scale")
    client = docker.from_env(timeout=120)
    print(f"Users on one box: up to {target} servers on the '{PROFILE}' profile of "
          f"{args.image}, waves of {wave_size}; {os.cpu_count()} CPUs, "
          f"{mem_available_bytes() / 1024**3:.1f} GB available, stop below "
          f"{args.min_available_gb:g} GB; load average {os.getloadavg()[0]:.2f}")
    hub: RunningHub | None = None
    bench: ScaleBench | None = None
    try:
        hub = start_hub(home, DOCKYARD_SPAWNER="docker", DOCKYARD_NOTEBOOK_IMAGE=args.image,
                        DOCKYARD_DOCKER_NAME_PREFIX=prefix, DOCKYARD_LOG_LEVEL="WARNING",
                        DOCKYARD_IDLE_TIMEOUT=str(IDLE_TIMEOUT))
        cull_timeout, cull_every = culler_settings(hub)
        users = [f"scale{i:03d}" for i in range(target)]
        bench = ScaleBench(hub, users)
        bench.create_users()
        bench.measure(10)  # warm-up: the service login, first page renders, connections
        baseline = bench.measure(samples)
        print(baseline.line("no server running"))

        # -- start servers in waves ---------------------------------------------------
        keep_alive = KeepAlive(bench)
        available_before = mem_available_bytes()
        per_server = FIRST_GUESS_MB * MB
        ready: list[str] = []
        start_times: list[float] = []
        stopped_by = ""
        ramp_started = time.monotonic()
        for first in range(0, target, wave_size):
            wave = users[first:first + wave_size]
            available = mem_available_bytes()
            if available - len(wave) * per_server < margin:
                stopped_by = (f"memory: {available / 1024**3:.1f} GB available, a wave of "
                              f"{len(wave)} needs ~{len(wave) * per_server / 1024**3:.1f} GB "
                              f"above the {args.min_available_gb:g} GB margin")
                break
            wave_started = time.monotonic()
            wave_ready, seconds = bench.start_wave(wave)
            ready += wave_ready
            start_times += seconds
            keep_alive.users = list(ready)
            if ready:
                # What the servers so far cost the machine, never trusted below a floor:
                # other work on a shared machine may free memory meanwhile.
                drop = max(0, available_before - mem_available_bytes())
                per_server = max(drop / len(ready), MIN_GUESS_MB * MB)
            print(f"  wave {first // wave_size + 1}: {len(wave_ready)}/{len(wave)} ready in "
                  f"{time.monotonic() - wave_started:5.1f} s; {len(ready)} running, "
                  f"{mem_available_bytes() / 1024**3:.1f} GB available")
            if not wave_ready:
                stopped_by = "a whole wave failed to start"
                break
        ramp_seconds = time.monotonic() - ramp_started
        keep_alive.stop()

        # -- all idle: memory, then the same requests as the baseline ------------------
        bench.record_activity(ready)
        time.sleep(5)  # let the last servers finish their start-up work
        machine_mb = max(0, available_before - mem_available_bytes()) / MB / max(1, len(ready))
        container_mb = container_memory(client, prefix)
        bench.record_activity(ready)
        loaded = bench.measure(samples)
        still_running = len(bench.running())
        print(loaded.line(f"{len(ready)} servers running"))

        # -- leave them idle: the culler stops them --------------------------------------
        bench.record_activity(ready)
        idle_since = time.monotonic()
        bound = cull_timeout + cull_every
        left = bench.running()
        first_stop = all_stopped = None
        while left and time.monotonic() - idle_since < bound + 180:
            time.sleep(1)
            left = bench.running()
            if first_stop is None and len(left) < len(ready):
                first_stop = time.monotonic() - idle_since
        if not left:
            all_stopped = time.monotonic() - idle_since
        running_containers = len(client.containers.list(filters={
            "label": f"dockyard.prefix={prefix}", "status": "running"}))

        # -- report -----------------------------------------------------------------------
        print()
        print(f"servers ready:         {len(ready)}/{target} in {ramp_seconds:.0f} s"
              + (f" (stopped early: {stopped_by})" if stopped_by else "")
              + f"; {still_running} still running after the measurements")
        if start_times:
            print(f"start to ready:        p50 {percentile(start_times, 0.5):.1f} s, "
                  f"p95 {percentile(start_times, 0.95):.1f} s, max {max(start_times):.1f} s")
        if container_mb:
            print(f"memory per server:     container median "
                  f"{statistics.median(container_mb):.0f} MB (max {max(container_mb):.0f} MB), "
                  f"machine MemAvailable drop {machine_mb:.0f} MB per server")
        print(baseline.line("baseline (no server)"))
        print(loaded.line(f"with {len(ready)} idle servers"))
        cull_text = (f"{all_stopped:.0f} s" if all_stopped is not None
                     else f"not all within {bound + 180} s ({len(left)} left)")
        print(f"idle culler:           first stopped after {first_stop or 0:.0f} s, all after "
              f"{cull_text} (timeout {cull_timeout} s + interval {cull_every} s = {bound} s); "
              f"{running_containers} containers still running")

        results.add(f"idle notebook servers ready (of {target})", len(ready), unit="servers",
                    better="higher", goal_value=target,
                    note=f"'{PROFILE}' profile of {args.image}, waves of {wave_size}"
                    + (f"; stopped early: {stopped_by}" if stopped_by else "")
                    + ("" if args.quick or target == 100 else "; the issue's goal is 100"))
        if container_mb:
            results.add("memory per idle server (container)", statistics.median(container_mb),
                        unit="MB", note=f"median of {len(container_mb)}, max "
                        f"{max(container_mb):.0f} MB; Docker stats less page cache")
        results.add("memory per idle server (machine)", machine_mb, unit="MB",
                    note="drop of MemAvailable over the servers started, engine shims "
                    "included; the machine is shared, so this is noisy")
        if baseline.hub_api and loaded.hub_api:
            results.add(f"hub API p95 with {len(ready)} idle servers",
                        percentile(loaded.hub_api, 0.95) * 1e3, unit="ms",
                        baseline=percentile(baseline.hub_api, 0.95) * 1e3,
                        baseline_name="the same requests before any server started",
                        goal_value=100,
                        note=f"GET /hub/api/users/{{name}} with a hub token, {samples} requests")
        if baseline.pages and loaded.pages:
            results.add(f"Dockyard runs page p95 with {len(ready)} idle servers",
                        percentile(loaded.pages, 0.95) * 1e3, unit="ms",
                        baseline=percentile(baseline.pages, 0.95) * 1e3,
                        baseline_name="the same requests before any server started",
                        note=f"GET /services/dockyard/jobs/ logged in, {samples} requests")
        if all_stopped is not None:
            results.add(f"idle culler: all {len(ready)} stopped after", all_stopped, unit="s",
                        baseline=bound, baseline_name="configured timeout + culler interval",
                        note=f"from the servers' last activity to the hub reporting none "
                        f"running; timeout {cull_timeout} s, interval {cull_every} s")
        results.write()
        return 0
    finally:
        if bench is not None:
            bench.threads.shutdown(wait=False, cancel_futures=True)
        if hub is not None:
            if args.keep_log:
                shutil.copy(hub.log_path, args.keep_log)
            hub.stop()
        remove_everything(client, prefix)
        client.close()
        shutil.rmtree(home, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100, help="servers to start at most")
    parser.add_argument("--wave", type=int, default=10, help="servers started at once")
    parser.add_argument("--image", default="dockyard/notebook:latest")
    parser.add_argument("--samples", type=int, default=200,
                        help="requests of each kind for each p95")
    parser.add_argument("--min-available-gb", type=float, default=2.0,
                        help="start no wave that would leave less memory available")
    parser.add_argument("--keep-log", type=Path, help="copy dockyard up's log here at the end")
    parser.add_argument("--quick", action="store_true", help="10 servers in waves of 5")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
