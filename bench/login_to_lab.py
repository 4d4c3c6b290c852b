"""Login to JupyterLab in a browser: Dockyard against stock JupyterHub 6 + DockerSpawner 14.

Both sides serve the same notebook image (``dockyard/notebook:latest``, the one users
get) from containers on the same Docker network (the default bridge; the hub and proxy
reach a server at its container address, no published port), on this machine, in the
same run:

- **Dockyard**: a real ``dockyard up`` (JupyterHub, proxy, the web service, the worker)
  with Docker notebooks, and one user signed up and approved through the real forms.
  Dockyard's defaults apply: the server starts on sign-in with the user's last choice
  (or the default image and the first resource profile, with its memory and CPU limits),
  a home volume and the team's read-only shared volume.
- **Stock**: JupyterHub 6 and DockerSpawner 14 from PyPI, installed by this benchmark in
  a temporary virtualenv; the ``dummy`` authenticator with a password, DockerSpawner on
  the same image and network (``use_internal_ip``, containers removed on stop), a home
  volume per user, ``/lab`` as the default URL, and the same configurable-http-proxy
  Dockyard uses. Its configuration is written into a temporary directory.

Each run, on either side, is what a person does in a fresh browser (Chromium through
Playwright, a new browser context, so no cookies and no cache): open the site's root,
land on the login page, type the name and password, click *Sign in*, then click whatever
the pages put in the way (a hub home's *Start* button, a spawn form's submit) until the
JupyterLab shell is drawn: ``#jp-main-dock-panel`` visible and the splash screen gone.
The clock runs from the click on *Sign in* to that moment; the clicks are counted.

The user's server is stopped (through each hub's REST API) after every run, so every
run starts one. One untimed warm-up run per side comes first (it creates the user's
home volume); then the timed runs alternate sides (ABBA order). Reported: p50 and p95
per side, the clicks, and the ratio of p50s (goal: Dockyard ≤ 0.6× stock). Each run's
time is also split into phases, from the browser's HAR and the container's own
timestamps and log (see ``Phases``), to show where the seconds go.

    .venv/bin/python bench/login_to_lab.py [--runs 5] [--quick] [--image ...] [--har-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.report import Results, percentile  # noqa: E402
from dockyard.containers import container_gateway  # noqa: E402
from dockyard.settings import Settings  # noqa: E402
from hub.hubconfig import proxy_command  # noqa: E402
from tests.support.hubproc import RunningHub, descendants, kill_all, start_hub  # noqa: E402
from tests.support.ports import free_ports  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
USER = "newcomer"
PASSWORD = "user-pass-2024!"
LAB_SHELL = "#jp-main-dock-panel"
LAB_SPLASH = "#jupyterlab-splash"
# What hub pages may put between a person and JupyterLab, and which a person clicks.
IN_THE_WAY = ("#start", "#spawn_form [type=submit]")
RUN_LIMIT_MS = 240_000
STOCK_REQUIREMENTS = ["jupyterhub>=6,<7", "dockerspawner>=14,<15"]


def docker_time(stamp: str) -> float:
    """Seconds since the epoch of Docker's RFC 3339 nanosecond timestamps."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", stamp)
    if not match:
        raise ValueError(f"not a Docker timestamp: {stamp!r}")
    whole, fraction, zone = match.groups()
    zone = "+00:00" if zone == "Z" else zone
    return datetime.fromisoformat(whole + zone).timestamp() + float(f"0.{fraction or 0}")


# -- what one run saw -----------------------------------------------------------------
@dataclass
class Run:
    seconds: float
    clicks: int
    clicked_at: float  # wall clock of the click on Sign in
    har: Path
    container: dict[str, Any] = field(default_factory=dict)
    log: list[tuple[float, str]] = field(default_factory=list)


@dataclass
class Phases:
    """One run's seconds, split at what the browser and the engine saw (each from the
    previous point; a point that could not be found gives the next phase its share):

    hub: the sign-in, the hub's redirects and the spawn up to the container's creation;
    container: creation to the container's start (the engine);
    server: the container's start to Jupyter's "is running at" (the server's start-up);
    ready: that line to the browser leaving the progress page (readiness check, proxy
    route, the progress stream's last event);
    oauth: leaving the progress page to JupyterLab's HTML (proxy, OAuth round trips);
    lab: JupyterLab's HTML to the shell drawn (assets and first API calls)."""

    hub: float
    container: float
    server: float
    ready: float
    oauth: float
    lab: float
    lab_requests: int
    lab_bytes: int
    lab_compressed: int
    lab_api_calls: int

    NAMES = ("hub", "container", "server", "ready", "oauth", "lab")


def har_entries(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text())["log"]["entries"]


def entry_start(entry: dict[str, Any]) -> float:
    return datetime.fromisoformat(entry["startedDateTime"].replace("Z", "+00:00")).timestamp()


def phases_of(run: Run, user: str) -> Phases:
    entries = sorted(har_entries(run.har), key=entry_start)
    start = run.clicked_at
    end = start + run.seconds
    user_path = f"/user/{user}/"
    after_pending = [e for e in entries if user_path in e["request"]["url"]
                     and entry_start(e) >= start]
    leaves = entry_start(after_pending[0]) if after_pending else end
    lab_pages = [e for e in after_pending
                 if re.search(rf"{re.escape(user_path)}lab(/workspaces/[^/?]+)?/?(\?|$)",
                              e["request"]["url"])
                 and e["response"]["status"] == 200]
    lab_html = (entry_start(lab_pages[0]) + lab_pages[0]["time"] / 1000) if lab_pages else leaves
    created = docker_time(run.container["Created"]) if run.container else leaves
    started = docker_time(run.container["State"]["StartedAt"]) if run.container else created
    running = next((t for t, line in run.log if "is running at" in line), started)
    points = [start, created, started, running, leaves, lab_html, end]
    # Clocks of the engine and the browser agree (one machine), but keep the order.
    for index in range(1, len(points)):
        points[index] = min(max(points[index], points[index - 1]), end)
    spans = [later - earlier for earlier, later in zip(points, points[1:], strict=False)]
    lab_entries = [e for e in entries if entry_start(e) >= lab_html and e["response"]["status"]]
    return Phases(
        *spans,
        lab_requests=len(lab_entries),
        lab_bytes=sum(max(e["response"].get("bodySize", 0), 0) for e in lab_entries),
        lab_compressed=sum(1 for e in lab_entries if any(
            h["name"].lower() == "content-encoding" for h in e["response"]["headers"])),
        lab_api_calls=sum(1 for e in lab_entries if f"{user_path}api/" in e["request"]["url"]
                          or f"{user_path}lab/api/" in e["request"]["url"]),
    )


# -- the browser -------------------------------------------------------------------------
class Browser:
    """One Chromium; every run gets a fresh context (no cookies, no cache) with a HAR."""

    def __init__(self, har_dir: Path) -> None:
        from playwright.sync_api import sync_playwright

        self.har_dir = har_dir
        self._playwright = sync_playwright().start()
        try:
            self.browser = self._playwright.chromium.launch(executable_path=CHROMIUM,
                                                            args=CHROMIUM_ARGS)
        except BaseException:
            self._playwright.stop()
            raise
        self.count = 0

    def login_to_lab(self, site: str, user: str, password: str, label: str) -> Run:
        self.count += 1
        har = self.har_dir / f"{self.count:02d}-{label}.har"
        context = self.browser.new_context(record_har_path=str(har),
                                           record_har_content="omit")
        try:
            page = context.new_page()
            page.set_default_timeout(RUN_LIMIT_MS)
            page.goto(site + "/")
            page.wait_for_selector("#login_submit")
            page.fill("#username_input", user)
            page.fill("#password_input", password)
            clicked_at = time.time()
            started = time.perf_counter()
            page.click("#login_submit")
            clicks = 1 + self._click_until_lab(page)
            page.wait_for_selector(LAB_SPLASH, state="detached")
            seconds = time.perf_counter() - started
        finally:
            context.close()  # writes the HAR
        return Run(seconds, clicks, clicked_at, har)

    @staticmethod
    def _click_until_lab(page: Any) -> int:
        clicks = 0
        wanted = ", ".join((LAB_SHELL, *IN_THE_WAY))
        deadline = time.monotonic() + RUN_LIMIT_MS / 1000
        while time.monotonic() < deadline:
            page.wait_for_selector(wanted, state="visible")
            if page.locator(LAB_SHELL).is_visible():
                return clicks
            for selector in IN_THE_WAY:
                target = page.locator(selector).first
                try:
                    if target.is_visible():
                        target.click(timeout=5_000)
                        clicks += 1
                        page.wait_for_load_state()
                        break
                except Exception:  # noqa: BLE001 - the page moved on under the click: look again
                    break
        raise TimeoutError("JupyterLab's shell was not drawn")

    def close(self) -> None:
        try:
            self.browser.close()
        finally:
            self._playwright.stop()


# -- the two sides ---------------------------------------------------------------------
class Side:
    name: str
    site: str
    container_name: str

    def stop_server(self) -> None:
        raise NotImplementedError

    def container_facts(self, engine: docker.DockerClient, run: Run) -> None:
        """The container's timestamps and log, read before the server is stopped."""
        try:
            container = engine.containers.get(self.container_name)
        except docker.errors.NotFound:
            return
        run.container = container.attrs
        for raw in container.logs(timestamps=True).decode(errors="replace").splitlines():
            stamp, _, line = raw.partition(" ")
            try:
                run.log.append((docker_time(stamp), line))
            except ValueError:
                continue


def stop_through_api(api: str, token: str, user: str) -> None:
    headers = {"Authorization": f"token {token}"}
    response = requests.delete(f"{api}/users/{user}/server", headers=headers, timeout=120)
    if response.status_code not in (202, 204, 400):
        raise RuntimeError(f"stopping {user}'s server: {response.status_code} {response.text}")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        model = requests.get(f"{api}/users/{user}", headers=headers, timeout=30).json()
        if not model.get("servers"):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{user}'s server did not stop")


class DockyardSide(Side):
    name = "Dockyard"

    def __init__(self, home: Path, image: str, tag: str) -> None:
        self.home = home
        self.image = image
        self.tag = tag
        self.container_name = f"{tag}-nb-{USER}"
        self.hub: RunningHub | None = None
        self.site = ""
        self.token = ""

    def start(self) -> None:
        # start_hub stops what it began if the start fails; close() handles the rest.
        self.hub = start_hub(
            self.home, DOCKYARD_SPAWNER="docker", DOCKYARD_NOTEBOOK_IMAGE=self.image,
            DOCKYARD_DOCKER_NAME_PREFIX=self.tag, DOCKYARD_JOB_BACKEND="local",
            DOCKYARD_LOG_LEVEL="WARNING")
        self.site = self.hub.url
        self.hub.create_user(USER, PASSWORD)
        self.token = self.hub.hub_token(self.hub.login(), self.hub.admin)

    def stop_server(self) -> None:
        stop_through_api(f"{self.site}/hub/api", self.token, USER)

    def close(self, engine: docker.DockerClient) -> None:
        if self.hub is not None:
            self.hub.stop()
        ours = {"label": f"dockyard.prefix={self.tag}"}
        for container in engine.containers.list(all=True, filters=ours):
            container.remove(force=True)
        for volume in engine.volumes.list(filters=ours):
            volume.remove(force=True)


STOCK_CONFIG = """\
# Stock JupyterHub 6 + DockerSpawner 14, as the login benchmark runs it.
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = {gateway!r}
c.JupyterHub.hub_port = {hub_port}
c.JupyterHub.db_url = "sqlite:///{dir}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{dir}/jupyterhub_cookie_secret"
c.JupyterHub.pid_file = "{dir}/jupyterhub.pid"
c.JupyterHub.log_level = "WARN"
c.ConfigurableHTTPProxy.command = {proxy!r}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.pid_file = "{dir}/jupyterhub-proxy.pid"

c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = {password!r}
c.Authenticator.allow_all = True

c.JupyterHub.spawner_class = "docker"
c.DockerSpawner.image = {image!r}
c.DockerSpawner.prefix = {prefix!r}
c.DockerSpawner.network_name = {network!r}
c.DockerSpawner.use_internal_ip = True
c.DockerSpawner.remove = True
c.DockerSpawner.volumes = {{{volume!r}: "/home/jovyan"}}
c.Spawner.default_url = "/lab"

# The benchmark stops servers between runs through the REST API.
c.JupyterHub.services = [{{"name": "bench", "api_token": {token!r}}}]
c.JupyterHub.load_roles = [{{"name": "bench", "services": ["bench"],
                             "scopes": ["admin:users", "admin:servers"]}}]
"""


def stock_venv(path: Path) -> Path:
    """A virtualenv with stock JupyterHub 6 and DockerSpawner 14 from PyPI."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    # pip's output (its warnings about this machine's index settings included) only
    # matters when the install fails.
    install = subprocess.run([str(path / "bin" / "pip"), "install", "--quiet",
                              "--disable-pip-version-check", *STOCK_REQUIREMENTS],
                             capture_output=True, text=True)
    if install.returncode:
        raise RuntimeError(f"installing stock JupyterHub failed:\n{install.stdout}"
                           f"{install.stderr}")
    return path


class StockSide(Side):
    name = "stock"

    def __init__(self, work: Path, venv: Path, image: str, tag: str, gateway: str,
                 network: str) -> None:
        self.work = work
        self.venv = venv
        port, hub_port, proxy_api_port = free_ports(3)
        self.token = secrets.token_hex(32)
        prefix = f"{tag}-stock"
        self.container_name = f"{prefix}-{USER}"
        self.volume_prefix = f"{prefix}-home-"
        config = work / "jupyterhub_config.py"
        config.write_text(STOCK_CONFIG.format(
            port=port, hub_port=hub_port, proxy_api_port=proxy_api_port, gateway=gateway,
            dir=work, proxy=proxy_command(REPO), password=PASSWORD, image=image,
            prefix=prefix, network=network, volume=self.volume_prefix + "{username}",
            token=self.token))
        self.config = config
        self.site = f"http://127.0.0.1:{port}"
        self.log_path = work / "jupyterhub.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.started: list[Any] = []

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKYARD_", "JUPYTER"))}
        env["PATH"] = f"{self.venv / 'bin'}:{env.get('PATH', '')}"
        with self.log_path.open("ab") as log:
            process = self.process = subprocess.Popen(
                [str(self.venv / "bin" / "jupyterhub"), "-f", str(self.config)], cwd=self.work,
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            self.started = descendants(process.pid) or self.started
            if process.poll() is not None:
                raise RuntimeError(f"stock jupyterhub exited:\n{self.log_tail()}")
            try:
                if requests.get(self.site + "/hub/login", timeout=2).status_code == 200:
                    self.started = descendants(process.pid)
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"stock jupyterhub did not come up:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop_server(self) -> None:
        stop_through_api(f"{self.site}/hub/api", self.token, USER)

    def close(self, engine: docker.DockerClient) -> None:
        if self.process is not None and self.process.poll() is None:
            self.started = descendants(self.process.pid) or self.started
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        kill_all(self.started)
        for container in engine.containers.list(all=True,
                                                filters={"name": self.container_name}):
            container.remove(force=True)
        for volume in engine.volumes.list(filters={"name": self.volume_prefix}):
            volume.remove(force=True)


# -- the report --------------------------------------------------------------------------
def row(label: str, runs: list[Run]) -> str:
    times = [r.seconds for r in runs]
    clicks = sorted({r.clicks for r in runs})
    p50, p95 = percentile(times, 0.5), percentile(times, 0.95)
    return (f"{label:<12} p50 {p50:6.2f} s   p95 {p95:6.2f} s"
            f"   min {min(times):6.2f} s   max {max(times):6.2f} s   clicks "
            f"{', '.join(map(str, clicks))}   ({len(times)} runs)")


def breakdown_rows(label: str, phases: list[Phases]) -> list[str]:
    median = {name: percentile([getattr(p, name) for p in phases], 0.5) for name in Phases.NAMES}
    spans = "  ".join(f"{name} {median[name]:5.2f}" for name in Phases.NAMES)
    first = phases[0]
    return [f"{label:<12} p50 s: {spans}",
            f"{'':<12} JupyterLab: {first.lab_requests} requests, "
            f"{first.lab_bytes / 1e6:.1f} MB, {first.lab_compressed} compressed, "
            f"{first.lab_api_calls} API calls (first run)"]


def main(args: argparse.Namespace) -> int:
    runs = 2 if args.quick else args.runs
    if not args.quick and runs < 5:
        raise SystemExit("--runs: at least 5 (or --quick)")
    tag = "dybench" + secrets.token_hex(3)
    work = Path(tempfile.mkdtemp(prefix="dockyard-login-bench-"))
    har_dir = Path(args.har_dir) if args.har_dir else work / "har"
    har_dir.mkdir(parents=True, exist_ok=True)
    print(f"Login to JupyterLab: image {args.image}, {runs} timed runs per side, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    engine = docker.from_env(timeout=120)
    closers: list[Callable[[], None]] = []
    try:
        engine.images.get(args.image)  # fails early, before anything starts
        venv = Path(args.stock_venv) if args.stock_venv else stock_venv(work / "stock-venv")
        settings = Settings(home=work / "dockyard")
        gateway = container_gateway(settings)
        dockyard = DockyardSide(work / "dockyard", args.image, tag)
        closers.append(lambda: dockyard.close(engine))
        dockyard.start()
        stock_dir = work / "stock"
        stock_dir.mkdir()
        stock = StockSide(stock_dir, venv, args.image, tag, gateway, settings.docker_network)
        closers.append(lambda: stock.close(engine))
        stock.start()
        browser = Browser(har_dir)
        closers.append(browser.close)

        measured: dict[str, list[Run]] = {dockyard.name: [], stock.name: []}
        for index in range(runs + 1):
            order = (dockyard, stock) if index % 2 == 0 else (stock, dockyard)
            for side in order:
                run = browser.login_to_lab(side.site, USER, PASSWORD, side.name)
                side.container_facts(engine, run)
                side.stop_server()
                if index:  # the first round warms up both sides and is not counted
                    measured[side.name].append(run)
                print(f"  {'warm-up' if not index else f'run {index}'} {side.name:<9}"
                      f"{run.seconds:6.2f} s, {run.clicks} click(s)", flush=True)

        ours, theirs = measured[dockyard.name], measured[stock.name]
        print()
        print(row("Dockyard", ours))
        print(row("stock", theirs))
        ratio = percentile([r.seconds for r in ours], 0.5) / percentile(
            [r.seconds for r in theirs], 0.5)
        print(f"Dockyard / stock = {ratio:.2f} (p50)   goal <= 0.6  "
              f"{'met' if ratio <= 0.6 else 'NOT met'}")
        print()
        print("Where the seconds go (see Phases in this file):")
        for label, side_runs in (("Dockyard", ours), ("stock", theirs)):
            for line in breakdown_rows(label, [phases_of(r, USER) for r in side_runs]):
                print(line)
        print(f"load average {os.getloadavg()[0]:.2f} at the end")

        results = Results("login_to_lab")
        baseline = "stock JupyterHub 6 + DockerSpawner 14"
        clicks = f"clicks: Dockyard {max(r.clicks for r in ours)}, stock " \
                 f"{max(r.clicks for r in theirs)}"
        for name, fraction, goal in (("p50", 0.5, 0.6), ("p95", 0.95, None)):
            results.add(f"sign-in to JupyterLab shell {name}",
                        percentile([r.seconds for r in ours], fraction), unit="s",
                        baseline=percentile([r.seconds for r in theirs], fraction),
                        baseline_name=baseline, goal_ratio=goal,
                        note=f"{args.image}; {clicks}")
        results.add("clicks from login page to JupyterLab", max(r.clicks for r in ours),
                    unit="clicks", baseline=max(r.clicks for r in theirs),
                    baseline_name=baseline)
        results.write()
        return 0
    finally:
        for close in reversed(closers):
            try:
                close()
            except Exception as exc:  # noqa: BLE001 - clean up the rest whatever failed
                print(f"cleanup: {exc!r}", file=sys.stderr)
        engine.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default="dockyard/notebook:latest")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per side (at least 5)")
    parser.add_argument("--quick", action="store_true", help="2 timed runs per side")
    parser.add_argument("--har-dir", help="keep each run's HAR here (default: deleted)")
    parser.add_argument("--stock-venv",
                        help="an existing virtualenv with stock JupyterHub and DockerSpawner "
                        "(default: made and removed by the benchmark)")
    sys.exit(main(parser.parse_args()))
