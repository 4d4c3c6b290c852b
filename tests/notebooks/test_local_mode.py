"""Without Docker, notebooks are local processes: same environment, labelled as
development mode in the UI."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from tests.support.hubproc import RunningHub

pytestmark = pytest.mark.hub

WELCOME = Path(__file__).resolve().parents[2] / "images" / "notebook" / "welcome" / "Welcome.ipynb"


def test_local_notebooks_are_labelled_and_wired_like_containers(running_hub: RunningHub) -> None:
    session = running_hub.create_user("nblocal")
    home = session.get(f"{running_hub.url}/hub/home", timeout=30)
    assert 'id="dockyard-dev-mode"' in home.text
    assert "Development mode" in home.text and "without containers" in home.text

    token = running_hub.hub_token(session, "nblocal")
    headers = {"Authorization": f"token {token}"}
    api = f"{running_hub.url}/hub/api/users/nblocal"
    started = requests.post(f"{api}/server", headers=headers, json={}, timeout=120)
    assert started.status_code in (201, 202), started.text
    try:
        deadline = time.monotonic() + 120
        admin_token = running_hub.hub_token(running_hub.login(), running_hub.admin)
        while True:
            model = requests.get(api, headers={"Authorization": f"token {admin_token}"},
                                 timeout=30).json()
            server = model["servers"].get("")
            if server and server["ready"]:
                break
            assert server is not None and time.monotonic() < deadline, running_hub.log_tail()
            time.sleep(0.3)
        environ = Path(f"/proc/{server['state']['pid']}/environ").read_bytes().split(b"\0")
        env = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
        assert env["DOCKYARD_URL"] == f"{running_hub.url}/services/dockyard/"
        # The data client's way in: the notebook's own token works on Dockyard's API.
        whoami = requests.get(env["DOCKYARD_URL"] + "api/v1/user", timeout=30, headers={
            "Authorization": f"token {env['JUPYTERHUB_API_TOKEN']}"})
        assert whoami.status_code == 200 and whoami.json()["name"] == "nblocal"
    finally:
        requests.delete(f"{api}/server", headers=headers, timeout=60)


def test_sign_in_starts_a_local_server_which_gets_the_welcome_notebook(
    running_hub: RunningHub,
) -> None:
    running_hub.create_user("nbwelcome")
    admin = {"Authorization": f"token {running_hub.hub_token(running_hub.login(), 'admin')}"}
    api = f"{running_hub.url}/hub/api/users/nbwelcome"
    try:
        # Opening the site and signing in is the one click: without containers there is
        # no choice to make, so the plain spawn page starts the server.
        landed = running_hub.post_login(requests.Session(), "nbwelcome", "user-pass-2024!",
                                        next_url=None)
        assert landed.history[0].headers["Location"] == "/hub/spawn"
        assert "/hub/spawn-pending/nbwelcome" in landed.history[1].headers["Location"]
        deadline = time.monotonic() + 120
        while not (requests.get(api, headers=admin, timeout=30).json()["servers"]
                   .get("", {}).get("ready")):
            assert time.monotonic() < deadline, running_hub.log_tail()
            time.sleep(0.3)
        home = running_hub.home / "users" / "nbwelcome"
        assert (home / "Welcome.ipynb").read_bytes() == WELCOME.read_bytes()
        assert (home / ".dockyard" / "welcome-given").exists()
    finally:
        requests.delete(f"{api}/server", headers=admin, timeout=60)
        deadline = time.monotonic() + 60
        while requests.get(api, headers=admin, timeout=30).json()["servers"]:
            assert time.monotonic() < deadline, "the local server did not stop"
            time.sleep(0.3)
