"""Input limits: each one a setting, each answered with a clear 4xx (413 for bodies)
naming the field or the setting, never a 500 and never a half-done change."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from dockyard.models import RunState
from dockyard.settings import Settings
from dockyard.web import create_app
from dockyard.worker.loop import Worker
from tests.conftest import USERS, TokenTable, auth
from tests.jobs.conftest import RunsDb, add_images, log_file
from tests.security.world import SHELL_IMAGE

ALICE = auth("tok-alice")


@pytest.fixture
def limited(migrated: Settings) -> Settings:
    from dockyard.models import ImageStatus

    add_images(migrated.db_url, (SHELL_IMAGE, True, ImageStatus.READY))
    return migrated.model_copy(update=dict(
        request_max_kb=64, job_max_command_bytes=256, job_max_env_vars=2,
        job_max_env_bytes=256, api_page_size_max=10, job_log_max_bytes=4096,
    ))


@pytest.fixture
def limited_app(limited: Settings) -> Iterator[Flask]:
    app = create_app(limited, identity=TokenTable(dict(USERS)))
    app.config["TESTING"] = True
    yield app
    app.extensions["dockyard.engine"].dispose()


def _fields(response: Any) -> dict[str, str]:
    return {d["field"]: d["message"] for d in response.json["detail"]}


def _runs(client: FlaskClient) -> int:
    return len(client.get("/api/v1/runs", headers=ALICE).json["runs"])


def test_request_bodies_over_the_limit_are_413_naming_the_setting(limited_app: Flask) -> None:
    client = limited_app.test_client()
    big = {"image": SHELL_IMAGE, "command": "true", "env": {"PAD": "x" * 70 * 1024}}
    refused = client.post("/api/v1/runs", json=big, headers=ALICE)
    assert refused.status_code == 413
    assert refused.json["error"] == "Request too large"
    assert "64 KB" in refused.json["detail"] and "DOCKYARD_REQUEST_MAX_KB" in refused.json["detail"]
    # The same from a page's form: an HTML answer saying the same.
    with client.session_transaction() as session:
        session["token"] = "tok-alice"
    page = client.post("/jobs/new", data={"command": "x" * 70 * 1024, "csrf_token": "x"})
    assert page.status_code == 413 and "DOCKYARD_REQUEST_MAX_KB" in page.get_data(as_text=True)
    assert _runs(client) == 0
    # Just under the limit the body is read, and the job limits speak instead.
    under = client.post("/api/v1/runs", headers=ALICE, json={**big, "env": {"PAD": "x" * 200}})
    assert under.status_code == 201


def test_command_and_environment_limits_name_the_field(limited_app: Flask) -> None:
    client = limited_app.test_client()
    cases = [
        ({"command": "echo " + "x" * 300}, "command", "256 bytes"),
        ({"command": "true", "env": {"A": "1", "B": "2", "C": "3"}}, "env", "at most 2"),
        ({"command": "true", "env": {"A": "x" * 300}}, "env", "256 bytes"),
    ]
    for fields, field, words in cases:
        for path, body in (("/api/v1/runs", {"image": SHELL_IMAGE, **fields}),
                           ("/api/v1/definitions", {"name": "limited", "image": SHELL_IMAGE,
                                                    **fields})):
            response = client.post(path, json=body, headers=ALICE)
            assert response.status_code == 422, (path, response.json)
            assert words in _fields(response)[field], response.json
    assert _runs(client) == 0


def test_page_sizes_are_capped(limited_app: Flask) -> None:
    client = limited_app.test_client()
    for _ in range(11):
        assert client.post("/api/v1/runs", headers=ALICE,
                           json={"image": SHELL_IMAGE, "command": "true"}).status_code == 201
    over = client.get("/api/v1/runs?limit=11", headers=ALICE)
    assert over.status_code == 422 and "at most 10" in _fields(over)["limit"]
    page = client.get("/api/v1/runs?limit=10", headers=ALICE).json
    assert len(page["runs"]) == 10 and page["next_cursor"]
    # A list asked for without a limit is cut at the cap, with a cursor for the rest.
    default = client.get("/api/v1/runs", headers=ALICE)
    assert default.status_code == 200, default.json
    assert len(default.json["runs"]) == 10 and default.json["next_cursor"]
    for path in ("/api/v1/tables/ns/t/history?limit=100000",
                 "/api/v1/tables/ns/t/preview?limit=100000"):
        response = client.get(path, headers=ALICE)
        assert response.status_code == 422 and "limit" in _fields(response), path


def test_a_log_is_kept_and_offered_only_up_to_its_limit(limited: Settings,
                                                        limited_app: Flask) -> None:
    settings = limited.model_copy(update=dict(job_backend="local", job_namespace="seclog",
                                              worker_poll_seconds=0.1))
    worker = Worker(settings, name="limits-worker")
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    db = RunsDb(settings.db_url)
    client = limited_app.test_client()
    try:
        run_id = client.post("/api/v1/runs", headers=ALICE, json={
            "image": SHELL_IMAGE,
            "command": ["python3", "-c", "import sys; sys.stdout.write('y' * 200000)"],
        }).json["id"]
        assert db.wait_for(run_id, RunState.SUCCEEDED, RunState.FAILED,
                           timeout=60).status == RunState.SUCCEEDED
    finally:
        stop.set()
        worker.wake.set()
        thread.join(timeout=30)
        worker.close()
        db.close()
    kept = Path(log_file(settings, run_id)).read_bytes()
    assert kept[:4096] == b"y" * 4096
    assert kept[4096:].startswith(b"\n[dockyard: log cut at 4096 bytes")
    assert b"DOCKYARD_JOB_LOG_MAX_BYTES" in kept and len(kept) < 4096 + 200
    download = client.get(f"/jobs/runs/{run_id}/log.txt", headers=ALICE)
    assert download.data == kept
