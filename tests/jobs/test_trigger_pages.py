"""Triggers on the job pages as a browser session sees them (cookie session, CSRF token in
forms): the definition form makes each kind of trigger and a notebook definition, its
problems shown beside its fields; the definition page tells the triggers in words, the
next fire times in the schedule's zone and UTC, pauses and resumes, starts a backfill and
shows its progress; the run page says what fired a run. No worker: a run's trigger is put
in the database as the worker would record it."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from flask.testing import FlaskClient

from dockyard.settings import Settings
from tests.conftest import auth, web_app
from tests.data.test_api import store
from tests.jobs.conftest import SHELL_IMAGE
from tests.jobs.test_jobs_api import set_run
from tests.jobs.test_jobs_pages import browser
from tests.jobs.test_notebook_pages import ETL, NOTEBOOK_IMAGE, add_notebook_image, error_of

ALICE = auth("tok-alice")


@pytest.fixture
def pages(catalog: Settings) -> FlaskClient:
    add_notebook_image(catalog.db_url)
    return web_app(catalog).test_client()


def definition_form(csrf: str, **fields: str) -> dict[str, Any]:
    return {"csrf_token": csrf, "image": SHELL_IMAGE, "command": "echo hi", "cpu": "1",
            "memory_mb": "256", "gpu": "0", "max_retries": "0", **fields}


def create(client: FlaskClient, csrf: str, **fields: str) -> int:
    response = client.post("/jobs/definitions/new", data=definition_form(csrf, **fields))
    assert response.status_code == 303, response.data.decode()[:3000]
    return int(response.headers["Location"].rsplit("/", 1)[1])


def api_definition(client: FlaskClient, definition_id: int) -> dict[str, Any]:
    response = client.get(f"/api/v1/definitions/{definition_id}", headers=ALICE)
    assert response.status_code == 200, response.json
    return response.json


def text_of(html: str) -> str:
    """The page's words, tags dropped and spaces collapsed, for sentences across tags."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def orders_table(client: FlaskClient, *days: str) -> None:
    """alice's sales/orders, partitioned by date, with one committed batch per day."""
    created = client.put("/api/v1/tables/sales/orders", json={"partition_keys": ["date"]},
                         headers=ALICE)
    assert created.status_code in (200, 201), created.json
    for day in days:
        store(client, "tok-alice", partition={"date": day})


def test_the_form_makes_a_schedule_and_the_page_shows_its_next_fires(
    pages: FlaskClient,
) -> None:
    csrf = browser(pages)
    form = pages.get("/jobs/definitions/new").data.decode()
    assert 'id="cron"' in form and 'list="timezones"' in form
    assert '<option value="Europe/Berlin">' in form and '<option value="Pacific/Auckland">' in form
    definition_id = create(pages, csrf, name="weekday-report", cron="0 6 * * MON-FRI",
                           timezone="Europe/Berlin", concurrency="forbid", missed="run_once")
    saved = api_definition(pages, definition_id)
    assert saved["schedule"] == {"cron": "0 6 * * MON-FRI", "timezone": "Europe/Berlin",
                                 "concurrency": "forbid", "missed": "run_once"}
    assert saved["paused"] is False and len(saved["next_runs"]) == 5

    page = pages.get(f"/jobs/definitions/{definition_id}").data.decode()
    assert "every weekday at 06:00 Europe/Berlin" in text_of(page)
    table = page.split('id="next-fires"')[1].split("</table>")[0]
    rows = re.findall(r"<tr><td>([^<]+)</td><td><time datetime=\"([^\"]+)\">", table)
    assert len(rows) == 5
    for local, utc in rows:
        # 06:00 on Berlin's clocks is 05:00 UTC in winter and 04:00 in summer.
        assert re.fullmatch(r"\d{4}-\d\d-\d\d 06:00:00 CES?T", local), local
        assert utc[11:16] in ("05:00", "04:00"), utc
    assert [utc for _, utc in rows] == [
        when.replace("Z", "+00:00") for when in saved["next_runs"]]
    assert f'href="/lineage?definition_id={definition_id}"' in page

    edit = pages.get(f"/jobs/definitions/{definition_id}/edit").data.decode()
    assert 'value="0 6 * * MON-FRI"' in edit and 'value="Europe/Berlin"' in edit
    assert '<option value="forbid" selected>' in edit
    assert '<option value="run_once" selected>' in edit


def test_the_form_makes_after_and_on_batch_triggers(pages: FlaskClient) -> None:
    csrf = browser(pages)
    orders_table(pages)
    upstream = create(pages, csrf, name="extract")
    form = pages.get("/jobs/definitions/new").data.decode()
    assert f'<option value="{upstream}" >#{upstream} extract</option>' in form
    after = create(pages, csrf, name="load", after_definition_id=str(upstream),
                   after_on="failed")
    assert api_definition(pages, after)["after"] == {"definition_id": upstream, "on": "failed"}
    assert f"after #{upstream} extract fails" in text_of(
        pages.get(f"/jobs/definitions/{after}").data.decode())

    on_batch = create(pages, csrf, name="refresh", on_batch_namespace="sales",
                      on_batch_table="orders", on_batch_partition="date=2024-*\n")
    assert api_definition(pages, on_batch)["on_batch"] == {
        "namespace": "sales", "table": "orders", "partition": {"date": "2024-*"}}
    page = pages.get(f"/jobs/definitions/{on_batch}").data.decode()
    assert "on each new batch of sales/orders where date matches 2024-*" in text_of(page)
    assert 'id="next-fires"' not in page and 'id="pause-definition"' in page
    listing = pages.get("/jobs/definitions").data.decode()
    cell = listing.split(f'data-triggers="{on_batch}">')[1].split("</td>")[0]
    assert "on each new batch of sales/orders where date matches 2024-*" in cell
    cell = listing.split(f'data-triggers="{upstream}">')[1].split("</td>")[0]
    assert "by hand" in cell
    edit = pages.get(f"/jobs/definitions/{on_batch}/edit").data.decode()
    assert 'id="on_batch_partition"' in edit and ">date=2024-*</textarea>" in edit


def test_problems_are_shown_beside_the_trigger_fields(pages: FlaskClient) -> None:
    csrf = browser(pages)
    bad_cron = pages.post("/jobs/definitions/new",
                          data=definition_form(csrf, name="bad", cron="61 * * * *"))
    assert bad_cron.status_code == 422
    html = bad_cron.data.decode()
    assert error_of(html, "cron") and 'value="61 * * * *"' in html
    bad_zone = pages.post("/jobs/definitions/new", data=definition_form(
        csrf, name="bad", cron="0 6 * * *", timezone="Mars/Olympus"))
    assert bad_zone.status_code == 422 and error_of(bad_zone.data.decode(), "timezone")
    no_table = pages.post("/jobs/definitions/new", data=definition_form(
        csrf, name="bad", on_batch_namespace="sales", on_batch_table="nowhere"))
    assert no_table.status_code == 422 and error_of(no_table.data.decode(), "on_batch_table")
    bad_lines = pages.post("/jobs/definitions/new", data=definition_form(
        csrf, name="bad", on_batch_namespace="sales", on_batch_table="orders",
        on_batch_partition="no pattern here"))
    assert bad_lines.status_code == 422
    assert "key=pattern" in error_of(bad_lines.data.decode(), "on_batch_partition")

    # A chain that comes back to where it starts is refused, and says so.
    first = create(pages, csrf, name="first")
    second = create(pages, csrf, name="second", after_definition_id=str(first))
    cycle = pages.post(f"/jobs/definitions/{first}/edit", data=definition_form(
        csrf, name="first", after_definition_id=str(second)))
    assert cycle.status_code == 422
    assert error_of(cycle.data.decode(), "after_definition_id")
    assert api_definition(pages, first)["after"] is None
    assert len(pages.get("/api/v1/definitions", headers=ALICE).json["definitions"]) == 2


def test_a_notebook_definition_from_an_upload_keeps_its_snapshot(pages: FlaskClient) -> None:
    csrf = browser(pages)
    form = pages.get("/jobs/definitions/new?kind=notebook").data.decode()
    assert 'enctype="multipart/form-data"' in form
    assert 'action="/jobs/definitions/new?kind=notebook"' in form
    assert 'type="file" id="notebook" name="notebook"' in form and 'id="command"' not in form
    fields = {"csrf_token": csrf, "name": "etl", "image": NOTEBOOK_IMAGE, "cpu": "1",
              "memory_mb": "256", "gpu": "0", "max_retries": "0",
              "parameters": "alpha=0.5\nname=x", "cron": "0 2 * * *"}
    created = pages.post("/jobs/definitions/new?kind=notebook",
                         data={**fields, "notebook": (io.BytesIO(ETL), "etl.ipynb")},
                         content_type="multipart/form-data")
    assert created.status_code == 303, created.data.decode()[:3000]
    definition_id = int(created.headers["Location"].rsplit("/", 1)[1])
    saved = api_definition(pages, definition_id)
    assert saved["kind"] == "notebook" and saved["schedule"]["cron"] == "0 2 * * *"
    assert saved["notebook"]["name"] == "etl.ipynb"
    assert saved["notebook"]["parameters"] == {"alpha": 0.5, "name": "x"}
    page = pages.get(f"/jobs/definitions/{definition_id}").data.decode()
    assert 'id="definition-notebook"' in page and "alpha=0.5" in page

    edit = pages.get(f"/jobs/definitions/{definition_id}/edit").data.decode()
    assert 'id="kept-notebook"' in edit and 'id="kind-notebook"' in edit
    # Saved again without a file: the definition keeps the notebook it has.
    again = pages.post(f"/jobs/definitions/{definition_id}/edit?kind=notebook",
                       data={**fields, "parameters": "alpha=2"},
                       content_type="multipart/form-data")
    assert again.status_code == 303, again.data.decode()[:3000]
    kept = api_definition(pages, definition_id)
    assert kept["kind"] == "notebook" and kept["notebook"]["name"] == "etl.ipynb"
    assert kept["notebook"]["parameters"] == {"alpha": 2}

    # Launched by hand from the Launch form: the definition's snapshot, with this run's
    # parameters over the definition's.
    launch = pages.get(f"/jobs/new?definition={definition_id}").data.decode()
    assert 'id="definition-notebook-note"' in launch and 'id="command"' not in launch
    assert ">alpha=2</textarea>" in launch
    launched = pages.post("/jobs/new", data={
        "csrf_token": csrf, "definition_id": str(definition_id), "image": NOTEBOOK_IMAGE,
        "cpu": "1", "memory_mb": "256", "gpu": "0", "max_retries": "0",
        "parameters": "alpha=3\nname=y"})
    assert launched.status_code == 303, launched.data.decode()[:3000]
    run = pages.get(f"/api/v1/runs/{launched.headers['Location'].rsplit('/', 1)[1]}",
                    headers=ALICE).json
    assert run["kind"] == "notebook" and run["definition_id"] == definition_id
    assert run["notebook"]["parameters"] == {"alpha": 3, "name": "y"}

    missing = pages.post("/jobs/definitions/new?kind=notebook", data={**fields, "name": "x"},
                         content_type="multipart/form-data")
    assert missing.status_code == 422 and error_of(missing.data.decode(), "notebook")


def test_pause_and_resume_from_the_definition_page(pages: FlaskClient) -> None:
    csrf = browser(pages)
    definition_id = create(pages, csrf, name="hourly", cron="0 * * * *")
    page = pages.get(f"/jobs/definitions/{definition_id}").data.decode()
    assert 'id="pause-definition"' in page and 'id="next-fires"' in page
    assert pages.post(f"/jobs/definitions/{definition_id}/pause").status_code == 400  # no CSRF

    paused = pages.post(f"/jobs/definitions/{definition_id}/pause", data={"csrf_token": csrf})
    assert paused.status_code == 303
    assert api_definition(pages, definition_id)["paused"] is True
    assert api_definition(pages, definition_id)["next_runs"] == []
    page = pages.get(f"/jobs/definitions/{definition_id}").data.decode()
    assert 'id="definition-paused"' in page and 'id="resume-definition"' in page
    assert 'id="next-fires-paused"' in page and 'id="next-fires"' not in page

    resumed = pages.post(f"/jobs/definitions/{definition_id}/resume", data={"csrf_token": csrf})
    assert resumed.status_code == 303
    assert api_definition(pages, definition_id)["paused"] is False
    page = pages.get(f"/jobs/definitions/{definition_id}").data.decode()
    assert 'id="pause-definition"' in page and 'id="next-fires"' in page


def test_the_backfill_form_starts_one_run_per_partition_and_shows_progress(
    pages: FlaskClient,
) -> None:
    csrf = browser(pages)
    orders_table(pages, "2024-01-01", "2024-01-02", "2023-12-31")
    definition_id = create(pages, csrf, name="refresh", on_batch_namespace="sales",
                           on_batch_table="orders")
    page = pages.get(f"/jobs/definitions/{definition_id}").data.decode()
    assert 'id="backfill-form"' in page and 'id="backfill-list"' not in page

    too_many = pages.post(f"/jobs/definitions/{definition_id}/backfills", data={
        "csrf_token": csrf, "partition": "date=2024-01-*", "max_parallel": "50"})
    assert too_many.status_code == 422
    assert error_of(too_many.data.decode(), "max_parallel")
    assert 'value="50"' in too_many.data.decode()

    started = pages.post(f"/jobs/definitions/{definition_id}/backfills", data={
        "csrf_token": csrf, "partition": "date=2024-01-*", "max_parallel": "1"})
    assert started.status_code == 303, started.data.decode()[:3000]
    backfills = pages.get(f"/api/v1/definitions/{definition_id}/backfills",
                          headers=ALICE).json["backfills"]
    assert [(b["items_total"], b["finished_at"]) for b in backfills] == [(2, None)]
    page = pages.get(f"/jobs/definitions/{definition_id}").data.decode()
    row = page.split(f'data-backfill-id="{backfills[0]["id"]}"')[1].split("</tr>")[0]
    assert "of 2 started" in text_of(row) and "at most 1" in text_of(row)
    assert "Backfill #" in page  # the flash message

    # Days are for scheduled definitions: this one has none.
    days = pages.post(f"/jobs/definitions/{definition_id}/backfills", data={
        "csrf_token": csrf, "from": "2024-01-01", "to": "2024-01-03"})
    assert days.status_code == 422 and 'class="invalid-feedback' in days.data.decode()


def test_the_run_page_says_what_fired_the_run(pages: FlaskClient, catalog: Settings) -> None:
    csrf = browser(pages)
    orders_table(pages)
    definition_id = create(pages, csrf, name="berlin", cron="0 6 * * *",
                           timezone="Europe/Berlin")

    def fired(trigger: dict[str, Any]) -> str:
        launched = pages.post("/jobs/new", data={**definition_form(csrf),
                                                 "definition_id": str(definition_id)})
        assert launched.status_code == 303, launched.data.decode()[:2000]
        run_id = int(launched.headers["Location"].rsplit("/", 1)[1])
        set_run(catalog, run_id, trigger=trigger)
        page = pages.get(f"/jobs/runs/{run_id}").data.decode()
        assert page.count('id="run-fired-by"') == 1
        return page.split('id="run-fired-by"')[1].split("</dd>")[0]

    tick = fired({"kind": "schedule", "tick": "2024-01-15T05:00:00+00:00"})
    assert 'data-trigger="schedule"' in tick
    assert "2024-01-15 05:00:00 UTC" in text_of(tick)
    assert "2024-01-15 06:00:00 CET" in text_of(tick) and "Europe/Berlin" in tick

    after = fired({"kind": "after", "run_id": 1, "definition_id": definition_id})
    assert 'href="/jobs/runs/1" data-link="upstream">#1</a>' in after
    assert f'href="/jobs/definitions/{definition_id}"' in after

    batch = fired({"kind": "batch", "namespace": "sales", "table": "orders",
                   "partition": "date=2024-01-01", "batch_id": "01HXBATCH"})
    assert 'href="/data/sales/orders" data-link="table"' in batch
    assert 'href="/data/sales/orders/partition?p=date%3D2024-01-01"' in batch
    assert "01HXBATCH" in batch

    backfill = fired({"kind": "backfill", "backfill_id": 3,
                      "item": {"tick": "2024-07-01T04:00:00+00:00"}})
    assert "backfill #3" in text_of(backfill)
    assert "2024-07-01 06:00:00 CEST" in text_of(backfill)

    # A run started by hand says nothing of triggers.
    launched = pages.post("/jobs/new", data=definition_form(csrf))
    by_hand = pages.get(launched.headers["Location"]).data.decode()
    assert 'id="run-fired-by"' not in by_hand
