"""`dockyard up` as a platform engineer meets it: Ctrl-C stops everything at once, two
installations live side by side on one machine and one Docker engine, and a port that is
taken is one line naming it."""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import docker
import pytest
import requests

from dockyard.installation import INSTALLATION_FILE, LEGACY_VALUES, ensure_installation
from dockyard.settings import Settings
from tests.notebooks.conftest import TEST_IMAGE, remove_engine_objects
from tests.support.hubproc import ADMIN_PASSWORD, RunningHub, hub_environment, running_up
from tests.support.proxy import PausableProxy
from tests.support.requirements import require_docker, require_image

# What the issue promised a person pressing Ctrl-C, everything included.
STOP_LIMIT_SECONDS = 3.0
INTERNAL_PORTS = ("DOCKYARD_HUB_PORT", "DOCKYARD_WEB_PORT", "DOCKYARD_PROXY_API_PORT")


def installation_environment(home: Path, **overrides: str) -> dict[str, str]:
    """Like a newcomer's `make up`: only the public port and the home are given."""
    env = hub_environment(home, **overrides)
    for name in INTERNAL_PORTS:
        env.pop(name)
    return env


def answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:
        return False


def wait_until_serving(env: dict[str, str], timeout: float = 120) -> str:
    url = f"http://127.0.0.1:{env['DOCKYARD_PORT']}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answers(url + "/hub/login") and answers(url + "/services/dockyard/health"):
            return url
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not serve within {timeout} s")


def wait_for_running_server(engine: docker.DockerClient, prefix: str,
                            timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not engine.containers.list(filters={"label": f"dockyard.prefix={prefix}",
                                              "status": "running"}):
        assert time.monotonic() < deadline, f"no notebook server with prefix {prefix}"
        time.sleep(0.5)


@pytest.mark.hub
def test_ctrl_c_stops_everything_at_once_without_docker(tmp_path: Path) -> None:
    env = hub_environment(tmp_path, DOCKER_HOST=f"unix://{tmp_path}/no-docker.sock")
    with running_up(env, tmp_path / "up.log") as up:
        wait_until_serving(env)
        took = up.interrupt()
    assert took <= STOP_LIMIT_SECONDS, f"Ctrl-C took {took:.2f} s:\n{up.output()[-2000:]}"
    assert up.process.returncode == 0


@pytest.mark.hub
@pytest.mark.docker
def test_ctrl_c_stops_everything_at_once_with_docker(tmp_path: Path) -> None:
    require_docker()
    require_image(TEST_IMAGE)
    prefix = "dyia" + secrets.token_hex(3)
    env = hub_environment(tmp_path, DOCKYARD_SPAWNER="docker", DOCKYARD_JOB_BACKEND="docker",
                          DOCKYARD_NOTEBOOK_IMAGE=TEST_IMAGE, DOCKYARD_DOCKER_NAME_PREFIX=prefix)
    engine = docker.from_env(timeout=60)
    try:
        with running_up(env, tmp_path / "up.log") as up:
            url = wait_until_serving(env)
            hub = RunningHub(home=tmp_path, env=env, url=url)
            token = hub.hub_token(hub.login(), "admin")
            # A running notebook server: Ctrl-C leaves it running, as documented.
            headers = {"Authorization": f"token {token}"}
            requests.post(f"{url}/hub/api/users/admin/server", headers=headers,
                          timeout=60).raise_for_status()
            wait_for_running_server(engine, prefix)
            took = up.interrupt()
            assert took <= STOP_LIMIT_SECONDS, f"Ctrl-C took {took:.2f} s"
            running = engine.containers.list(filters={"label": f"dockyard.prefix={prefix}"})
            assert [c.labels["dockyard.user"] for c in running] == ["admin"]
    finally:
        remove_engine_objects(engine, prefix)
        engine.close()


def start_installations(stack: ExitStack, tmp_path: Path, *, test_prefixes: bool = False,
                        **overrides: str) -> list[dict[str, str]]:
    """Two newcomers' Dockyards on this machine at once, each with its own home, stopped
    with ``stack``. With ``test_prefixes`` each keeps the ports it chooses but gets a
    test-shaped name prefix, which .ci/run recognises should an interrupted run leave
    containers behind."""
    started = []
    for name in ("first", "second"):
        home = tmp_path / name
        home.mkdir()
        if test_prefixes:
            chosen = ensure_installation(home)
            chosen["docker_name_prefix"] = "dyia" + secrets.token_hex(3)
            (home / INSTALLATION_FILE).write_text(json.dumps(chosen))
        env = installation_environment(home, **overrides)
        stack.enter_context(running_up(env, home / "up.log"))
        started.append(env)
    return started


def installation_values(env: dict[str, str]) -> dict[str, object]:
    return json.loads((Path(env["DOCKYARD_HOME"]) / INSTALLATION_FILE).read_text())


@pytest.mark.hub
def test_two_installations_serve_side_by_side(tmp_path: Path) -> None:
    with ExitStack() as stack:
        installations = start_installations(stack, tmp_path)
        urls = [wait_until_serving(env) for env in installations]
        first, second = kept = [installation_values(env) for env in installations]
        assert first["docker_name_prefix"] != second["docker_name_prefix"]
        ports = [values[field] for values in kept
                 for field in ("hub_port", "web_port", "proxy_api_port")]
        assert len(set(ports)) == len(ports), kept
        for env, url in zip(installations, urls, strict=True):
            hub = RunningHub(home=Path(env["DOCKYARD_HOME"]), env=env, url=url)
            assert hub.login("admin", ADMIN_PASSWORD).get(url + "/hub/home", timeout=30).ok


@pytest.mark.hub
@pytest.mark.docker
def test_two_installations_keep_their_users_apart_on_one_engine(tmp_path: Path) -> None:
    """The same user name in two installations gets two containers and two homes."""
    require_docker()
    require_image(TEST_IMAGE)
    engine = docker.from_env(timeout=60)
    prefixes: list[str] = []
    try:
        with ExitStack() as stack:
            installations = start_installations(stack, tmp_path, test_prefixes=True,
                                                DOCKYARD_SPAWNER="docker",
                                                DOCKYARD_NOTEBOOK_IMAGE=TEST_IMAGE)
            prefixes = [str(installation_values(env)["docker_name_prefix"])
                        for env in installations]
            for env in installations:
                url = wait_until_serving(env)
                hub = RunningHub(home=Path(env["DOCKYARD_HOME"]), env=env, url=url)
                token = hub.hub_token(hub.login(), "admin")
                requests.post(f"{url}/hub/api/users/admin/server", timeout=60,
                              headers={"Authorization": f"token {token}"}).raise_for_status()
            for prefix in prefixes:
                wait_for_running_server(engine, prefix)
            containers = {prefix: engine.containers.list(
                filters={"label": f"dockyard.prefix={prefix}"}) for prefix in prefixes}
            names = {c.name for found in containers.values() for c in found}
            assert len(names) == 2, names
            homes = {prefix: {m["Name"] for c in found for m in c.attrs["Mounts"]
                              if m.get("Type") == "volume" and "home" in m.get("Name", "")}
                     for prefix, found in containers.items()}
            first, second = (homes[p] for p in prefixes)
            assert first and second and not first & second, homes
    finally:
        for prefix in prefixes:
            remove_engine_objects(engine, prefix)
        engine.close()


def test_a_home_from_before_keeps_its_ports_and_names(tmp_path: Path) -> None:
    (tmp_path / "dockyard.sqlite").touch()  # an installation that has run before
    assert ensure_installation(tmp_path) == LEGACY_VALUES
    assert Settings(home=tmp_path).docker_name_prefix == "dockyard"


def test_a_new_home_gets_its_own_values_and_keeps_them(tmp_path: Path) -> None:
    chosen = ensure_installation(tmp_path)
    assert chosen["docker_name_prefix"].startswith("dy")
    assert chosen["docker_name_prefix"] != LEGACY_VALUES["docker_name_prefix"]
    assert ensure_installation(tmp_path) == chosen  # the same at every start
    settings = Settings(home=tmp_path)
    assert (settings.hub_port, settings.web_port) == (chosen["hub_port"], chosen["web_port"])
    # An explicit setting wins over the kept value.
    assert Settings(home=tmp_path, web_port=12345).web_port == 12345


@pytest.mark.parametrize("setting", INTERNAL_PORTS)
def test_up_refuses_an_internal_port_in_use_in_one_line(tmp_path: Path, setting: str) -> None:
    env = hub_environment(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", int(env[setting])))
        busy.listen()
        result = subprocess.run([sys.executable, "-m", "dockyard.cli", "up"], env=env,
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dockyard: {setting}:"), result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.hub
@pytest.mark.docker
def test_an_engine_that_stops_during_start_up_is_one_line(tmp_path: Path) -> None:
    require_docker()
    require_image(TEST_IMAGE)
    # An engine that stops answering while Dockyard starts.
    engine = PausableProxy("/var/run/docker.sock", listen_path=tmp_path / "engine.sock")
    engine.start()
    env = hub_environment(tmp_path, DOCKER_HOST=f"unix://{engine.listen_path}",
                          DOCKYARD_SPAWNER="docker", DOCKYARD_NOTEBOOK_IMAGE=TEST_IMAGE)
    try:
        with running_up(env, tmp_path / "up.log") as up:
            # Said just before the hub starts; the hub asks the engine only after its
            # imports, a second or more later.
            up.wait_for_line("Press Ctrl-C")
            engine.cut()
            up.process.wait(timeout=60)
    finally:
        engine.cut()
    output = up.output()
    assert up.process.returncode == 2, output
    assert "Traceback" not in output
    assert output.rstrip().splitlines()[-1].startswith(
        "dockyard: DOCKYARD_SPAWNER: the Docker engine stopped answering during start-up"
    ), output
    assert (tmp_path / "dockyard.sqlite").exists()  # nothing in the home is lost


@pytest.mark.docker
def test_a_missing_docker_network_is_one_line(tmp_path: Path) -> None:
    require_docker()
    require_image(TEST_IMAGE)
    env = hub_environment(tmp_path, DOCKYARD_SPAWNER="docker", DOCKYARD_NOTEBOOK_IMAGE=TEST_IMAGE,
                          DOCKYARD_DOCKER_NETWORK="dockyard-no-such-network")
    result = subprocess.run([sys.executable, "-m", "dockyard.cli", "up"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dockyard: DOCKYARD_DOCKER_NETWORK: the Docker engine has no "
                               "network 'dockyard-no-such-network'")


@pytest.mark.hub
def test_a_local_job_outlives_ctrl_c_and_finishes(tmp_path: Path) -> None:
    """Local-process jobs run in sessions of their own so that they outlive a worker
    restart, as job containers do; Ctrl-C of `dockyard up` must not take them down."""
    env = hub_environment(tmp_path, DOCKER_HOST=f"unix://{tmp_path}/no-docker.sock")
    marker = tmp_path / "job-finished"
    command = ["python", "-c", f"import time, pathlib; time.sleep(4); "
               f"pathlib.Path({str(marker)!r}).write_text('done')"]
    with running_up(env, tmp_path / "up.log") as up:
        url = wait_until_serving(env)
        hub = RunningHub(home=tmp_path, env=env, url=url)
        headers = {"Authorization": f"token {hub.hub_token(hub.login(), 'admin')}"}
        api = f"{url}/services/dockyard/api/v1"
        run = requests.post(f"{api}/runs", json={"command": command}, headers=headers,
                            timeout=30)
        assert run.status_code == 201, run.text
        run_url = f"{api}/runs/{run.json()['id']}"
        deadline = time.monotonic() + 60
        while requests.get(run_url, headers=headers, timeout=10).json()["status"] != "RUNNING":
            assert time.monotonic() < deadline, up.output()[-2000:]
            time.sleep(0.3)
        up.interrupt()
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert time.monotonic() < deadline, "the job died with dockyard up"
        time.sleep(0.3)
    # Started again, Dockyard finds the run ended and records it.
    with running_up(env, tmp_path / "up-again.log"):
        url = wait_until_serving(env)
        hub = RunningHub(home=tmp_path, env=env, url=url)
        headers = {"Authorization": f"token {hub.hub_token(hub.login(), 'admin')}"}
        deadline = time.monotonic() + 60
        while (status := requests.get(run_url, headers=headers, timeout=10).json()["status"]
               ) not in ("SUCCEEDED", "FAILED"):
            assert time.monotonic() < deadline, status
            time.sleep(0.3)
        assert status == "SUCCEEDED"
