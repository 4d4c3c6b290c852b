"""Start a real Dockyard (``dockyard up``: JupyterHub, proxy, web service, worker) for
tests, on free ports with its own home directory, and talk to it over HTTP."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import psutil
import requests

from dockyard.up.processes import kill, managed_processes
from tests.support.ports import free_ports


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def kill_all(processes: list[psutil.Process]) -> None:
    """SIGKILL each process still running (psutil checks it is the same process) and
    wait until they are gone (the suite is their subreaper, see tests/support/leftovers)."""
    kill(processes)
    psutil.wait_procs(processes, timeout=5)


ADMIN_PASSWORD = "dockyard-admin-pass-7"
_XSRF_INPUT = re.compile(r'name="_xsrf"[^>]*value="([^"]+)"')
_CSRF_META = re.compile(r'name="csrf-token" content="([^"]+)"')


@dataclass
class RunningHub:
    home: Path
    env: dict[str, str]
    url: str = ""
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(default_factory=Path)
    admin: str = "admin"
    admin_password: str = ADMIN_PASSWORD
    # What it started, as last seen: stopped too, should `dockyard up` itself have died.
    started: list[psutil.Process] = field(default_factory=list)

    # -- lifecycle -------------------------------------------------------------------
    def start(self, timeout: float = 120) -> None:
        self.log_path = self.home / "up.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process's life
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dockyard.cli", "up"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        problem: Exception = TimeoutError(f"Dockyard did not come up in {timeout}s")
        while time.monotonic() < deadline:
            self.started = descendants(self.process.pid) or self.started
            if self.process.poll() is not None:
                problem = RuntimeError(f"dockyard up exited {self.process.returncode}")
                break
            if self._answers("/hub/login") and self._answers("/services/dockyard/health"):
                self.started = descendants(self.process.pid)
                return
            time.sleep(0.3)
        # Nobody gets a hub to stop from a start that failed: stop what it began here.
        self.stop()
        raise type(problem)(f"{problem}:\n{self.log_tail()}")

    def stop(self, timeout: float = 10) -> None:
        """Ctrl-C, as a person would; then everything this Dockyard started is gone,
        local notebook servers included (which a real Ctrl-C leaves running)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.started = descendants(self.process.pid) or self.started
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        kill_all(self.started)
        self.started = []

    def restart(self) -> None:
        self.stop()
        self.start()

    def _answers(self, path: str) -> bool:
        try:
            return (
                requests.get(self.url + path, timeout=2, allow_redirects=False).status_code == 200
            )
        except requests.RequestException:
            return False

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- users -----------------------------------------------------------------------
    def login(self, username: str | None = None, password: str | None = None) -> requests.Session:
        """A browser-like session logged in through the real login form (XSRF included)."""
        username = username or self.admin
        password = password or self.admin_password
        session = requests.Session()
        response = self.post_login(session, username, password)
        if "/hub/login" in response.url:
            raise AssertionError(f"login as {username} failed: {response.status_code}")
        return session

    def post_login(
        self, session: requests.Session, username: str, password: str,
        next_url: str | None = "/hub/home",
    ) -> requests.Response:
        """Sign in through the form. Signing in starts the user's notebook server unless
        the login page was opened with a ?next= address, as here by default, so tests
        that only need a session start nothing; ``next_url=None`` signs in as a person
        who opened the site does."""
        login = self.url + "/hub/login"
        if next_url is not None:
            login += "?" + urlencode({"next": next_url})
        page = session.get(login, timeout=10)
        page.raise_for_status()
        match = _XSRF_INPUT.search(page.text)
        data = {"username": username, "password": password}
        if match:
            data["_xsrf"] = match.group(1)
        return session.post(login, data=data, timeout=30)

    def create_user(self, username: str, password: str = "user-pass-2024!") -> requests.Session:
        """Sign up through NativeAuthenticator's form, approve as admin, log in."""
        anon = requests.Session()
        anon.get(self.url + "/hub/signup", timeout=10)
        data = {
            "username": username,
            "signup_password": password,
            "signup_password_confirmation": password,
        }
        xsrf = anon.cookies.get("_xsrf")
        if xsrf:
            data["_xsrf"] = xsrf
        anon.post(self.url + "/hub/signup", data=data, timeout=30).raise_for_status()
        self.approve(username)
        return self.login(username, password)

    def approve(self, username: str) -> None:
        """Approve a sign-up as the admin, through the authorization page's form."""
        admin = self.login()
        admin.get(f"{self.url}/hub/authorize", timeout=30).raise_for_status()
        admin.post(
            f"{self.url}/hub/authorize/{username}",
            data={"_xsrf": admin.cookies.get("_xsrf", "")},
            timeout=30,
        ).raise_for_status()

    def hub_token(self, session: requests.Session, username: str) -> str:
        """A JupyterHub API token for ``username``, made through the hub's REST API."""
        response = session.post(
            f"{self.url}/hub/api/users/{username}/tokens",
            json={"note": "tests"},
            headers={"X-XSRFToken": session.cookies.get("_xsrf", "")},
            timeout=30,
        )
        response.raise_for_status()
        return response.json()["token"]

    def service(self, path: str = "") -> str:
        return f"{self.url}/services/dockyard/{path.lstrip('/')}"

    @staticmethod
    def csrf_token(page_html: str) -> str:
        match = _CSRF_META.search(page_html)
        assert match, "page has no csrf-token meta tag"
        return match.group(1)


def hub_environment(home: Path, **overrides: str) -> dict[str, str]:
    port, hub_port, web_port, proxy_api_port = free_ports(4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    env.update(
        DOCKYARD_HOME=str(home),
        DOCKYARD_PORT=str(port),
        DOCKYARD_HUB_PORT=str(hub_port),
        DOCKYARD_WEB_PORT=str(web_port),
        DOCKYARD_PROXY_API_PORT=str(proxy_api_port),
        DOCKYARD_ADMIN_PASSWORD=ADMIN_PASSWORD,
        DOCKYARD_SPAWNER="local",
        DOCKYARD_JOB_BACKEND="local",
        DOCKYARD_WORKER_POLL_SECONDS="0.2",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


def start_hub(home: Path, **overrides: str) -> RunningHub:
    home.mkdir(parents=True, exist_ok=True)
    env = hub_environment(home, **overrides)
    hub = RunningHub(home=home, env=env, url=f"http://127.0.0.1:{env['DOCKYARD_PORT']}")
    hub.start()
    return hub


@dataclass
class UpProcess:
    """``dockyard up`` with its console in a file (a pipe nobody reads would fill up and
    block it), for tests that read what it says and how it stops."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_line(self, text: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.process.poll() is not None:
                raise AssertionError(f"dockyard up exited {self.process.returncode}:\n"
                                     f"{self.output()}")
            time.sleep(0.2)
        raise TimeoutError(f"dockyard up never said {text!r}:\n{self.output()}")

    def interrupt(self, timeout: float = 30) -> float:
        """Ctrl-C; returns the seconds until `dockyard up` and everything it started
        (but notebook servers) had ended."""
        hubs = psutil.Process(self.process.pid).children()
        managed = [*hubs, *(p for hub in hubs for p in managed_processes(hub.pid))]
        started = time.monotonic()
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=timeout)
        _gone, alive = psutil.wait_procs(managed, timeout=timeout)
        took = time.monotonic() - started
        assert not alive, f"still running after Ctrl-C: {alive}"
        return took


@contextmanager
def running_up(env: dict[str, str], log_path: Path) -> Iterator[UpProcess]:
    """Start ``dockyard up``; afterwards it and everything it started are gone."""
    log = open(log_path, "ab")  # noqa: SIM115 - closed below, after the process ended
    process = subprocess.Popen([sys.executable, "-m", "dockyard.cli", "up"], env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    up = UpProcess(process, log_path)
    try:
        yield up
    finally:
        # Only while it runs: a reaped pid may already belong to another process.
        started = descendants(process.pid) if process.poll() is None else []
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        kill_all(started)
        log.close()
