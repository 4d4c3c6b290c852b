"""The job pages as a browser session sees them (cookie session, CSRF token in forms):
launch with field errors, the run page and its live parts, lists, definitions."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from flask.testing import FlaskClient

from dockyard.jobs.run_logs import log_path
from dockyard.models import RunState, utcnow
from dockyard.settings import Settings
from tests.jobs.conftest import SHELL_IMAGE
from tests.jobs.test_jobs_api import set_run

CSRF = re.compile(r'name="csrf-token" content="([^"]+)"')


def browser(client: FlaskClient, token: str = "tok-alice") -> str:
    """Log the test client in with a session cookie; return the page's CSRF token."""
    with client.session_transaction() as session:
        session["token"] = token
    page = client.get("/jobs/")
    assert page.status_code == 200
    match = CSRF.search(page.data.decode())
    assert match
    return match.group(1)


@pytest.fixture
def pages(client: FlaskClient, catalog: Settings) -> FlaskClient:
    return client


def launch(client: FlaskClient, csrf: str, **fields: str) -> object:
    form = {"csrf_token": csrf, "image": SHELL_IMAGE, "command": "echo hi", "cpu": "1",
            "memory_mb": "256", "gpu": "0", "max_retries": "0", **fields}
    return client.post("/jobs/new", data=form)


def test_launch_form_lists_usable_images_only(pages: FlaskClient) -> None:
    browser(pages)
    html = pages.get("/jobs/new").data.decode()
    assert f'value="{SHELL_IMAGE}"' in html
    assert "team/retired:1" not in html and "team/notebooks-only:1" not in html
    assert 'name="csrf_token"' in html


def test_launch_needs_the_csrf_token(pages: FlaskClient) -> None:
    browser(pages)
    refused = pages.post("/jobs/new", data={"image": SHELL_IMAGE, "command": "echo hi"})
    assert refused.status_code == 400
    assert pages.get("/api/v1/runs", headers={"Authorization": "token tok-alice"}) \
        .json["runs"] == []


def test_launch_goes_to_the_run_page(pages: FlaskClient) -> None:
    csrf = browser(pages)
    response = launch(pages, csrf, command='["printf", "%s\\n", "a b"]', env="A=1\nB=x=y",
                      tags="nightly, team-a", timeout_seconds="60")
    assert response.status_code == 303
    run_url = response.headers["Location"]
    run_id = int(run_url.rstrip("/").rsplit("/", 1)[1])
    run = pages.get(f"/api/v1/runs/{run_id}").json
    assert run["command"] == ["printf", "%s\n", "a b"]
    assert run["env"] == {"A": "1", "B": "x=y"} and run["tags"] == ["nightly", "team-a"]
    assert run["timeout_seconds"] == 60 and run["memory_mb"] == 256
    page = pages.get(run_url).data.decode()
    assert f"Run #{run_id}" in page and 'data-status="QUEUED"' in page
    assert 'id="cancel-run"' in page and 'hx-trigger="every 2s"' in page
    assert f"/jobs/runs/{run_id}/log-tail?offset=0" in page


def test_field_errors_are_shown_beside_the_fields(pages: FlaskClient) -> None:
    csrf = browser(pages)
    response = launch(pages, csrf, image="nowhere/unknown:1", cpu="-2", env="NOEQUALS",
                      command="")
    assert response.status_code == 422
    html = response.data.decode()
    assert 'id="error-env"' in html and "write NAME=value" in html
    # After the form parses, the model's and the service's problems are shown too.
    response = launch(pages, csrf, image="nowhere/unknown:1", cpu="-2", memory_mb="lots",
                      command="")
    html = response.data.decode()
    assert response.status_code == 422
    for field in ("cpu", "memory_mb"):
        assert f'id="error-{field}"' in html, field
    assert 'class="form-control is-invalid" id="cpu"' in html
    assert 'value="-2"' in html  # what was typed is kept
    response = launch(pages, csrf, image="nowhere/unknown:1")
    assert "not in Dockyard&#39;s catalog" in response.data.decode()
    response = launch(pages, csrf, cpu="999")
    assert 'id="error-cpu"' in response.data.decode() and "at most 8 CPUs" in response.data.decode()
    assert pages.get("/api/v1/runs").json["runs"] == []


def test_cancel_and_retry_from_the_run_page(pages: FlaskClient, catalog: Settings) -> None:
    csrf = browser(pages)
    run_id = int(launch(pages, csrf).headers["Location"].rsplit("/", 1)[1])
    assert pages.post(f"/jobs/runs/{run_id}/cancel").status_code == 400  # no CSRF token
    cancelled = pages.post(f"/jobs/runs/{run_id}/cancel", data={"csrf_token": csrf},
                           follow_redirects=True)
    assert "Cancel requested" in cancelled.data.decode()
    assert pages.get(f"/api/v1/runs/{run_id}").json["cancel_requested"] is True
    set_run(catalog, run_id, status=RunState.CANCELLED, exit_code=143, reason="cancelled")
    again = pages.post(f"/jobs/runs/{run_id}/cancel", data={"csrf_token": csrf},
                       follow_redirects=True)
    assert "already ended (CANCELLED)" in again.data.decode()
    page = pages.get(f"/jobs/runs/{run_id}").data.decode()
    assert 'id="retry-run"' in page and 'hx-trigger="every 2s"' not in page
    retried = pages.post(f"/jobs/runs/{run_id}/retry", data={"csrf_token": csrf})
    assert retried.status_code == 303
    new_page = pages.get(retried.headers["Location"]).data.decode()
    assert "attempt 2" in new_page and 'id="run-attempts"' in new_page


def test_clone_fills_the_form(pages: FlaskClient) -> None:
    csrf = browser(pages)
    run_id = int(launch(pages, csrf, command="echo cloned", env="K=v").headers["Location"]
                 .rsplit("/", 1)[1])
    html = pages.get(f"/jobs/new?clone={run_id}").data.decode()
    assert "echo cloned</textarea>" in html and "K=v</textarea>" in html


def test_log_tail_appends_escaped_text_and_stops_when_done(pages: FlaskClient,
                                                           catalog: Settings) -> None:
    csrf = browser(pages)
    run_id = int(launch(pages, csrf).headers["Location"].rsplit("/", 1)[1])
    path = log_path(catalog, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("<script>alert(1)</script>\n")
    tail = pages.get(f"/jobs/runs/{run_id}/log-tail?offset=0").data.decode()
    assert 'hx-swap-oob="beforeend:#run-log"' in tail
    assert "&lt;script&gt;" in tail and "<script>" not in tail
    next_offset = path.stat().st_size
    assert f"offset={next_offset}" in tail and "data-complete" not in tail
    set_run(catalog, run_id, status=RunState.SUCCEEDED, exit_code=0)
    done = pages.get(f"/jobs/runs/{run_id}/log-tail?offset={next_offset}").data.decode()
    assert 'data-complete="true"' in done and "hx-get" not in done
    download = pages.get(f"/jobs/runs/{run_id}/log.txt")
    assert download.data.decode() == "<script>alert(1)</script>\n"


def test_runs_list_filters_pages_and_refreshes_live_rows(pages: FlaskClient,
                                                          catalog: Settings) -> None:
    csrf = browser(pages)
    ids = [int(launch(pages, csrf, tags=f"t{i}").headers["Location"].rsplit("/", 1)[1])
           for i in range(3)]
    html = pages.get("/jobs/").data.decode()
    assert all(f'data-run-id="{i}"' in html for i in ids)
    assert 'hx-trigger="every 5s"' in html  # queued runs on the page: it refreshes itself
    assert 'id="f-owner"' not in html  # only admins filter by owner
    only = pages.get("/jobs/?tag=t1").data.decode()
    assert f'data-run-id="{ids[1]}"' in only and f'data-run-id="{ids[0]}"' not in only
    for run_id in ids:
        set_run(catalog, run_id, status=RunState.SUCCEEDED, started_at=utcnow(),
                finished_at=utcnow() + timedelta(seconds=1))
    settled = pages.get("/jobs/?status=SUCCEEDED&sort=-finished").data.decode()
    assert 'hx-trigger="every 5s"' not in settled and settled.count("data-run-id=") == 3
    bad = pages.get("/jobs/?status=NOPE&since=notadate&cursor=zzz").data.decode()
    assert "unknown status" in bad and "not a date" in bad and "first page" in bad
    browser(pages, "tok-admin")
    assert 'id="f-owner"' in pages.get("/jobs/").data.decode()


def test_runs_list_pages_with_a_next_link(pages: FlaskClient, catalog: Settings) -> None:
    from dockyard.web import jobs as job_pages

    csrf = browser(pages)
    for _ in range(3):
        launch(pages, csrf)
    original = job_pages.PAGE_SIZE
    job_pages.PAGE_SIZE = 2
    try:
        first = pages.get("/jobs/?status=QUEUED").data.decode()
        assert first.count("data-run-id=") == 2
        next_url = re.search(r'id="next-page" href="([^"]+)"', first).group(1)  # type: ignore[union-attr]
        second = pages.get(next_url.replace("&amp;", "&")).data.decode()
        assert second.count("data-run-id=") == 1 and "First page" in second
    finally:
        job_pages.PAGE_SIZE = original


def test_definition_pages_with_history_chart(pages: FlaskClient, catalog: Settings) -> None:
    csrf = browser(pages)
    form = {"csrf_token": csrf, "name": "nightly-etl", "description": "Loads the day",
            "image": SHELL_IMAGE, "command": "echo etl", "cpu": "1", "memory_mb": "256",
            "gpu": "0", "max_retries": "1"}
    created = pages.post("/jobs/definitions/new", data=form)
    assert created.status_code == 303
    definition_id = int(created.headers["Location"].rsplit("/", 1)[1])
    duplicate = pages.post("/jobs/definitions/new", data=form)
    assert duplicate.status_code == 422 and "already have a definition" in duplicate.data.decode()
    bad = pages.post("/jobs/definitions/new", data={**form, "name": "has spaces"})
    assert bad.status_code == 422 and 'id="error-name"' in bad.data.decode()

    prefilled = pages.get(f"/jobs/new?definition={definition_id}").data.decode()
    assert "echo etl</textarea>" in prefilled
    runs = []
    for seconds, status in ((4, RunState.SUCCEEDED), (8, RunState.FAILED)):
        response = pages.post("/jobs/new", data={
            "csrf_token": csrf, "definition_id": str(definition_id), "image": SHELL_IMAGE,
            "command": "echo etl", "cpu": "1", "memory_mb": "256", "gpu": "0",
            "max_retries": "1"})
        run_id = int(response.headers["Location"].rsplit("/", 1)[1])
        now = utcnow()
        set_run(catalog, run_id, status=status, started_at=now,
                finished_at=now + timedelta(seconds=seconds))
        runs.append(run_id)
    page = pages.get(f"/jobs/definitions/{definition_id}").data.decode()
    assert 'id="definition-chart"' in page
    assert page.count('<rect class="dy-bar') == 2
    assert "dy-bar-succeeded" in page and "dy-bar-failed" in page
    assert "style=" not in page.split('id="definition-chart"')[1].split("</svg>")[0]
    assert all(f"/jobs/runs/{r}" in page for r in runs)

    edited = pages.post(f"/jobs/definitions/{definition_id}/edit",
                        data={**form, "command": "echo changed"})
    assert edited.status_code == 303
    assert "echo changed" in pages.get(f"/jobs/definitions/{definition_id}").data.decode()
    listing = pages.get("/jobs/definitions").data.decode()
    assert "nightly-etl" in listing
    deleted = pages.post(f"/jobs/definitions/{definition_id}/delete", data={"csrf_token": csrf})
    assert deleted.status_code == 303
    assert pages.get(f"/jobs/definitions/{definition_id}").status_code == 404
    assert pages.get(f"/jobs/runs/{runs[0]}").status_code == 200  # runs are kept
