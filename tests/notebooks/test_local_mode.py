"""Without Docker, notebooks are local processes: same environment, labelled as
development mode in the UI."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from tests.support.hubproc import RunningHub

pytestmark = pytest.mark.hub


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
