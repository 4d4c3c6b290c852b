"""A real Dockyard (JupyterHub, proxy, web service, worker; local job backend): a user's
hub token submits a run through the API, the job calls the API back with its run token,
and the `dockyard jobs` commands work against it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from dockyard.models import ImageStatus
from tests.jobs.conftest import SHELL_IMAGE, add_images
from tests.support.hubproc import RunningHub

pytestmark = pytest.mark.hub

DOCKYARD = str(Path(sys.executable).parent / "dockyard")


def jobs_user(hub: RunningHub) -> tuple[str, dict[str, str]]:
    """A new user with a hub API token, and a jobs-enabled image in the catalog."""
    add_images(f"sqlite:///{hub.home}/dockyard.sqlite", (SHELL_IMAGE, True, ImageStatus.READY))
    name = f"jobs-{uuid.uuid4().hex[:6]}"
    session = hub.create_user(name)
    token = hub.hub_token(session, name)
    return name, {"Authorization": f"token {token}"}


def wait_final(hub: RunningHub, headers: dict[str, str], run_id: int,
               timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = requests.get(hub.service(f"api/v1/runs/{run_id}"), headers=headers, timeout=10).json()
        if run["status"] in ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"):
            return run
        time.sleep(0.3)
    raise AssertionError(f"run {run_id} did not end: {run}\n{hub.log_tail()}")


def test_a_user_runs_a_job_that_calls_dockyard_with_its_run_token(running_hub: RunningHub) -> None:
    name, headers = jobs_user(running_hub)
    # The job (a local process in this mode) asks Dockyard who it is, with its own token.
    probe = ("import json, os, urllib.request; "
             "req = urllib.request.Request(os.environ['DOCKYARD_URL'] + 'api/v1/user', "
             "headers={'Authorization': 'token ' + os.environ['DOCKYARD_TOKEN']}); "
             "print('whoami', json.dumps(json.load(urllib.request.urlopen(req, timeout=20)), "
             "sort_keys=True))")
    response = requests.post(running_hub.service("api/v1/runs"), headers=headers, timeout=10,
                             json={"image": SHELL_IMAGE, "command": [sys.executable, "-c", probe],
                                   "tags": ["e2e"]})
    assert response.status_code == 201, response.text
    run_id = response.json()["id"]
    run = wait_final(running_hub, headers, run_id)
    logs = requests.get(running_hub.service(f"api/v1/runs/{run_id}/logs"), headers=headers,
                        timeout=10).json()
    assert run["status"] == "SUCCEEDED", (run, logs["text"], running_hub.log_tail())
    assert run["backend"] == "local" and run["exit_code"] == 0
    expected = f'whoami {{"admin": false, "name": "{name}", "run_id": {run_id}}}'
    assert logs["text"].strip() == expected and logs["complete"] is True
    events = requests.get(running_hub.service(f"api/v1/runs/{run_id}/events"), headers=headers,
                          timeout=10).json()["events"]
    assert [e["to_status"] for e in events] == ["QUEUED", "PENDING", "RUNNING", "SUCCEEDED"]
    # Another user cannot see it.
    other = requests.get(running_hub.service(f"api/v1/runs/{run_id}"), timeout=10,
                         headers=jobs_user(running_hub)[1])
    assert other.status_code == 404


def test_the_jobs_cli_submits_follows_lists_and_cancels(running_hub: RunningHub) -> None:
    _, headers = jobs_user(running_hub)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    env.update(DOCKYARD_URL=running_hub.service(""),
               DOCKYARD_TOKEN=headers["Authorization"].split()[1])

    def dockyard(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([DOCKYARD, "jobs", *args], env=env, capture_output=True,
                              text=True, timeout=120)

    followed = dockyard("submit", "--image", SHELL_IMAGE, "--tag", "cli", "--follow", "--",
                        "sh", "-c", "echo from-the-cli; exit 3")
    assert followed.returncode == 3, followed.stderr
    assert "from-the-cli" in followed.stdout
    assert "FAILED: exit code 3" in followed.stderr
    run_id = int(followed.stdout.split()[1])

    listed = dockyard("list", "--tag", "cli")
    assert listed.returncode == 0 and f"{run_id:>6}  FAILED" in listed.stdout
    logs = dockyard("logs", str(run_id))
    assert logs.stdout == "from-the-cli\n"
    refused = dockyard("cancel", str(run_id))
    assert refused.returncode == 1 and "already ended" in refused.stderr

    slow = dockyard("submit", "--image", SHELL_IMAGE, "--shell", "sleep 30")
    slow_id = int(slow.stdout.split()[1])
    assert dockyard("cancel", str(slow_id)).returncode == 0
    assert wait_final(running_hub, headers, slow_id)["status"] == "CANCELLED"
    bad = dockyard("submit", "--image", "nowhere/unknown:1", "--", "true")
    # Refused input, like a usage error: exit 2, one "field: message" line per problem.
    assert bad.returncode == 2 and "image: Image 'nowhere/unknown:1' is not in" in bad.stderr
