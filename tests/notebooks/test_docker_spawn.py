"""Notebook servers as Docker containers, driven through a real hub's REST API."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from docker.errors import NotFound

from dockyard.models import ImageStatus
from tests.notebooks.conftest import TEST_IMAGE, NotebookHub

pytestmark = [pytest.mark.docker, pytest.mark.hub]

STORE_AND_LOAD = (
    "import pandas as pd, dockyard_data as d; "
    "d.store_dataframe(pd.DataFrame({'a': [1, 2]}), 'nbtest', 'numbers'); "
    "print('rows:', len(d.load_dataframe('nbtest', 'numbers')))"
)
WHOAMI = (
    "import json, os, urllib.request; "
    "req = urllib.request.Request(os.environ['DOCKYARD_URL'] + 'api/v1/user', "
    "headers={'Authorization': 'token ' + os.environ['JUPYTERHUB_API_TOKEN']}); "
    "print(json.load(urllib.request.urlopen(req, timeout=30))['name'])"
)


def test_each_user_gets_an_unprivileged_limited_container_with_own_home(
    notebook_hub: NotebookHub,
) -> None:
    notebook_hub.start("alice", {"profile": "large"})
    notebook_hub.start("bob")
    alice, bob = notebook_hub.container("alice"), notebook_hub.container("bob")
    prefix = notebook_hub.prefix

    for container, memory, cpus, pids, user in [(alice, 1024**3, 1.0, 512, "alice"),
                                                 (bob, 512 * 1024**2, 0.5, 256, "bob")]:
        config, host = container.attrs["Config"], container.attrs["HostConfig"]
        assert config["User"] == "1000:100"
        assert host["Memory"] == memory
        assert host["MemorySwap"] == memory  # no swap beyond the limit
        assert host["CpuQuota"] == int(cpus * host["CpuPeriod"])
        assert host["PidsLimit"] == pids
        assert host["SecurityOpt"] == ["no-new-privileges"]
        assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
        assert not host["Privileged"]
        assert not host["PortBindings"], "nothing is published on the host"
        mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
        assert set(mounts) == {"/home/jovyan", "/shared", "/dockyard/data"}, "no Docker socket"
        assert mounts["/home/jovyan"]["Name"] == f"{prefix}-home-{user}"
        assert mounts["/home/jovyan"]["RW"] is True
        assert mounts["/shared"]["Name"] == f"{prefix}-shared"
        assert mounts["/shared"]["RW"] is False
        assert mounts["/dockyard/data"]["Source"] == str(notebook_hub.hub.home / "data")

        assert notebook_hub.run_in(container, "id", "-u") == (0, "1000")
        code, status = notebook_hub.run_in(container, "grep", "-E", "CapEff|NoNewPrivs",
                                           "/proc/self/status")
        assert re.search(r"CapEff:\s+0+\b", status) and re.search(r"NoNewPrivs:\s+1", status)
        assert notebook_hub.run_in(container, "touch", "/home/jovyan/probe")[0] == 0
        assert notebook_hub.run_in(container, "touch", "/shared/probe")[0] != 0
        assert notebook_hub.run_in(container, "test", "-e", "/var/run/docker.sock")[0] != 0

        # The data client's settings: Dockyard is reachable at DOCKYARD_URL with the
        # notebook's own token, which the hub scoped to this user.
        env = dict(item.split("=", 1) for item in config["Env"])
        assert env["DOCKYARD_URL"].endswith(f":{notebook_hub.hub.env['DOCKYARD_WEB_PORT']}"
                                            "/services/dockyard/")
        assert env["DOCKYARD_PROFILE"] in ("small", "large")
        assert notebook_hub.run_in(container, "python3", "-c", WHOAMI) == (0, user)

    # The data client works with no setup: a batch written in alice's notebook lands in
    # the local data root (mounted) and is committed through Dockyard's API.
    code, output = notebook_hub.run_in(alice, "python3", "-c", STORE_AND_LOAD)
    assert (code, output.splitlines()[-1]) == (0, "rows: 2"), output
    assert list((notebook_hub.hub.home / "data" / "nbtest" / "numbers").iterdir())


# Put in carol's home by the test: while the gate file exists, her next server waits
# before it listens, so the spawn stays at "waiting for Jupyter to answer".
HOLD_JUPYTER = """\
import os, time
if os.path.exists("/home/jovyan/.hold-start"):
    open("/home/jovyan/.holding", "w").close()
    while os.path.exists("/home/jovyan/.hold-start"):
        time.sleep(0.05)
"""
WRITE_FILE = ("import pathlib, sys; path = pathlib.Path(sys.argv[1]); "
              "path.parent.mkdir(parents=True, exist_ok=True); path.write_text(sys.argv[2])")
WAITING = re.compile(r"Waiting for Jupyter to answer \(\d+ s\)")


def every_step(user: str, profile: str) -> list[str]:
    """What the progress stream of a start says, the periodic waiting notes left out."""
    return [
        "Server requested",
        f"Preparing {TEST_IMAGE} ({profile}) and storage",
        "Creating the container",
        "Container started; waiting for Jupyter to answer",
        "Jupyter answered",
        f"Server ready at /user/{user}/",
    ]


def test_home_survives_stop_and_start(notebook_hub: NotebookHub) -> None:
    notebook_hub.start("carol")
    first = notebook_hub.container("carol")
    assert notebook_hub.run_in(first, "sh", "-c", "echo kept > /home/jovyan/note.txt")[0] == 0
    config = "/home/jovyan/.jupyter/jupyter_server_config.py"
    assert notebook_hub.run_in(first, "python3", "-c", WRITE_FILE, config, HOLD_JUPYTER)[0] == 0
    assert notebook_hub.run_in(first, "touch", "/home/jovyan/.hold-start")[0] == 0
    notebook_hub.stop("carol")
    with pytest.raises(Exception, match="No such container|404"):
        notebook_hub.container("carol")  # the container went; the volume stays

    # Start again and open the progress stream late on purpose, as a person opening the
    # spawn page late does: the container is made and started (held by the file in the
    # kept home) before the stream opens; the stream still tells every step.
    with ThreadPoolExecutor(1) as background:
        spawned = background.submit(notebook_hub.spawn, "carol", {"profile": "large"})
        second = wait_until_held(notebook_hub, "carol")
        messages = []
        for event in progress_events(notebook_hub, "carol"):
            messages.append(event["message"])
            if len(messages) == 1:  # the stream is open: let the server answer
                notebook_hub.run_in(second, "rm", "/home/jovyan/.hold-start")
        assert spawned.result().status_code in (201, 202)
    notebook_hub.wait_ready("carol")
    assert [m for m in messages if not WAITING.fullmatch(m)] == every_step(
        "carol", "Large: 1 GB, 1 CPU")
    assert second.id != first.id
    assert notebook_hub.run_in(second, "cat", "/home/jovyan/note.txt") == (0, "kept")
    second.reload()
    assert second.attrs["HostConfig"]["Memory"] == 1024**3  # the new choice applies
    notebook_hub.stop("carol")


def test_progress_opened_before_the_start_tells_every_step(notebook_hub: NotebookHub) -> None:
    """A spawn page opened while the hub still prepares the start (options, hooks: the
    spawn already counts as pending) follows the start instead of jumping to its end."""
    gates = notebook_hub.hub.home / "spawn-gates"
    gates.mkdir(exist_ok=True)
    gate = gates / "rita"
    gate.touch()
    notebook_hub.user("rita")
    try:
        with ThreadPoolExecutor(1) as background:
            spawned = background.submit(notebook_hub.spawn, "rita")
            wait_for(lambda: (gates / "rita.held").exists(), "the spawn to reach the gate")
            messages = []
            for event in progress_events(notebook_hub, "rita"):
                messages.append(event["message"])
                if len(messages) == 1:  # the stream is open: let start() begin
                    gate.unlink()
            assert spawned.result().status_code in (201, 202)
    finally:
        gate.unlink(missing_ok=True)
    notebook_hub.wait_ready("rita")
    assert [m for m in messages if not WAITING.fullmatch(m)] == every_step(
        "rita", "Small: 512 MB, half a CPU")
    notebook_hub.stop("rita")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout:g} s for {what}"
        time.sleep(0.1)


def wait_until_held(notebook_hub: NotebookHub, user: str) -> Any:
    """``user``'s new container, once its server waits at the gate in its home."""
    found: list[Any] = []

    def held() -> bool:
        try:
            container = notebook_hub.container(user)
        except NotFound:
            return False
        if container.status != "running":
            return False
        if notebook_hub.run_in(container, "test", "-e", "/home/jovyan/.holding")[0] != 0:
            return False
        found.append(container)
        return True

    wait_for(held, f"{user}'s server to wait at the gate")
    return found[0]


def progress_events(notebook_hub: NotebookHub, user: str) -> Iterator[dict[str, Any]]:
    """The events of the progress stream of ``user``'s pending spawn as they arrive,
    until it is ready or failed."""
    response = notebook_hub.api("GET", f"/users/{user}/server/progress",
                                notebook_hub.user(user), stream=True)
    assert response.status_code == 200, response.text
    with response:
        for line in response.iter_lines(decode_unicode=True):
            if line and line.startswith("data:"):
                event = json.loads(line[5:])
                yield event
                if event.get("ready") or event.get("failed"):
                    return


def test_a_user_cannot_reach_another_users_server(notebook_hub: NotebookHub) -> None:
    notebook_hub.start("dave")
    erin_token = notebook_hub.user("erin")
    hub_url = notebook_hub.hub.url

    by_token = requests.get(f"{hub_url}/user/dave/api/contents",
                            headers={"Authorization": f"token {erin_token}"}, timeout=30)
    assert by_token.status_code == 403
    # In a browser, dave's server sends erin to the hub's OAuth, which refuses her.
    by_browser = notebook_hub.sessions["erin"].get(f"{hub_url}/user/dave/lab", timeout=30)
    assert by_browser.status_code == 403
    assert "/hub/api/oauth2/authorize" in by_browser.url
    # Nor may erin start or stop dave's server.
    assert notebook_hub.api("DELETE", "/users/dave/server", erin_token).status_code in (403, 404)
    # Dave himself gets in with his token.
    own = requests.get(f"{hub_url}/user/dave/api/contents",
                       headers={"Authorization": f"token {notebook_hub.user('dave')}"}, timeout=30)
    assert own.status_code == 200
    notebook_hub.stop("dave")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"image": "debian:bookworm-slim"}, "debian:bookworm-slim"),
        ({"profile": "huge"}, "profile: no profile named 'huge'"),
        ({"profile": "small", "privileged": True}, "privileged: unknown option"),
        ({"image": 7}, "image: must be a string"),
    ],
)
def test_forged_options_are_refused_with_400(
    notebook_hub: NotebookHub, options: dict, message: str
) -> None:
    response = notebook_hub.spawn("frank", options)
    assert response.status_code == 400, response.text
    assert message in response.json()["message"]
    assert notebook_hub.server_model("frank") is None
    assert not notebook_hub.engine.containers.list(
        all=True, filters={"name": f"{notebook_hub.prefix}-nb-frank"})


def test_forged_form_value_comes_back_on_the_form(notebook_hub: NotebookHub) -> None:
    notebook_hub.user("gina")
    session = notebook_hub.sessions["gina"]
    page = session.get(f"{notebook_hub.hub.url}/hub/spawn", timeout=30)
    assert page.status_code == 200 and 'name="image"' in page.text
    response = session.post(
        f"{notebook_hub.hub.url}/hub/spawn",
        data={"image": "evil/miner:latest", "profile": "small",
              "_xsrf": session.cookies.get("_xsrf", "")},
        timeout=30,
    )
    assert response.status_code == 400
    assert "evil/miner:latest" in response.text and "not offered" in response.text
    assert notebook_hub.server_model("gina") is None


def test_the_form_follows_the_catalog_and_retired_images_cannot_start(
    notebook_hub: NotebookHub,
) -> None:
    hub_url = notebook_hub.hub.url
    notebook_hub.user("hank")
    session = notebook_hub.sessions["hank"]
    try:
        # No catalog entry yet: the configured image is offered alone.
        page = session.get(f"{hub_url}/hub/spawn", timeout=30).text
        assert f'value="{TEST_IMAGE}" checked' in page

        # An admin's change shows on the next page load, without a hub restart.
        notebook_hub.add_image(TEST_IMAGE, description="Team image with the data client",
                               default_for_notebooks=True, profiles=["small"])
        notebook_hub.add_image("dockyard/test:second", description="A second choice")
        notebook_hub.add_image("dockyard/test:old", status=ImageStatus.RETIRED)
        page = session.get(f"{hub_url}/hub/spawn", timeout=30).text
        assert "Team image with the data client" in page and "A second choice" in page
        assert f'value="{TEST_IMAGE}" checked' in page
        assert "dockyard/test:old" not in page
        assert "Small: 512 MB, half a CPU" in page and "Large: 1 GB, 1 CPU" in page

        retired = notebook_hub.spawn("hank", {"image": "dockyard/test:old"})
        assert retired.status_code == 400 and "retired" in retired.json()["message"]
        narrowed = notebook_hub.spawn("hank", {"image": TEST_IMAGE, "profile": "large"})
        assert narrowed.status_code == 400
        assert "'large' is not offered with image" in narrowed.json()["message"]

        # A server running on an image keeps running when the image is retired...
        notebook_hub.start("hank", {"image": TEST_IMAGE})
        container = notebook_hub.container("hank")
        notebook_hub.set_image_status(TEST_IMAGE, ImageStatus.RETIRED)
        token = notebook_hub.user("hank")
        status = requests.get(f"{hub_url}/user/hank/api/status",
                              headers={"Authorization": f"token {token}"}, timeout=30)
        assert status.status_code == 200
        container.reload()
        assert container.status == "running"
        # ...but cannot be started again, by the API or by reusing the last options.
        notebook_hub.stop("hank")
        again = notebook_hub.api("POST", "/users/hank/server", token)  # no body: last options
        assert again.status_code == 400 and "retired" in again.json()["message"]
    finally:
        notebook_hub.clear_images()


def test_an_image_missing_from_the_engine_fails_with_a_reason(notebook_hub: NotebookHub) -> None:
    notebook_hub.add_image("dockyard/test:absent", default_for_notebooks=True)
    try:
        response = notebook_hub.spawn("paul")
        assert response.status_code == 400, response.text
        assert "is not on the Docker engine" in response.json()["message"]
    finally:
        notebook_hub.clear_images()


def test_a_server_that_exits_fails_at_once_with_its_log(notebook_hub: NotebookHub) -> None:
    """No waiting out the start timeout: a container that stops is reported with why."""
    notebook_hub.add_image("debian:bookworm-slim", description="not a notebook image")
    try:
        started = time.monotonic()
        response = notebook_hub.spawn("quinn", {"image": "debian:bookworm-slim"})
        assert response.status_code == 500, response.text
        message = response.json()["message"]
        assert "stopped before it answered" in message and "Last lines of its log" in message
        assert time.monotonic() - started < 60  # far below DOCKYARD_NOTEBOOK_START_TIMEOUT
        assert notebook_hub.server_model("quinn") is None
        assert not notebook_hub.engine.containers.list(
            all=True, filters={"name": f"{notebook_hub.prefix}-nb-quinn"})
    finally:
        notebook_hub.clear_images()


def test_named_servers_run_side_by_side_up_to_the_limit(notebook_hub: NotebookHub) -> None:
    notebook_hub.start("ivan")
    notebook_hub.start("ivan", server="scratch")
    default, named = notebook_hub.container("ivan"), notebook_hub.container("ivan", "scratch")
    assert default.id != named.id
    home = {m["Name"] for m in named.attrs["Mounts"] if m["Destination"] == "/home/jovyan"}
    assert home == {f"{notebook_hub.prefix}-home-ivan"}  # one home for a user's servers
    third = notebook_hub.spawn("ivan", server="spark")
    assert third.status_code == 400 and "maximum" in third.json()["message"]
    notebook_hub.stop("ivan", "scratch")
    notebook_hub.stop("ivan")


def test_hub_restart_keeps_running_servers(notebook_hub: NotebookHub) -> None:
    users = ["kate", "liam", "mona"]
    for user in users:
        notebook_hub.spawn(user)
    ids = {}
    for user in users:
        notebook_hub.wait_ready(user)
        ids[user] = notebook_hub.container(user).id

    notebook_hub.hub.restart()

    for user in users:
        assert notebook_hub.wait_ready(user, timeout=60)
        assert notebook_hub.container(user).id == ids[user], "adopted, not recreated"
        token = notebook_hub.user(user)
        answer = requests.get(f"{notebook_hub.hub.url}/user/{user}/api/status",
                              headers={"Authorization": f"token {token}"}, timeout=30)
        assert answer.status_code == 200, answer.text
    for user in users:
        notebook_hub.stop(user)


def test_idle_culler_with_dockyards_scopes_stops_idle_servers(notebook_hub: NotebookHub) -> None:
    """The culler's least-privilege scopes suffice to stop our servers. (The hub-managed
    culler uses DOCKYARD_IDLE_TIMEOUT, at least a minute; this one runs with 1 s.)"""
    notebook_hub.start("nina")
    scopes = ["list:users", "read:users:activity", "read:servers", "delete:servers"]
    made = notebook_hub.api("POST", f"/users/{notebook_hub.hub.admin}/tokens",
                            json={"scopes": scopes, "note": "culler test"})
    assert made.status_code == 201, made.text
    hub_api = _hub_api_url(notebook_hub)
    culler = subprocess.Popen(
        [sys.executable, "-m", "jupyterhub_idle_culler", "--timeout=1", "--cull-every=1",
         f"--url={hub_api}"],
        env={"JUPYTERHUB_API_TOKEN": made.json()["token"], "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while notebook_hub.server_model("nina") is not None:
            assert time.monotonic() < deadline, "the culler did not stop nina's idle server"
            assert culler.poll() is None, culler.stderr.read().decode() if culler.stderr else ""
            time.sleep(0.5)
    finally:
        culler.terminate()
        culler.wait(timeout=10)
    assert not notebook_hub.engine.containers.list(
        all=True, filters={"name": f"{notebook_hub.prefix}-nb-nina"})


def _hub_api_url(notebook_hub: NotebookHub) -> str:
    from dockyard.containers import container_gateway
    from dockyard.settings import Settings

    gateway = container_gateway(Settings(home=notebook_hub.hub.home))
    return f"http://{gateway}:{notebook_hub.hub.env['DOCKYARD_HUB_PORT']}/hub/api"
