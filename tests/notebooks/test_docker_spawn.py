"""Notebook servers as Docker containers, driven through a real hub's REST API."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from hub.models import ImageStatus
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


def test_home_survives_stop_and_start(notebook_hub: NotebookHub) -> None:
    notebook_hub.start("carol")
    first = notebook_hub.container("carol")
    assert notebook_hub.run_in(first, "sh", "-c", "echo kept > /home/jovyan/note.txt")[0] == 0
    notebook_hub.stop("carol")
    with pytest.raises(Exception, match="No such container|404"):
        notebook_hub.container("carol")  # the container went; the volume stays

    # Start again, watching the progress stream the spawn page shows.
    with ThreadPoolExecutor(1) as background:
        spawned = background.submit(notebook_hub.spawn, "carol", {"profile": "large"})
        messages = progress_messages(notebook_hub, "carol")
        assert spawned.result().status_code in (201, 202)
    notebook_hub.wait_ready("carol")
    assert "Creating the container" in messages
    assert "Container started; waiting for Jupyter to answer" in messages
    assert messages[-1].startswith("Server ready")
    second = notebook_hub.container("carol")
    assert second.id != first.id
    assert notebook_hub.run_in(second, "cat", "/home/jovyan/note.txt") == (0, "kept")
    assert second.attrs["HostConfig"]["Memory"] == 1024**3  # the new choice applies
    notebook_hub.stop("carol")


def progress_messages(notebook_hub: NotebookHub, user: str) -> list[str]:
    """Messages of the progress event stream of ``user``'s spawn, until it is ready."""
    deadline = time.monotonic() + 10
    while notebook_hub.server_model(user) is None:  # the spawn request has not landed yet
        assert time.monotonic() < deadline
        time.sleep(0.05)
    response = notebook_hub.api("GET", f"/users/{user}/server/progress",
                                notebook_hub.user(user), stream=True)
    messages = []
    for line in response.iter_lines(decode_unicode=True):
        if line and line.startswith("data:"):
            event = json.loads(line[5:])
            messages.append(event.get("message", ""))
            if event.get("ready") or event.get("failed"):
                break
    return messages


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
    from hub.settings import Settings
    from spawner.environment import container_gateway

    gateway = container_gateway(Settings(home=notebook_hub.hub.home))
    return f"http://{gateway}:{notebook_hub.hub.env['DOCKYARD_HUB_PORT']}/hub/api"
