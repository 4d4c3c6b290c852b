"""The notebook parts of the job pages as a browser session sees them (cookie session,
CSRF token in forms): the launch form's Notebook kind with its field errors, a notebook
run's page (parameters, files, the executed notebook's frame and its headers), the runs
list's badge and kind filter. No worker: the executed notebook is put in the run's
artifact store as its job would send it."""

from __future__ import annotations

import io
import re
from typing import Any

import nbformat
import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from dockyard.db import make_engine, make_session_factory
from dockyard.jobs.artifacts import ArtifactStore
from dockyard.jobs.notebooks import NOTEBOOK_COMMAND
from dockyard.models import Image, ImageStatus, RunState
from dockyard.settings import Settings
from dockyard.web.security import CONTENT_SECURITY_POLICY
from tests.conftest import web_app
from tests.jobs.conftest import SHELL_IMAGE, RunsDb, add_images
from tests.jobs.test_jobs_api import set_run
from tests.jobs.test_jobs_pages import browser, launch

NOTEBOOK_IMAGE = "team/notebooks:1"
FRAME_POLICY = ("sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                "frame-ancestors 'self'")


def notebook(*sources: str, outputs: list[Any] | None = None) -> bytes:
    """A Python notebook whose first cell is tagged ``parameters``; ``outputs`` go to its
    last cell, as if it had run."""
    node = nbformat.v4.new_notebook()
    node.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                   "language": "python"}
    for source in sources:
        node.cells.append(nbformat.v4.new_code_cell(source))
    node.cells[0].metadata["tags"] = ["parameters"]
    if outputs:
        node.cells[-1].outputs = outputs
        node.cells[-1].execution_count = len(sources)
    return nbformat.writes(node).encode()


ETL = notebook("alpha = 1\nname = 'x'", "print(alpha * 2, name)")


def add_notebook_image(db_url: str) -> None:
    """An inspected catalog image that can run Python notebooks."""
    add_images(db_url, (NOTEBOOK_IMAGE, True, ImageStatus.READY))
    engine = make_engine(db_url)
    try:
        with make_session_factory(engine)() as session:
            image = session.scalar(select(Image).where(Image.reference == NOTEBOOK_IMAGE))
            assert image is not None
            image.contents = {"kernels": {"python3": {"language": "python"}},
                              "pip_packages": {"papermill": "2.7.0", "ipykernel": "7.4.0"}}
            session.commit()
    finally:
        engine.dispose()


@pytest.fixture
def limited(catalog: Settings) -> Settings:
    """The catalog's installation with a notebook image and a 1 MB notebook limit, so that
    the size tests send a few MB rather than tens."""
    add_notebook_image(catalog.db_url)
    return catalog.model_copy(update={"notebook_job_max_mb": 1})


@pytest.fixture
def pages(limited: Settings) -> FlaskClient:
    return web_app(limited).test_client()


@pytest.fixture
def runs_db(limited: Settings) -> Any:
    db = RunsDb(limited.db_url)
    yield db
    db.close()


def launch_notebook(client: FlaskClient, csrf: str, content: bytes | None = ETL,
                    name: str = "etl.ipynb", **fields: str) -> Any:
    form: dict[str, Any] = {"csrf_token": csrf, "image": NOTEBOOK_IMAGE, "cpu": "1",
                            "memory_mb": "256", "gpu": "0", "max_retries": "0", **fields}
    if content is not None:
        form["notebook"] = (io.BytesIO(content), name)
    return client.post("/jobs/new?kind=notebook", data=form, content_type="multipart/form-data")


def run_id_of(response: Any) -> int:
    assert response.status_code == 303, response.data.decode()[:2000]
    return int(response.headers["Location"].rsplit("/", 1)[1])


def queued(client: FlaskClient) -> list[dict[str, Any]]:
    return client.get("/api/v1/runs").json["runs"]


def error_of(html: str, field: str) -> str:
    match = re.search(rf'id="error-{field}">([^<]*)<', html)
    assert match, f"no error shown for {field}"
    return match.group(1)


# -- the launch form ---------------------------------------------------------------------------
def test_the_launch_form_switches_between_command_and_notebook(pages: FlaskClient) -> None:
    browser(pages)
    command = pages.get("/jobs/new").data.decode()
    assert 'id="kind-command" href="/jobs/new"' in command
    assert 'href="/jobs/new?kind=notebook"' in command
    assert 'id="command"' in command and 'type="file"' not in command
    form = pages.get("/jobs/new?kind=notebook").data.decode()
    assert 'enctype="multipart/form-data"' in form and 'action="/jobs/new?kind=notebook"' in form
    assert 'type="file" id="notebook" name="notebook"' in form
    assert 'id="notebook_path"' in form and 'id="parameters"' in form
    assert 'id="command"' not in form and 'id="definition_id"' not in form
    assert f'value="{NOTEBOOK_IMAGE}"' in form and "At most 1 MB" in form
    assert 'name="csrf_token"' in form


def test_an_upload_queues_a_notebook_run_with_its_parameters(pages: FlaskClient) -> None:
    csrf = browser(pages)
    run_id = run_id_of(launch_notebook(
        pages, csrf, parameters="alpha=0.5\n# a comment\n\nname = some text\nflag=true\nn=3",
        tags="nightly", timeout_seconds="600"))
    run = pages.get(f"/api/v1/runs/{run_id}").json
    assert run["kind"] == "notebook" and run["status"] == "QUEUED"
    assert run["command"] == NOTEBOOK_COMMAND
    assert run["notebook"]["name"] == "etl.ipynb" and run["notebook"]["source"] == "upload"
    assert run["notebook"]["parameters"] == {"alpha": 0.5, "name": "some text", "flag": True,
                                             "n": 3}
    assert run["tags"] == ["nightly"] and run["timeout_seconds"] == 600
    assert run["image"] == NOTEBOOK_IMAGE

    page = pages.get(f"/jobs/runs/{run_id}").data.decode()
    assert 'id="run-kind"' in page and 'id="run-notebook"' in page
    for name, value in (("alpha", "0.5"), ("name", "some text"), ("flag", "true"), ("n", "3")):
        assert f"<code>{name}</code></th><td><code>{value}</code>" in page, name
    # Queued: no executed notebook yet, a sentence instead of the frame, and the part
    # polls until there is one.
    assert 'id="notebook-pending"' in page and "<iframe" not in page
    assert f'hx-get="/jobs/runs/{run_id}/notebook" hx-trigger="every 2s"' in page
    assert f'href="/jobs/runs/{run_id}/artifacts/input.ipynb"' in page
    assert "output.ipynb" not in page
    snapshot = pages.get(f"/jobs/runs/{run_id}/artifacts/input.ipynb")
    assert snapshot.status_code == 200 and snapshot.data == ETL
    assert snapshot.headers["Content-Disposition"].startswith("attachment")


def test_a_file_that_is_no_notebook_is_a_field_error(pages: FlaskClient) -> None:
    csrf = browser(pages)
    response = launch_notebook(pages, csrf, content=b"print('hello')\n", name="etl.py",
                               parameters="alpha=2", tags="kept")
    assert response.status_code == 422
    html = response.data.decode()
    assert "not a notebook" in error_of(html, "notebook")
    assert 'class="form-control is-invalid" type="file"' in html
    assert "Choose <strong>etl.py</strong> again" in html  # the browser dropped the file
    assert "alpha=2</textarea>" in html and 'value="kept"' in html  # what was typed is kept
    nothing = launch_notebook(pages, csrf, content=None)
    assert nothing.status_code == 422
    assert "choose a notebook" in error_of(nothing.data.decode(), "notebook")
    outside = launch_notebook(pages, csrf, content=None, notebook_path="../bob/etl.ipynb")
    assert outside.status_code == 422
    assert "outside your home" in error_of(outside.data.decode(), "notebook_path")
    assert queued(pages) == []


def test_a_bad_parameter_line_is_a_field_error(pages: FlaskClient) -> None:
    csrf = browser(pages)
    for lines, message in (("alpha=1\njust words", "line 2: write name=value"),
                           ("1st=3", "not a parameter name")):
        response = launch_notebook(pages, csrf, parameters=lines)
        assert response.status_code == 422
        html = response.data.decode()
        assert message in error_of(html, "parameters")
        assert f"{lines}</textarea>" in html
    assert queued(pages) == []


def test_a_notebook_over_the_limit_is_a_field_error_not_a_413(pages: FlaskClient,
                                                                limited: Settings) -> None:
    csrf = browser(pages)
    padding = "x" * (1024 * 1024)
    # A little over: the body is read, and the service names the limit …
    over = launch_notebook(pages, csrf, content=notebook(f"# {padding}", "print(1)"),
                           parameters="alpha=2")
    assert over.status_code == 422
    html = over.data.decode()
    assert "larger than the 1 MB allowed" in error_of(html, "notebook")
    assert "alpha=2</textarea>" in html
    # … far over: the body is not even read, and the form says so in the same place.
    far = launch_notebook(pages, csrf, content=notebook(f"# {padding * 6}", "print(1)"))
    assert far.status_code == 422
    assert "far larger than the 1 MB" in error_of(far.data.decode(), "notebook")
    assert queued(pages) == []
    # Other pages keep the app's own limit and its answer.
    big_form = {"csrf_token": csrf, "name": "big", "image": SHELL_IMAGE,
                "command": "echo " + "y" * (limited.request_max_kb * 1024 + 10)}
    refused = pages.post("/jobs/definitions/new", data=big_form)
    assert refused.status_code == 413 and "Request too large" in refused.data.decode()
    huge_command = pages.post("/jobs/new", data={**big_form, "command": "y" * 4 * 1024 * 1024})
    assert huge_command.status_code == 413 and "Request too large" in huge_command.data.decode()


# -- a notebook run's page ---------------------------------------------------------------------
def test_the_run_page_shows_the_executed_notebook_in_a_sandboxed_frame(
        pages: FlaskClient, limited: Settings, runs_db: RunsDb) -> None:
    csrf = browser(pages)
    run_id = run_id_of(launch_notebook(pages, csrf, parameters="alpha=7"))
    script = "<script>window.parent.document.title = 'taken';</script><b>seven</b>"
    executed = notebook("alpha = 7", "show()", outputs=[nbformat.v4.new_output(
        "display_data", data={"text/html": script, "text/plain": "seven"})])
    ArtifactStore.from_settings(limited).save_output(runs_db.run(run_id), executed)
    set_run(limited, run_id, status=RunState.SUCCEEDED, exit_code=0)

    page = pages.get(f"/jobs/runs/{run_id}").data.decode()
    frame = re.search(r"<iframe[^>]*>", page)
    assert frame is not None
    assert " sandbox " in frame.group(0) and "allow-" not in frame.group(0)
    assert f'src="/jobs/runs/{run_id}/notebook.html"' in frame.group(0)
    assert 'id="notebook-pending"' not in page and f"/jobs/runs/{run_id}/notebook\"" not in page
    for name in ("input.ipynb", "output.ipynb", "output.html"):
        assert f'href="/jobs/runs/{run_id}/artifacts/{name}"' in page, name
    # The run page keeps the app's policy: its default-src 'self' lets the frame load.
    assert pages.get(f"/jobs/runs/{run_id}").headers["Content-Security-Policy"] == \
        CONTENT_SECURITY_POLICY

    html = pages.get(f"/jobs/runs/{run_id}/notebook.html")
    assert html.status_code == 200 and html.mimetype == "text/html"
    assert html.headers["Content-Security-Policy"] == FRAME_POLICY
    assert html.headers["X-Content-Type-Options"] == "nosniff"
    assert html.headers["Cache-Control"] == "private, no-cache"
    assert html.headers["X-Frame-Options"] == "SAMEORIGIN"
    assert b"<b>seven</b>" in html.data  # the output is shown as it is, the CSP disarms it

    output = pages.get(f"/jobs/runs/{run_id}/artifacts/output.ipynb")
    assert output.data == executed
    assert output.headers["Content-Disposition"] == \
        f"attachment; filename=run-{run_id}-output.ipynb"
    rendered = pages.get(f"/jobs/runs/{run_id}/artifacts/output.html")
    assert rendered.data == html.data
    assert rendered.headers["Content-Security-Policy"] == FRAME_POLICY
    assert pages.get(f"/jobs/runs/{run_id}/artifacts/secret.txt").status_code == 404
    assert pages.get(f"/jobs/runs/{run_id}/artifacts/..%2Finput.ipynb").status_code == 404


def test_a_run_that_ended_without_output_says_so(pages: FlaskClient,
                                                 limited: Settings) -> None:
    csrf = browser(pages)
    run_id = run_id_of(launch_notebook(pages, csrf))
    assert pages.get(f"/jobs/runs/{run_id}/notebook.html").status_code == 404
    set_run(limited, run_id, status=RunState.FAILED, exit_code=2)
    part = pages.get(f"/jobs/runs/{run_id}/notebook").data.decode()
    assert 'id="notebook-missing"' in part and "hx-get" not in part and "<iframe" not in part


def test_another_users_notebook_run_is_404(pages: FlaskClient, limited: Settings,
                                           runs_db: RunsDb) -> None:
    csrf = browser(pages)
    run_id = run_id_of(launch_notebook(pages, csrf))
    ArtifactStore.from_settings(limited).save_output(runs_db.run(run_id), ETL)
    assert pages.get(f"/jobs/runs/{run_id}/notebook.html").status_code == 200
    browser(pages, "tok-bob")
    for path in ("", "/notebook", "/notebook.html", "/artifacts/input.ipynb",
                 "/artifacts/output.ipynb", "/artifacts/output.html"):
        assert pages.get(f"/jobs/runs/{run_id}{path}").status_code == 404, path
    assert f'data-run-id="{run_id}"' not in pages.get("/jobs/?kind=notebook").data.decode()


def test_clone_of_a_notebook_run_fills_the_notebook_form(pages: FlaskClient) -> None:
    csrf = browser(pages)
    run_id = run_id_of(launch_notebook(pages, csrf, parameters="alpha=0.5\nflag=false\nx=null"))
    form = pages.get(f"/jobs/new?clone={run_id}").data.decode()
    assert 'enctype="multipart/form-data"' in form
    assert "alpha=0.5\nflag=false\nx=null</textarea>" in form
    assert 'id="clone-upload-note"' in form and "etl.ipynb" in form


# -- the runs list -----------------------------------------------------------------------------
def test_runs_list_marks_notebook_runs_and_filters_by_kind(pages: FlaskClient) -> None:
    csrf = browser(pages)
    command_run = run_id_of(launch(pages, csrf))
    notebook_run = run_id_of(launch_notebook(pages, csrf))
    # A command run has no notebook part, and no files.
    assert pages.get(f"/jobs/runs/{command_run}/notebook").status_code == 404
    assert pages.get(f"/jobs/runs/{command_run}/notebook.html").status_code == 404
    assert pages.get(f"/jobs/runs/{command_run}/artifacts/input.ipynb").status_code == 404
    assert 'id="run-notebook"' not in pages.get(f"/jobs/runs/{command_run}").data.decode()
    every = pages.get("/jobs/").data.decode()
    assert 'id="f-kind"' in every
    row = re.search(rf'<tr data-run-id="{notebook_run}">.*?</tr>', every, re.S)
    assert row is not None and "dy-kind-notebook" in row.group(0) and "etl.ipynb" in row.group(0)
    command_row = re.search(rf'<tr data-run-id="{command_run}">.*?</tr>', every, re.S)
    assert command_row is not None and "dy-kind-notebook" not in command_row.group(0)
    notebooks = pages.get("/jobs/?kind=notebook").data.decode()
    assert f'data-run-id="{notebook_run}"' in notebooks
    assert f'data-run-id="{command_run}"' not in notebooks
    assert '<option value="notebook" selected>' in notebooks
    commands = pages.get("/jobs/?kind=command").data.decode()
    assert f'data-run-id="{command_run}"' in commands
    assert f'data-run-id="{notebook_run}"' not in commands
    assert "unknown kind" in pages.get("/jobs/?kind=script").data.decode()
