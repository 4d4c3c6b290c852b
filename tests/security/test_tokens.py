"""Tokens on a real Dockyard (`dockyard up`): the hub token behind a browser session, a
user's API token and a job's run-scoped token never appear in a URL, a log line, a page
or any file under DOCKYARD_HOME; the run-scoped token stops working when its run ends.
(And the security headers arrive through the hub's proxy as the web service sent them.)"""

from __future__ import annotations

import base64
import json
import time
import uuid
import zlib
from pathlib import Path

import pytest
import requests

from dockyard.models import ImageStatus
from tests.jobs.conftest import SHELL_IMAGE, add_images
from tests.security.test_headers import assert_hardened
from tests.support.hubproc import RunningHub

pytestmark = pytest.mark.hub


def _session_token(session: requests.Session) -> str:
    """The hub token inside Dockyard's (signed, not encrypted) session cookie."""
    value = session.cookies.get("dockyard-session")
    assert value, "no Dockyard session after the login"
    compressed = value.startswith(".")
    payload = value.lstrip(".").split(".")[0]
    data = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    return json.loads(zlib.decompress(data) if compressed else data)["token"]


def _files_holding(home: Path, secret: str) -> list[str]:
    needle = secret.encode()
    return [str(path.relative_to(home)) for path in home.rglob("*")
            if path.is_file() and needle in path.read_bytes()]


@pytest.mark.timeout(300)
def test_tokens_stay_out_of_urls_logs_pages_and_files(running_hub: RunningHub,
                                                      tmp_path: Path) -> None:
    hub = running_hub
    add_images(f"sqlite:///{hub.home}/dockyard.sqlite", (SHELL_IMAGE, True, ImageStatus.READY))
    name = "tok" + uuid.uuid4().hex[:6]
    browser = hub.create_user(name)
    urls: list[str] = []
    page = browser.get(hub.service("jobs/"), timeout=30)
    urls += [r.url for r in page.history] + [page.url]
    for r in page.history:
        urls.append(r.headers.get("Location", ""))
    assert page.status_code == 200 and "/services/dockyard/jobs/" in page.url
    # Through the hub's proxy the headers arrive as the web service set them.
    assert_hardened(page)
    assert_hardened(requests.get(hub.service("api/v1/runs"), timeout=30))  # a 401
    session_token = _session_token(browser)
    api_token = hub.hub_token(browser, name)
    headers = {"Authorization": f"token {api_token}"}
    assert requests.get(hub.service("api/v1/user"), headers=headers,
                        timeout=30).json()["name"] == name

    # A job that keeps its own token where the test can read it, and lives a little.
    token_file = tmp_path / f"{name}.token"
    made = requests.post(hub.service("api/v1/runs"), headers=headers, timeout=30, json={
        "image": SHELL_IMAGE,
        "command": f'printf %s "$DOCKYARD_TOKEN" > {token_file}; sleep 4; echo done'})
    assert made.status_code == 201, made.text
    run_id = made.json()["id"]
    deadline = time.monotonic() + 60
    while not (token_file.exists() and token_file.read_text()):
        assert time.monotonic() < deadline, hub.log_tail()
        time.sleep(0.2)
    run_token = token_file.read_text()
    assert run_token.startswith("dyr_")
    run_headers = {"Authorization": f"Bearer {run_token}"}
    me = requests.get(hub.service("api/v1/user"), headers=run_headers, timeout=30).json()
    assert me == {"name": name, "admin": False, "run_id": run_id}
    # Only what its owner may do: not an admin's catalog work, not other users' runs.
    assert requests.patch(hub.service("api/v1/images/1"), headers=run_headers, timeout=30,
                          json={"description": "x"}).status_code in (403, 404)

    deadline = time.monotonic() + 60
    while requests.get(hub.service(f"api/v1/runs/{run_id}"), headers=headers,
                       timeout=30).json()["status"] != "SUCCEEDED":
        assert time.monotonic() < deadline, hub.log_tail()
        time.sleep(0.3)
    # The run has ended: its token is dead, whatever the job did with it.
    assert requests.get(hub.service("api/v1/user"), headers=run_headers,
                        timeout=30).status_code == 401

    # Pages and answers show none of them.
    shown = [
        browser.get(hub.service(f"jobs/runs/{run_id}"), timeout=30).text,
        browser.get(hub.service(f"jobs/runs/{run_id}/panel"), timeout=30).text,
        browser.get(hub.service("jobs/"), timeout=30).text,
        requests.get(hub.service(f"api/v1/runs/{run_id}"), headers=headers, timeout=30).text,
        requests.get(hub.service(f"api/v1/runs/{run_id}/events"), headers=headers,
                     timeout=30).text,
        requests.get(hub.service(f"api/v1/runs/{run_id}/logs"), headers=headers,
                     timeout=30).text,
    ]
    secrets = {"session": session_token, "api": api_token, "run": run_token}
    for what, secret in secrets.items():
        assert not [u for u in urls if secret in u], f"the {what} token is in a URL"
        assert not [s for s in shown if secret in s], f"the {what} token is on a page"
        # Logs of the hub, the web service and the worker; databases; anything at all.
        held = _files_holding(hub.home, secret)
        assert held == [], f"the {what} token is written in {held}"
    token_file.unlink()
