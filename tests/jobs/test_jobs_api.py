"""The jobs REST API on the web app alone (tokens from a table): what each user may see
and do, bad input, paging, logs, events, run-scoped tokens."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import update

from dockyard.db import make_engine, make_session_factory
from dockyard.jobs.run_logs import log_path
from dockyard.jobs.tokens import hash_token
from dockyard.models import Run, RunState, utcnow
from dockyard.settings import Settings
from tests.conftest import auth
from tests.jobs.conftest import SHELL_IMAGE

ALICE, BOB, ADMIN = auth("tok-alice"), auth("tok-bob"), auth("tok-admin")


@pytest.fixture
def api(client: FlaskClient, catalog: Settings) -> FlaskClient:
    return client


def submit(api: FlaskClient, headers: dict[str, str] = ALICE, **fields: Any) -> dict[str, Any]:
    body = {"image": SHELL_IMAGE, "command": "echo hi", **fields}
    response = api.post("/api/v1/runs", json=body, headers=headers)
    assert response.status_code == 201, response.json
    return response.json


def set_run(settings: Settings, run_id: int, **values: Any) -> None:
    """Move a run where a test needs it (the worker is not running here)."""
    engine = make_engine(settings.db_url)
    try:
        with make_session_factory(engine)() as session:
            session.execute(update(Run).where(Run.id == run_id).values(**values))
            session.commit()
    finally:
        engine.dispose()


def problems(response: Any) -> dict[str, str]:
    assert response.is_json, response.data[:300]
    return {item["field"]: item["message"] for item in response.json["detail"]}


# -- runs and definitions -----------------------------------------------------------------
def test_ad_hoc_run_is_queued_with_defaults_and_an_event(api: FlaskClient) -> None:
    run = submit(api, command=["python", "-c", "print(1)"], tags=["nightly", "nightly", "a"])
    assert run["status"] == "QUEUED" and run["owner"] == "alice" and run["attempt"] == 1
    assert run["command"] == ["python", "-c", "print(1)"]  # stored exactly as given
    assert (run["cpu"], run["memory_mb"], run["gpu"]) == (1.0, 1024, 0)
    assert run["tags"] == ["nightly", "a"]
    events = api.get(f"/api/v1/runs/{run['id']}/events", headers=ALICE).json["events"]
    assert [(e["from_status"], e["to_status"], e["actor"]) for e in events] == \
        [(None, "QUEUED", "alice")]


def test_run_copies_its_definition_with_overrides(api: FlaskClient) -> None:
    definition = api.post("/api/v1/definitions", headers=ALICE, json={
        "name": "train", "image": SHELL_IMAGE, "command": ["python", "train.py"], "cpu": 2,
        "memory_mb": 2048, "env": {"A": "1", "B": "2"}, "tags": ["ml"], "max_retries": 1,
        "timeout_seconds": 600,
    })
    assert definition.status_code == 201, definition.json
    definition_id = definition.json["id"]
    run = submit(api, definition_id=definition_id, image=None, command=None,
                 env={"B": "override", "C": "3"}, cpu=0.5)
    assert run["definition_id"] == definition_id and run["definition_name"] == "train"
    assert run["command"] == ["python", "train.py"]
    assert run["cpu"] == 0.5 and run["memory_mb"] == 2048 and run["max_retries"] == 1
    assert run["env"] == {"A": "1", "B": "override", "C": "3"}
    assert run["tags"] == ["ml"] and run["timeout_seconds"] == 600
    # Changing the definition later does not change the run (it holds its own copy).
    changed = api.put(f"/api/v1/definitions/{definition_id}", headers=ALICE, json={
        "name": "train", "image": SHELL_IMAGE, "command": "echo changed"})
    assert changed.status_code == 200 and changed.json["command"] == "echo changed"
    assert api.get(f"/api/v1/runs/{run['id']}", headers=ALICE).json["command"] == \
        ["python", "train.py"]


def test_definition_names_are_unique_per_owner(api: FlaskClient) -> None:
    body = {"name": "etl", "image": SHELL_IMAGE, "command": "true"}
    assert api.post("/api/v1/definitions", json=body, headers=ALICE).status_code == 201
    again = api.post("/api/v1/definitions", json=body, headers=ALICE)
    assert again.status_code == 409
    assert "already have a definition named 'etl'" in problems(again)["name"]
    assert api.post("/api/v1/definitions", json=body, headers=BOB).status_code == 201


def test_deleting_a_definition_keeps_its_runs(api: FlaskClient) -> None:
    definition_id = api.post("/api/v1/definitions", headers=ALICE, json={
        "name": "once", "image": SHELL_IMAGE, "command": "true"}).json["id"]
    run = submit(api, definition_id=definition_id, image=None, command=None)
    assert api.delete(f"/api/v1/definitions/{definition_id}", headers=ALICE).status_code == 204
    assert api.get(f"/api/v1/definitions/{definition_id}", headers=ALICE).status_code == 404
    kept = api.get(f"/api/v1/runs/{run['id']}", headers=ALICE).json
    assert kept["definition_id"] is None and kept["command"] == "true"


# -- who sees what -------------------------------------------------------------------------
def test_other_users_objects_are_404_everywhere(api: FlaskClient) -> None:
    run_id = submit(api)["id"]
    definition_id = api.post("/api/v1/definitions", headers=ALICE, json={
        "name": "mine", "image": SHELL_IMAGE, "command": "true"}).json["id"]
    body = {"name": "x", "image": SHELL_IMAGE, "command": "true"}
    calls = [
        ("get", f"/api/v1/runs/{run_id}", None),
        ("post", f"/api/v1/runs/{run_id}/cancel", None),
        ("post", f"/api/v1/runs/{run_id}/retry", None),
        ("get", f"/api/v1/runs/{run_id}/logs", None),
        ("get", f"/api/v1/runs/{run_id}/logs?format=text", None),
        ("get", f"/api/v1/runs/{run_id}/events", None),
        ("get", f"/api/v1/definitions/{definition_id}", None),
        ("put", f"/api/v1/definitions/{definition_id}", body),
        ("delete", f"/api/v1/definitions/{definition_id}", None),
        ("get", f"/jobs/runs/{run_id}", None),
        ("get", f"/jobs/runs/{run_id}/panel", None),
        ("get", f"/jobs/runs/{run_id}/log-tail", None),
        ("get", f"/jobs/runs/{run_id}/log.txt", None),
        ("get", f"/jobs/new?clone={run_id}", None),
        ("get", f"/jobs/definitions/{definition_id}", None),
        ("get", f"/jobs/definitions/{definition_id}/edit", None),
        ("get", f"/jobs/new?definition={definition_id}", None),
    ]
    for method, path, json_body in calls:
        response = getattr(api, method)(path, headers=BOB, json=json_body)
        assert response.status_code == 404, (method, path, response.status_code)
        if path.startswith("/api/"):
            assert response.json["error"] == "Not Found"
    # Bob's lists do not show alice's things, even when he asks for them by owner.
    assert api.get("/api/v1/runs", headers=BOB).json["runs"] == []
    assert api.get("/api/v1/runs?owner=alice", headers=BOB).json["runs"] == []
    assert api.get("/api/v1/definitions", headers=BOB).json["definitions"] == []
    # Alice (the owner) and an admin see them.
    for headers in (ALICE, ADMIN):
        assert api.get(f"/api/v1/runs/{run_id}", headers=headers).status_code == 200
        assert api.get(f"/api/v1/definitions/{definition_id}", headers=headers).status_code == 200
        assert api.get(f"/jobs/runs/{run_id}", headers=headers).status_code == 200
    assert [r["id"] for r in api.get("/api/v1/runs?owner=alice", headers=ADMIN).json["runs"]] \
        == [run_id]
    # Nothing changed hands: the run is still queued and uncancelled, the definition exists.
    assert api.get(f"/api/v1/runs/{run_id}", headers=ALICE).json["cancel_requested"] is False


def test_api_needs_a_token(api: FlaskClient) -> None:
    assert api.get("/api/v1/runs").status_code == 401
    assert api.post("/api/v1/runs", json={}).status_code in (400, 401)


# -- bad input -----------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "field", "words"), [
    ({"image": "nowhere/unknown:1"}, "image", "not in Dockyard's catalog"),
    ({"image": "team/retired:1"}, "image", "retired"),
    ({"image": "team/notebooks-only:1"}, "image", "not enabled for jobs"),
    ({"cpu": -1}, "cpu", "greater than 0"),
    ({"cpu": 1000}, "cpu", "at most 8 CPUs"),
    ({"memory_mb": 10**7}, "memory_mb", "at most"),
    ({"gpu": 1}, "gpu", "no GPUs"),
    ({"timeout_seconds": 10**9}, "timeout_seconds", "at most"),
    ({"max_retries": 99}, "max_retries", "at most 10"),
    ({"env": {"not-an-identifier": "x"}}, "env", "not an environment variable name"),
    ({"env": {"DOCKYARD_TOKEN": "forged"}}, "env", "set by Dockyard"),
    ({"command": []}, "command", "empty"),
    ({"command": {"a": 1}}, "command", "list of strings"),
    ({"tags": ["bad tag!"]}, "tags", "not a tag"),
    ({"definition_id": 999}, "definition_id", "no job definition #999"),
    ({"surprise": True}, "surprise", "Extra inputs"),
])
def test_bad_input_is_422_with_the_field_named(api: FlaskClient, body: dict[str, Any], field: str,
                                               words: str) -> None:
    response = api.post("/api/v1/runs", json={"image": SHELL_IMAGE, "command": "true", **body},
                        headers=ALICE)
    assert response.status_code == 422
    assert words in problems(response)[field]


def test_a_one_megabyte_command_is_refused(api: FlaskClient) -> None:
    response = api.post("/api/v1/runs", headers=ALICE,
                        json={"image": SHELL_IMAGE, "command": "echo " + "x" * 1024 * 1024})
    assert response.status_code in (413, 422)
    if response.status_code == 422:
        assert "longer than the 65536 bytes allowed" in problems(response)["command"]
    assert api.get("/api/v1/runs", headers=ALICE).json["runs"] == []


def test_missing_image_and_command_are_named(api: FlaskClient) -> None:
    response = api.post("/api/v1/runs", json={}, headers=ALICE)
    assert set(problems(response)) == {"image", "command"}


def test_not_json_and_malformed_json(api: FlaskClient) -> None:
    assert api.post("/api/v1/runs", data="image=x", headers=ALICE).status_code == 415
    malformed = api.post("/api/v1/runs", data="{", content_type="application/json", headers=ALICE)
    assert malformed.status_code == 400 and malformed.json["error"] == "Malformed JSON"


def test_bad_query_parameters(api: FlaskClient) -> None:
    for query, field in (("status=DONE", "status.0"), ("limit=0", "limit"),
                         ("limit=100000", "limit"), ("sort=sideways", "sort"),
                         ("cursor=garbage", "cursor"), ("definition=x", "definition"),
                         ("since=yesterday", "since"), ("colour=red", "colour")):
        response = api.get(f"/api/v1/runs?{query}", headers=ALICE)
        assert response.status_code == 422, query
        assert field in problems(response), (query, response.json)


# -- cancel and retry ------------------------------------------------------------------------
def test_cancel_is_a_request_and_a_finished_run_is_409(api: FlaskClient, catalog: Settings) -> None:
    run_id = submit(api)["id"]
    first = api.post(f"/api/v1/runs/{run_id}/cancel", headers=ALICE)
    assert first.status_code == 202
    assert first.json["cancel_requested"] is True and first.json["status"] == "QUEUED"
    assert api.post(f"/api/v1/runs/{run_id}/cancel", headers=ALICE).status_code == 202
    events = api.get(f"/api/v1/runs/{run_id}/events", headers=ALICE).json["events"]
    assert [e["reason"] for e in events].count("cancel requested") == 1

    done_id = submit(api)["id"]
    set_run(catalog, done_id, status=RunState.SUCCEEDED, exit_code=0)
    refused = api.post(f"/api/v1/runs/{done_id}/cancel", headers=ALICE)
    assert refused.status_code == 409 and "already ended (SUCCEEDED)" in refused.json["detail"]


def test_retry_makes_a_new_attempt_and_keeps_the_old(api: FlaskClient, catalog: Settings) -> None:
    first = submit(api, tags=["t1"])
    assert api.post(f"/api/v1/runs/{first['id']}/retry", headers=ALICE).status_code == 409
    set_run(catalog, first["id"], status=RunState.FAILED, exit_code=1)
    second = api.post(f"/api/v1/runs/{first['id']}/retry", headers=ALICE)
    assert second.status_code == 201
    assert (second.json["attempt"], second.json["retry_of_id"]) == (2, first["id"])
    assert second.json["tags"] == ["t1"] and second.json["status"] == "QUEUED"
    set_run(catalog, second.json["id"], status=RunState.FAILED, exit_code=1)
    third = api.post(f"/api/v1/runs/{second.json['id']}/retry", headers=ALICE).json
    assert (third["attempt"], third["retry_of_id"]) == (3, first["id"])
    assert api.get(f"/api/v1/runs/{first['id']}", headers=ALICE).json["status"] == "FAILED"


# -- the list ---------------------------------------------------------------------------------
def all_pages(api: FlaskClient, query: str) -> list[list[int]]:
    pages, cursor = [], None
    while True:
        url = f"/api/v1/runs?{query}" + (f"&cursor={cursor}" if cursor else "")
        page = api.get(url, headers=ALICE)
        assert page.status_code == 200, page.json
        pages.append([r["id"] for r in page.json["runs"]])
        cursor = page.json["next_cursor"]
        if cursor is None:
            return pages


def test_keyset_pages_cover_every_run_once_in_every_order(api: FlaskClient,
                                                          catalog: Settings) -> None:
    ids = [submit(api)["id"] for _ in range(7)]
    assert all_pages(api, "limit=3") == [ids[6:3:-1], ids[3:0:-1], ids[0:1]]
    assert all_pages(api, "limit=3&sort=queued") == [ids[0:3], ids[3:6], ids[6:7]]
    # Finish four runs at known times (two at the same instant); three never finished.
    now = utcnow()
    for run_id, seconds in zip(ids[:4], (30, 10, 20, 20), strict=True):
        set_run(catalog, run_id, status=RunState.SUCCEEDED, started_at=now,
                finished_at=now + timedelta(seconds=seconds))
    by_finish = [ids[0], ids[3], ids[2], ids[1]]  # latest first, ties newest id first
    unfinished = [ids[6], ids[5], ids[4]]
    for limit in (1, 2, 3, 4, 5, 10):
        pages = all_pages(api, f"limit={limit}&sort=-finished")
        assert [i for page in pages for i in page] == by_finish + unfinished, limit
        assert all(len(page) <= limit for page in pages)
    ascending = [i for page in all_pages(api, "limit=2&sort=finished") for i in page]
    assert ascending == [ids[1], ids[2], ids[3], ids[0], ids[4], ids[5], ids[6]]
    # A cursor belongs to its sort order.
    cursor = api.get("/api/v1/runs?limit=1&sort=-finished", headers=ALICE).json["next_cursor"]
    wrong = api.get(f"/api/v1/runs?limit=1&sort=queued&cursor={cursor}", headers=ALICE)
    assert wrong.status_code == 422 and "cursor" in problems(wrong)


def test_filters_are_whitelisted_and_bound(api: FlaskClient, catalog: Settings) -> None:
    definition_id = api.post("/api/v1/definitions", headers=ALICE, json={
        "name": "d", "image": SHELL_IMAGE, "command": "true"}).json["id"]
    tagged = submit(api, tags=["nightly"])["id"]
    from_definition = submit(api, definition_id=definition_id)["id"]
    failed = submit(api)["id"]
    set_run(catalog, failed, status=RunState.FAILED)

    def ids(query: str, headers: dict[str, str] = ALICE) -> list[int]:
        response = api.get(f"/api/v1/runs?{query}", headers=headers)
        assert response.status_code == 200, response.json
        return [r["id"] for r in response.json["runs"]]

    assert ids("tag=nightly") == [tagged]
    assert ids(f"definition={definition_id}") == [from_definition]
    assert ids("status=FAILED") == [failed]
    assert ids("status=FAILED&status=QUEUED") == [failed, from_definition, tagged]
    assert ids(f"image={SHELL_IMAGE}") == [failed, from_definition, tagged]
    assert ids("image=other:1") == []
    assert ids("tag=x' OR '1'='1") == []  # a value, never SQL
    assert ids("since=2999-01-01T00:00:00Z") == []
    assert len(ids("until=2999-01-01T00:00:00Z")) == 3
    submit(api, headers=BOB)
    assert len(ids("", ADMIN)) == 4 and len(ids("owner=bob", ADMIN)) == 1


# -- logs, events, tokens --------------------------------------------------------------------------
def test_logs_are_read_incrementally_and_downloadable(api: FlaskClient, catalog: Settings) -> None:
    run_id = submit(api)["id"]
    empty = api.get(f"/api/v1/runs/{run_id}/logs", headers=ALICE).json
    assert (empty["text"], empty["next_offset"], empty["complete"]) == ("", 0, False)
    path = log_path(catalog, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("line one\n")
    first = api.get(f"/api/v1/runs/{run_id}/logs?offset=0", headers=ALICE).json
    assert first["text"] == "line one\n" and first["next_offset"] == 9
    with open(path, "a") as f:
        f.write("line two ✓\n")
    second = api.get(f"/api/v1/runs/{run_id}/logs?offset=9", headers=ALICE).json
    assert second["text"] == "line two ✓\n" and not second["complete"]
    set_run(catalog, run_id, status=RunState.SUCCEEDED)
    last = api.get(f"/api/v1/runs/{run_id}/logs?offset={second['next_offset']}",
                   headers=ALICE).json
    assert last["text"] == "" and last["complete"] is True
    download = api.get(f"/api/v1/runs/{run_id}/logs?format=text", headers=ALICE)
    assert download.status_code == 200 and download.mimetype == "text/plain"
    assert "attachment" in download.headers["Content-Disposition"]
    assert download.data.decode() == "line one\nline two ✓\n"
    assert api.get(f"/api/v1/runs/{run_id}/logs?offset=-1", headers=ALICE).status_code == 422


def test_run_token_acts_as_the_owner_only_while_the_run_is_live(api: FlaskClient,
                                                                 catalog: Settings) -> None:
    parent = submit(api)["id"]
    token = f"dyr_{parent}_sometestsecret"
    set_run(catalog, parent, status=RunState.RUNNING, token_hash=hash_token(token))
    me = api.get("/api/v1/user", headers=auth(token))
    assert me.status_code == 200
    assert me.json == {"name": "alice", "admin": False, "run_id": parent}
    child = api.post("/api/v1/runs", headers=auth(token),
                     json={"image": SHELL_IMAGE, "command": "true"})
    assert child.status_code == 201 and child.json["owner"] == "alice"
    events = api.get(f"/api/v1/runs/{child.json['id']}/events", headers=ALICE).json["events"]
    assert events[0]["reason"] == f"submitted by run #{parent}"
    # A wrong secret for the same run, and the right one after the run ended, are refused.
    assert api.get("/api/v1/user", headers=auth(f"dyr_{parent}_wrong")).status_code == 401
    set_run(catalog, parent, status=RunState.SUCCEEDED)
    assert api.get("/api/v1/user", headers=auth(token)).status_code == 401


def test_openapi_documents_the_jobs_routes(api: FlaskClient) -> None:
    spec = api.get("/api/v1/openapi.json").json
    paths = spec["paths"]
    for path, methods in {
        "/api/v1/definitions": {"get", "post"},
        "/api/v1/definitions/{definition_id}": {"get", "put", "delete"},
        "/api/v1/runs": {"get", "post"},
        "/api/v1/runs/{run_id}": {"get"},
        "/api/v1/runs/{run_id}/cancel": {"post"},
        "/api/v1/runs/{run_id}/retry": {"post"},
        "/api/v1/runs/{run_id}/logs": {"get"},
        "/api/v1/runs/{run_id}/events": {"get"},
    }.items():
        assert methods <= set(paths[path]), path
    params = {p["name"] for p in paths["/api/v1/runs"]["get"]["parameters"]}
    assert {"status", "owner", "image", "tag", "definition", "cursor", "limit"} <= params
    assert "RunIn" in spec["components"]["schemas"]
