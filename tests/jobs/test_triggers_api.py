"""Definitions' triggers through the REST API on the web app alone (no worker): schedules
and their next fire times, runs after runs, runs on new data, pause and resume, backfills,
notebook definitions, and every bad input refused with the field named."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from dockyard.data.service import Actor, Catalog
from dockyard.db import make_engine, make_session_factory
from dockyard.jobs.service import run_from_definition
from dockyard.jobs.triggers import fire
from dockyard.migrate import upgrade
from dockyard.models import Backfill, ImageStatus, JobDefinition, Run, RunState
from dockyard.settings import Settings
from tests.conftest import auth, client_for, web_app
from tests.data.helpers import write_batch_files
from tests.jobs.conftest import SHELL_IMAGE, add_images
from tests.jobs.test_jobs_api import problems
from tests.jobs.test_notebook_api import ETL, NOTEBOOK_IMAGE, _set_contents
from tests.support.postgres import fresh_database

ALICE, BOB, ADMIN = auth("tok-alice"), auth("tok-bob"), auth("tok-admin")


@pytest.fixture
def api(client: FlaskClient, catalog: Settings) -> FlaskClient:
    return client


@pytest.fixture
def orders(catalog: Settings) -> Iterator[list[str]]:
    """A table sales.orders partitioned by day, with three committed partitions; yields
    their current batch ids."""
    data = Catalog.from_settings(catalog)
    actor = Actor("alice")
    batch_ids = []
    try:
        for day in ("2024-01-01", "2024-01-02", "2024-02-01"):
            began = data.begin_batch(actor, "sales", "orders", {"day": day})
            write_batch_files(began.location, {"amount": [1, 2]})
            data.commit_batch(actor, "sales", "orders", began.batch_id)
            batch_ids.append(began.batch_id)
        yield batch_ids
    finally:
        data.engine.dispose()


def define(api: FlaskClient, name: str, headers: dict[str, str] = ALICE,
           expect: int = 201, **fields: Any) -> dict[str, Any]:
    body = {"name": name, "image": SHELL_IMAGE, "command": "echo hi", **fields}
    response = api.post("/api/v1/definitions", json=body, headers=headers)
    assert response.status_code == expect, response.json
    return response.json


def replace(api: FlaskClient, definition: dict[str, Any], headers: dict[str, str] = ALICE,
            **fields: Any) -> Any:
    body = {"name": definition["name"], "image": SHELL_IMAGE, "command": "echo hi", **fields}
    return api.put(f"/api/v1/definitions/{definition['id']}", json=body, headers=headers)


def stored(settings: Settings, model: Any, object_id: Any) -> Any:
    engine = make_engine(settings.db_url)
    try:
        with make_session_factory(engine)() as session:
            found = session.get(model, object_id)
            session.expunge_all()
            return found
    finally:
        engine.dispose()


# -- each trigger --------------------------------------------------------------------------
def test_a_schedule_gives_the_next_five_fire_times(api: FlaskClient,
                                                   catalog: Settings) -> None:
    created = define(api, "nightly", schedule={"cron": "30 2 * * *",
                                               "timezone": "Europe/Berlin"})
    assert created["schedule"] == {"cron": "30 2 * * *", "timezone": "Europe/Berlin",
                                   "concurrency": "allow", "missed": "skip"}
    assert created["paused"] is False and created["kind"] == "command"
    times = created["next_runs"]
    assert len(times) == 5 and times == sorted(times)
    # 02:30 in Berlin is 00:30 or 01:30 UTC depending on the season.
    assert all(t[11:19] in ("00:30:00", "01:30:00") and t.endswith(("Z", "+00:00"))
               for t in times)
    definition = stored(catalog, JobDefinition, created["id"])
    assert definition.next_fire_at.isoformat().replace("+00:00", "Z") == \
        times[0].replace("+00:00", "Z")
    again = api.get(f"/api/v1/definitions/{created['id']}", headers=ALICE).json
    assert again["next_runs"][0] == times[0]
    # Without its schedule, it is not scheduled any more.
    updated = replace(api, created)
    assert updated.status_code == 200, updated.json
    assert updated.json["schedule"] is None and updated.json["next_runs"] == []
    assert stored(catalog, JobDefinition, created["id"]).next_fire_at is None


def test_after_and_on_batch_triggers_are_kept(api: FlaskClient, catalog: Settings,
                                              orders: list[str]) -> None:
    upstream = define(api, "load")
    downstream = define(api, "report", after={"definition_id": upstream["id"],
                                              "on": "finished"})
    assert downstream["after"] == {"definition_id": upstream["id"], "on": "finished"}
    assert downstream["next_runs"] == []
    watcher = define(api, "watch", on_batch={"namespace": "sales", "table": "orders",
                                             "partition": {"day": "2024-01-*"}})
    assert watcher["on_batch"] == {"namespace": "sales", "table": "orders",
                                   "partition": {"day": "2024-01-*"}}
    rows = (stored(catalog, JobDefinition, downstream["id"]),
            stored(catalog, JobDefinition, watcher["id"]))
    assert rows[0].after_definition_id == upstream["id"]
    assert rows[1].on_batch_table_id is not None
    # "after" defaults to a succeeded upstream run.
    other = define(api, "other", after={"definition_id": upstream["id"]})
    assert other["after"]["on"] == "succeeded"


# -- bad input -----------------------------------------------------------------------------
@pytest.mark.parametrize("schedule,field", [
    ({"cron": "61 * * * *"}, "schedule.cron"),
    ({"cron": "*/5 * * * * *"}, "schedule.cron"),
    ({"cron": "0 6 * * *", "timezone": "Mars/Olympus"}, "schedule.timezone"),
    ({"cron": "0 6 * * *", "concurrency": "sometimes"}, "schedule.concurrency"),
    ({"cron": "0 6 * * *", "every": 3}, "schedule.every"),
])
def test_a_bad_schedule_is_refused_naming_the_field(api: FlaskClient,
                                                    schedule: dict[str, Any],
                                                    field: str) -> None:
    response = api.post("/api/v1/definitions", headers=ALICE, json={
        "name": "bad", "image": SHELL_IMAGE, "command": "true", "schedule": schedule})
    assert response.status_code == 422
    assert field in problems(response), response.json


def test_a_too_frequent_schedule_is_refused(catalog: Settings) -> None:
    api = client_for(catalog.model_copy(update={"schedule_min_seconds": 300}))
    response = api.post("/api/v1/definitions", headers=ALICE, json={
        "name": "busy", "image": SHELL_IMAGE, "command": "true",
        "schedule": {"cron": "*/2 * * * *"}})
    assert response.status_code == 422
    assert "DOCKYARD_SCHEDULE_MIN_SECONDS" in problems(response)["schedule.cron"]
    every_five = define(api, "calm", schedule={"cron": "*/5 * * * *"})
    assert len(every_five["next_runs"]) == 5


def test_after_cycles_are_refused_and_spelled_out(api: FlaskClient) -> None:
    a = define(api, "a")
    b = define(api, "b", after={"definition_id": a["id"]})
    cycle = replace(api, a, after={"definition_id": b["id"]})
    assert cycle.status_code == 422
    assert "a → b → a" in problems(cycle)["after.definition_id"]
    itself = replace(api, a, after={"definition_id": a["id"]})
    assert itself.status_code == 422
    assert "a → a" in problems(itself)["after.definition_id"]
    # A chain without a cycle is fine.
    c = define(api, "c", after={"definition_id": b["id"]})
    assert c["after"]["definition_id"] == b["id"]


def test_after_must_name_one_of_your_definitions(api: FlaskClient) -> None:
    bobs = define(api, "bobs", headers=BOB)
    response = api.post("/api/v1/definitions", headers=ALICE, json={
        "name": "mine", "image": SHELL_IMAGE, "command": "true",
        "after": {"definition_id": bobs["id"]}})
    assert response.status_code == 422
    assert "after.definition_id" in problems(response)
    missing = api.post("/api/v1/definitions", headers=ALICE, json={
        "name": "mine", "image": SHELL_IMAGE, "command": "true",
        "after": {"definition_id": 999999, "on": "failed"}})
    assert "after.definition_id" in problems(missing)
    bad_on = api.post("/api/v1/definitions", headers=ALICE, json={
        "name": "mine", "image": SHELL_IMAGE, "command": "true",
        "after": {"definition_id": bobs["id"], "on": "sometimes"}})
    assert "after.on" in problems(bad_on)


def test_on_batch_needs_an_existing_table_and_its_keys(api: FlaskClient,
                                                       orders: list[str]) -> None:
    no_table = api.post("/api/v1/definitions", headers=ALICE, json={
        "name": "w", "image": SHELL_IMAGE, "command": "true",
        "on_batch": {"namespace": "sales", "table": "returns"}})
    assert no_table.status_code == 422
    assert "sales.returns" in problems(no_table)["on_batch.table"]
    bad_key = api.post("/api/v1/definitions", headers=ALICE, json={
        "name": "w", "image": SHELL_IMAGE, "command": "true",
        "on_batch": {"namespace": "sales", "table": "orders", "partition": {"region": "eu"}}})
    assert bad_key.status_code == 422
    assert "day" in problems(bad_key)["on_batch.partition"]


# -- pause and resume ----------------------------------------------------------------------
def test_pause_and_resume(api: FlaskClient, catalog: Settings) -> None:
    created = define(api, "hourly", schedule={"cron": "0 * * * *"})
    paused = api.post(f"/api/v1/definitions/{created['id']}/pause", headers=ALICE)
    assert paused.status_code == 200, paused.json
    assert paused.json["paused"] is True and paused.json["next_runs"] == []
    assert stored(catalog, JobDefinition, created["id"]).next_fire_at is None
    resumed = api.post(f"/api/v1/definitions/{created['id']}/resume", headers=ALICE)
    assert resumed.status_code == 200
    assert resumed.json["paused"] is False and len(resumed.json["next_runs"]) == 5
    assert stored(catalog, JobDefinition, created["id"]).next_fire_at is not None
    # Created paused: no fire time either.
    quiet = define(api, "quiet", schedule={"cron": "0 * * * *"}, paused=True)
    assert quiet["next_runs"] == []


# -- fires -------------------------------------------------------------------------------------
def test_fires_newest_first_and_the_runs_they_made(api: FlaskClient, catalog: Settings) -> None:
    created = define(api, "ticks", schedule={"cron": "0 * * * *"})
    engine = make_engine(catalog.db_url)
    try:
        with make_session_factory(engine)() as session:
            definition = session.get(JobDefinition, created["id"])
            assert definition is not None
            for tick in ("2024-01-01T00:00:00+00:00", "2024-01-01T01:00:00+00:00"):
                made = fire(session, definition, f"schedule:{tick}",
                            {"kind": "schedule", "tick": tick}, actor="scheduler",
                            reason="schedule")
                assert made is not None
            # The same key again fires nothing.
            assert fire(session, definition, "schedule:2024-01-01T01:00:00+00:00",
                        {"kind": "schedule", "tick": "x"}, actor="scheduler",
                        reason="again") is None
            session.commit()
    finally:
        engine.dispose()
    fires = api.get(f"/api/v1/definitions/{created['id']}/fires?limit=10",
                    headers=ALICE).json["fires"]
    assert [f["key"] for f in fires] == ["schedule:2024-01-01T01:00:00+00:00",
                                         "schedule:2024-01-01T00:00:00+00:00"]
    assert all(f["outcome"] == "started" for f in fires)
    run = api.get(f"/api/v1/runs/{fires[0]['run_id']}", headers=ALICE).json
    assert run["trigger"] == {"kind": "schedule", "tick": "2024-01-01T01:00:00+00:00"}
    assert run["definition_id"] == created["id"] and run["status"] == "QUEUED"
    by_hand = api.post("/api/v1/runs", headers=ALICE,
                       json={"definition_id": created["id"]}).json
    assert by_hand["trigger"] is None


def test_a_definition_whose_image_was_retired_fires_a_failed_run(
        api: FlaskClient, catalog: Settings) -> None:
    created = define(api, "old", image="team/retired:1", expect=422)
    assert "image" in {p["field"] for p in created["detail"]}
    ok = define(api, "old")
    engine = make_engine(catalog.db_url)
    try:
        with make_session_factory(engine)() as session:
            definition = session.get(JobDefinition, ok["id"])
            assert definition is not None
            definition.image = "team/retired:1"  # retired after the definition was saved
            run = run_from_definition(session, definition, trigger={"kind": "after",
                                      "run_id": 1, "definition_id": 1},
                                      actor="scheduler", reason="after run #1")
            session.commit()
            assert run.status == RunState.FAILED and "image" in run.reason
            assert run.finished_at is not None
            assert [e.to_status for e in run.events] == ["QUEUED", "FAILED"]
    finally:
        engine.dispose()


# -- backfills -----------------------------------------------------------------------------
def test_backfill_of_matching_partitions(api: FlaskClient, catalog: Settings,
                                         orders: list[str]) -> None:
    watcher = define(api, "watch", on_batch={"namespace": "sales", "table": "orders"})
    response = api.post(f"/api/v1/definitions/{watcher['id']}/backfills", headers=ALICE,
                        json={"partition": {"day": "2024-01-*"}, "max_parallel": 3})
    assert response.status_code == 201, response.json
    out = response.json
    assert out["items_total"] == 2 and out["started"] == 0 and out["active"] == 0
    assert out["finished_at"] is None and out["definition_id"] == watcher["id"]
    backfill = stored(catalog, Backfill, out["id"])
    assert backfill.max_parallel == 3 and backfill.owner == "alice"
    assert backfill.items == [
        {"namespace": "sales", "table": "orders", "partition": "day=2024-01-01",
         "batch_id": orders[0]},
        {"namespace": "sales", "table": "orders", "partition": "day=2024-01-02",
         "batch_id": orders[1]},
    ]
    listed = api.get(f"/api/v1/definitions/{watcher['id']}/backfills", headers=ALICE).json
    assert [b["id"] for b in listed["backfills"]] == [out["id"]]
    none = api.post(f"/api/v1/definitions/{watcher['id']}/backfills", headers=ALICE,
                    json={"partition": {"day": "2023-*"}})
    assert none.status_code == 422 and "partition" in problems(none)
    bad_key = api.post(f"/api/v1/definitions/{watcher['id']}/backfills", headers=ALICE,
                       json={"partition": {"region": "*"}})
    assert bad_key.status_code == 422 and "partition" in problems(bad_key)
    by_days = api.post(f"/api/v1/definitions/{watcher['id']}/backfills", headers=ALICE,
                       json={"from": "2024-01-01", "to": "2024-01-02"})
    assert by_days.status_code == 422 and "from" in problems(by_days)


def test_backfill_of_a_date_range(api: FlaskClient, catalog: Settings) -> None:
    daily = define(api, "daily", schedule={"cron": "0 6 * * *", "timezone": "Europe/Berlin"})
    response = api.post(f"/api/v1/definitions/{daily['id']}/backfills", headers=ALICE,
                        json={"from": "2024-01-01", "to": "2024-01-31"})
    assert response.status_code == 201, response.json
    assert response.json["items_total"] == 31
    items = stored(catalog, Backfill, response.json["id"]).items
    assert items[0] == {"tick": "2024-01-01T05:00:00+00:00"}
    assert items[-1] == {"tick": "2024-01-31T05:00:00+00:00"}
    weekdays = define(api, "weekdays", schedule={"cron": "0 6 * * MON-FRI"})
    week = api.post(f"/api/v1/definitions/{weekdays['id']}/backfills", headers=ALICE,
                    json={"from": "2024-01-01", "to": "2024-01-07"})
    assert week.json["items_total"] == 5  # no tick on the weekend
    backwards = api.post(f"/api/v1/definitions/{daily['id']}/backfills", headers=ALICE,
                         json={"from": "2024-02-01", "to": "2024-01-01"})
    assert backwards.status_code == 422 and "to" in problems(backwards)
    too_parallel = api.post(f"/api/v1/definitions/{daily['id']}/backfills", headers=ALICE,
                            json={"from": "2024-01-01", "to": "2024-01-02",
                                  "max_parallel": 50})
    assert too_parallel.status_code == 422 and "max_parallel" in problems(too_parallel)


def test_backfill_larger_than_the_limit_is_refused(catalog: Settings,
                                                   orders: list[str]) -> None:
    api = client_for(catalog.model_copy(update={"backfill_max_items": 2}))
    daily = define(api, "daily", schedule={"cron": "0 6 * * *"})
    days = api.post(f"/api/v1/definitions/{daily['id']}/backfills", headers=ALICE,
                    json={"from": "2024-01-01", "to": "2024-01-03"})
    assert days.status_code == 422
    assert "DOCKYARD_BACKFILL_MAX_ITEMS" in problems(days)["to"]
    watcher = define(api, "watch", on_batch={"namespace": "sales", "table": "orders"})
    every = api.post(f"/api/v1/definitions/{watcher['id']}/backfills", headers=ALICE,
                     json={"partition": {}})
    assert every.status_code == 422
    assert "DOCKYARD_BACKFILL_MAX_ITEMS" in problems(every)["partition"]
    two = api.post(f"/api/v1/definitions/{watcher['id']}/backfills", headers=ALICE,
                   json={"partition": {"day": "2024-01-0?"}})
    assert two.status_code == 201 and two.json["items_total"] == 2


# -- whose --------------------------------------------------------------------------------------
def test_another_users_definition_is_missing(api: FlaskClient) -> None:
    mine = define(api, "mine", schedule={"cron": "0 * * * *"})
    base = f"/api/v1/definitions/{mine['id']}"
    assert api.get(base, headers=BOB).status_code == 404
    assert api.post(f"{base}/pause", headers=BOB).status_code == 404
    assert api.post(f"{base}/resume", headers=BOB).status_code == 404
    assert api.get(f"{base}/fires", headers=BOB).status_code == 404
    assert api.get(f"{base}/backfills", headers=BOB).status_code == 404
    assert api.post(f"{base}/backfills", headers=BOB,
                    json={"from": "2024-01-01", "to": "2024-01-02"}).status_code == 404
    assert api.get(base, headers=ALICE).json["paused"] is False
    # An admin may act on it.
    assert api.post(f"{base}/pause", headers=ADMIN).json["paused"] is True


# -- notebook definitions -------------------------------------------------------------------
@pytest.fixture
def notebook_api(api: FlaskClient, catalog: Settings) -> FlaskClient:
    add_images(catalog.db_url, (NOTEBOOK_IMAGE, True, ImageStatus.READY))
    _set_contents(catalog.db_url, NOTEBOOK_IMAGE, {
        "kernels": {"python3": {"language": "python"}},
        "pip_packages": {"papermill": "2.7.0", "ipykernel": "7.4.0"}})
    return api


def test_runs_of_a_notebook_definition_run_its_snapshot(notebook_api: FlaskClient,
                                                        catalog: Settings) -> None:
    api = notebook_api
    response = api.post("/api/v1/definitions", headers=ALICE, content_type="multipart/form-data",
                        data={"name": "etl", "image": NOTEBOOK_IMAGE,
                              "parameters": json.dumps({"alpha": 3}),
                              "schedule": json.dumps({"cron": "0 6 * * *"}),
                              "notebook": (io.BytesIO(ETL), "etl.ipynb")})
    assert response.status_code == 201, response.json
    definition = response.json
    assert definition["kind"] == "notebook"
    assert definition["notebook"]["name"] == "etl.ipynb"
    assert definition["notebook"]["parameters"] == {"alpha": 3}
    sha = definition["notebook"]["sha256"]
    # By hand, with a parameter overridden.
    run = api.post("/api/v1/runs", headers=ALICE, json={"definition_id": definition["id"],
                                                       "parameters": {"beta": "x"}})
    assert run.status_code == 201, run.json
    assert run.json["kind"] == "notebook" and run.json["notebook"]["sha256"] == sha
    assert run.json["notebook"]["parameters"] == {"alpha": 3, "beta": "x"}
    assert run.json["command"] == definition["command"]
    snapshot = api.get(f"/api/v1/runs/{run.json['id']}/artifacts/input.ipynb", headers=ALICE)
    assert snapshot.status_code == 200 and snapshot.data == ETL
    # Fired by a trigger.
    engine = make_engine(catalog.db_url)
    try:
        with make_session_factory(engine)() as session:
            row = session.get(JobDefinition, definition["id"])
            assert row is not None
            fired = run_from_definition(session, row, trigger={"kind": "schedule",
                                        "tick": "2024-01-01T06:00:00+00:00"},
                                        actor="scheduler", reason="schedule")
            session.commit()
            fired_id = fired.id
    finally:
        engine.dispose()
    fired_out = api.get(f"/api/v1/runs/{fired_id}", headers=ALICE).json
    assert fired_out["kind"] == "notebook" and fired_out["notebook"]["sha256"] == sha
    assert fired_out["status"] == "QUEUED"
    assert fired_out["notebook"]["parameters"] == {"alpha": 3}
    # A command with a notebook definition's run is refused.
    refused = api.post("/api/v1/runs", headers=ALICE, json={"definition_id": definition["id"],
                                                           "command": "echo no"})
    assert refused.status_code == 422 and "command" in problems(refused)
    # Saved again without a notebook (JSON): the snapshot stays, the schedule changes.
    again = api.put(f"/api/v1/definitions/{definition['id']}", headers=ALICE, json={
        "name": "etl", "image": NOTEBOOK_IMAGE, "schedule": {"cron": "0 7 * * *"}})
    assert again.status_code == 200, again.json
    assert again.json["kind"] == "notebook" and again.json["notebook"]["sha256"] == sha
    assert again.json["schedule"]["cron"] == "0 7 * * *"
    # Turned into a command definition.
    command = api.put(f"/api/v1/definitions/{definition['id']}", headers=ALICE, json={
        "name": "etl", "image": SHELL_IMAGE, "command": "echo plain"})
    assert command.json["kind"] == "command" and command.json["notebook"] is None


def test_a_notebook_definition_is_checked_like_a_notebook_run(
        notebook_api: FlaskClient) -> None:
    api = notebook_api
    not_a_notebook = api.post("/api/v1/definitions", headers=ALICE,
                              content_type="multipart/form-data",
                              data={"name": "etl", "image": NOTEBOOK_IMAGE,
                                    "notebook": (io.BytesIO(b"not json"), "etl.ipynb")})
    assert not_a_notebook.status_code == 422
    assert "notebook" in problems(not_a_notebook)
    no_command = api.post("/api/v1/definitions", headers=ALICE, json={
        "name": "nothing", "image": SHELL_IMAGE})
    assert no_command.status_code == 422 and "command" in problems(no_command)
    stray = api.post("/api/v1/definitions", headers=ALICE, json={
        "name": "stray", "image": SHELL_IMAGE, "command": "true", "parameters": {"a": 1}})
    assert stray.status_code == 422 and "parameters" in problems(stray)


def test_runs_listed_with_their_trigger(api: FlaskClient, catalog: Settings) -> None:
    created = define(api, "t")
    engine = make_engine(catalog.db_url)
    try:
        with make_session_factory(engine)() as session:
            row = session.get(JobDefinition, created["id"])
            assert row is not None
            run_from_definition(session, row, trigger={"kind": "after", "run_id": 5,
                                                       "definition_id": 9},
                                actor="scheduler", reason="after")
            session.commit()
            assert session.scalar(select(Run.trigger).where(Run.definition_id == row.id)) == \
                {"kind": "after", "run_id": 5, "definition_id": 9}
    finally:
        engine.dispose()
    runs = api.get(f"/api/v1/runs?definition={created['id']}", headers=ALICE).json["runs"]
    assert [r["trigger"]["kind"] for r in runs] == ["after"]


@pytest.fixture
def postgres_api(tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FlaskClient, Settings]]:
    with fresh_database("dockyard_trig") as url:
        # Only then: the test server's URL is one of the variables.
        for var in [v for v in os.environ if v.startswith("DOCKYARD_")]:
            monkeypatch.delenv(var)
        on_postgres = Settings(home=tmp_path, database_url=url)
        upgrade(on_postgres.db_url)
        add_images(on_postgres.db_url, (SHELL_IMAGE, True, ImageStatus.READY))
        app = web_app(on_postgres)
        try:
            yield app.test_client(), on_postgres
        finally:
            app.extensions["dockyard.engine"].dispose()


@pytest.mark.postgres
def test_triggers_on_postgres(postgres_api: tuple[FlaskClient, Settings]) -> None:
    api, site = postgres_api
    a = define(api, "a", schedule={"cron": "0 6 * * *", "timezone": "America/New_York"})
    # 06:00 in New York is 10:00 or 11:00 UTC depending on the season.
    assert len(a["next_runs"]) == 5
    assert all(t[11:16] in ("10:00", "11:00") for t in a["next_runs"])
    b = define(api, "b", after={"definition_id": a["id"], "on": "failed"})
    cycle = replace(api, a, schedule={"cron": "0 6 * * *"}, after={"definition_id": b["id"]})
    assert "a → b → a" in problems(cycle)["after.definition_id"]
    paused = api.post(f"/api/v1/definitions/{a['id']}/pause", headers=ALICE).json
    assert paused["next_runs"] == []
    engine = make_engine(site.db_url)
    try:
        with make_session_factory(engine)() as session:
            row = session.get(JobDefinition, b["id"])
            assert row is not None
            first = fire(session, row, "after:1", {"kind": "after", "run_id": 1,
                                                   "definition_id": a["id"]},
                         actor="scheduler", reason="after")
            second = fire(session, row, "after:1", {"kind": "after", "run_id": 1,
                                                    "definition_id": a["id"]},
                          actor="scheduler", reason="after")
            session.commit()
            assert first is not None and second is None
    finally:
        engine.dispose()
    fires = api.get(f"/api/v1/definitions/{b['id']}/fires", headers=ALICE).json["fires"]
    assert [(f["key"], f["run_id"]) for f in fires] == [("after:1", first.id)]
    days = api.post(f"/api/v1/definitions/{a['id']}/backfills", headers=ALICE,
                    json={"from": "2024-03-09", "to": "2024-03-11", "max_parallel": 1})
    assert days.status_code == 201 and days.json["items_total"] == 3


def test_deleting_an_upstream_definition_ends_the_after_trigger(api: FlaskClient) -> None:
    upstream = define(api, "load")
    downstream = define(api, "report", after={"definition_id": upstream["id"]})
    assert api.delete(f"/api/v1/definitions/{upstream['id']}", headers=ALICE).status_code == 204
    after = api.get(f"/api/v1/definitions/{downstream['id']}", headers=ALICE).json
    assert after["after"] is None


# -- what a firing keeps ---------------------------------------------------------------------
BATCH_TRIGGER = {"kind": "batch", "namespace": "sales", "table": "orders",
                 "partition": "day=2024-01-01", "batch_id": "01BATCH"}


def test_a_retried_fired_run_keeps_what_fired_it(api: FlaskClient, catalog: Settings) -> None:
    from dockyard.jobs.triggers import trigger_env
    from dockyard.worker.lifecycle import build_spec

    created = define(api, "on-orders")
    engine = make_engine(catalog.db_url)
    try:
        with make_session_factory(engine)() as session:
            definition = session.get(JobDefinition, created["id"])
            assert definition is not None
            run = fire(session, definition, "batch:01BATCH", BATCH_TRIGGER,
                       actor="scheduler", reason="new batch")
            assert run is not None
            run.status = RunState.FAILED  # it ended, and someone retries it
            session.commit()
            run_id = run.id
    finally:
        engine.dispose()
    retried = api.post(f"/api/v1/runs/{run_id}/retry", headers=ALICE)
    assert retried.status_code == 201, retried.json
    assert retried.json["attempt"] == 2 and retried.json["trigger"] == BATCH_TRIGGER
    attempt = stored(catalog, Run, retried.json["id"])
    env = build_spec(attempt, token="t", dockyard_url="http://dockyard/").env
    assert env["DOCKYARD_TRIGGER_BATCH_ID"] == "01BATCH"
    assert trigger_env(BATCH_TRIGGER).items() <= env.items()


def test_a_firing_whose_run_cannot_be_made_leaves_no_fire(api: FlaskClient,
                                                          catalog: Settings) -> None:
    from dockyard.models import TriggerFire

    created = define(api, "ticks", schedule={"cron": "0 * * * *"})
    engine = make_engine(catalog.db_url)
    try:
        with make_session_factory(engine)() as session:
            definition = session.get(JobDefinition, created["id"])
            assert definition is not None
            key = "schedule:2024-01-01T00:00:00+00:00"
            # A trigger that cannot be stored: making the run fails after the key was taken.
            with pytest.raises(Exception):  # noqa: B017 (what matters is what is left)
                fire(session, definition, key, {"kind": "schedule", "tick": object()},
                     actor="scheduler", reason="schedule")
            session.commit()  # a caller that carries on and commits its other work
            assert session.scalars(select(TriggerFire)).all() == []
            assert session.scalars(select(Run)).all() == []
            # The key is still free: the tick fires once it can.
            again = fire(session, definition, key, {"kind": "schedule", "tick": "x"},
                         actor="scheduler", reason="schedule")
            session.commit()
            assert again is not None
    finally:
        engine.dispose()


def test_after_and_on_batch_answer_from_when_they_were_set(api: FlaskClient,
                                                           catalog: Settings,
                                                           orders: list[str]) -> None:
    plain = define(api, "plain")
    assert stored(catalog, JobDefinition, plain["id"]).triggers_since is None
    on_orders = {"namespace": "sales", "table": "orders", "partition": {"day": "2024-*"}}
    # Added by an edit: from the edit on, not from when the definition was made.
    assert replace(api, plain, on_batch=on_orders).status_code == 200
    since = stored(catalog, JobDefinition, plain["id"]).triggers_since
    assert since is not None
    assert since > stored(catalog, JobDefinition, plain["id"]).created_at
    # Saved again with the same triggers (a new schedule): unchanged.
    assert replace(api, plain, on_batch=on_orders,
                   schedule={"cron": "0 6 * * *"}).status_code == 200
    assert stored(catalog, JobDefinition, plain["id"]).triggers_since == since
    # A different pattern is a new trigger.
    changed = replace(api, plain, on_batch={**on_orders, "partition": {"day": "2025-*"}})
    assert changed.status_code == 200
    assert stored(catalog, JobDefinition, plain["id"]).triggers_since > since
    upstream = define(api, "load")
    follower = define(api, "report", after={"definition_id": upstream["id"]})
    assert stored(catalog, JobDefinition, follower["id"]).triggers_since is not None
    # Without either, there is nothing to answer.
    assert replace(api, plain).status_code == 200
    assert stored(catalog, JobDefinition, plain["id"]).triggers_since is None


def test_a_triggered_definition_needs_a_pool_its_owner_may_use(catalog: Settings) -> None:
    from dockyard.settings.job_pools import JobPoolConfig

    api = client_for(catalog.model_copy(update={"job_pools": {
        "team": JobPoolConfig(backend="local", users=["alice"])}}))
    # An admin may send runs there by hand, so a definition without triggers saves...
    define(api, "by-hand", headers=ADMIN, pool="team")
    # ...but triggers fire runs as the definition's owner, whom the pool does not list.
    refused = define(api, "nightly", headers=ADMIN, expect=422, pool="team",
                     schedule={"cron": "0 6 * * *"})
    assert "admin may not use pool 'team'" in {p["field"]: p["message"]
                                               for p in refused["detail"]}["pool"]
    # An admin editing alice's definition is checked as alice: she is listed.
    mine = define(api, "mine")
    edited = replace(api, mine, headers=ADMIN, pool="team", schedule={"cron": "0 6 * * *"})
    assert edited.status_code == 200, edited.json


def test_a_backfill_past_the_calendar_names_its_field(api: FlaskClient) -> None:
    daily = define(api, "daily", schedule={"cron": "0 6 * * *", "timezone": "Europe/Berlin"})
    url = f"/api/v1/definitions/{daily['id']}/backfills"
    first = api.post(url, headers=ALICE, json={"from": "0001-01-01", "to": "0001-01-03"})
    assert first.status_code == 422, first.json
    assert "from" in problems(first)
    last = api.post(url, headers=ALICE, json={"from": "9999-12-29", "to": "9999-12-31"})
    assert last.status_code == 422, last.json
    assert "to" in problems(last)
