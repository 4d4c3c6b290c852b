"""Notebook runs through the REST API on the web app alone (no worker): what a submit
checks and keeps, the artifacts each user may see, and what only a run's job may send."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import nbformat
import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from dockyard.db import make_engine, make_session_factory
from dockyard.jobs.notebooks import failed_cell, parse_parameter_lines
from dockyard.jobs.service import InvalidJob
from dockyard.jobs.tokens import hash_token
from dockyard.models import Image, ImageStatus, RunState
from dockyard.settings import Settings
from tests.conftest import auth, client_for
from tests.jobs.conftest import SHELL_IMAGE, add_images
from tests.jobs.test_jobs_api import problems, set_run

ALICE, BOB = auth("tok-alice"), auth("tok-bob")
NOTEBOOK_IMAGE = "team/notebooks:1"
BARE_IMAGE = "team/no-papermill:1"


def notebook(*sources: str, kernel: str = "python3", tag_first: bool = True) -> bytes:
    node = nbformat.v4.new_notebook()
    node.metadata["kernelspec"] = {"name": kernel, "display_name": kernel,
                                   "language": "R" if kernel == "ir" else "python"}
    for index, source in enumerate(sources):
        cell = nbformat.v4.new_code_cell(source)
        if index == 0 and tag_first:
            cell.metadata["tags"] = ["parameters"]
        node.cells.append(cell)
    return nbformat.writes(node).encode()


ETL = notebook("alpha = 1", "print(alpha * 2)")


def _set_contents(db_url: str, reference: str, contents: dict[str, Any]) -> None:
    engine = make_engine(db_url)
    try:
        with make_session_factory(engine)() as session:
            image = session.scalar(select(Image).where(Image.reference == reference))
            assert image is not None
            image.contents = contents
            session.commit()
    finally:
        engine.dispose()


@pytest.fixture
def api(client: FlaskClient, catalog: Settings) -> FlaskClient:
    add_images(catalog.db_url, (NOTEBOOK_IMAGE, True, ImageStatus.READY),
               (BARE_IMAGE, True, ImageStatus.READY))
    _set_contents(catalog.db_url, NOTEBOOK_IMAGE, {
        "kernels": {"python3": {"language": "python"}, "ir": {"language": "R"}},
        "pip_packages": {"papermill": "2.7.0", "ipykernel": "7.4.0"}})
    _set_contents(catalog.db_url, BARE_IMAGE, {
        "kernels": {"python3": {"language": "python"}}, "pip_packages": {"pandas": "2.2"}})
    return client


def upload(api: FlaskClient, content: bytes = ETL, headers: dict[str, str] = ALICE,
           name: str = "etl.ipynb", **fields: Any) -> Any:
    form: dict[str, Any] = {"image": NOTEBOOK_IMAGE}
    form.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()})
    form["notebook"] = (io.BytesIO(content), name)
    return api.post("/api/v1/runs", data=form, headers=headers,
                    content_type="multipart/form-data")


def test_an_uploaded_notebook_is_queued_with_its_snapshot(api: FlaskClient,
                                                          catalog: Settings) -> None:
    response = upload(api, parameters={"alpha": 0.5, "label": "x"}, tags=["etl"], cpu="0.5")
    assert response.status_code == 201, response.json
    run = response.json
    assert run["kind"] == "notebook" and run["status"] == "QUEUED"
    assert run["command"] == ["python", "-m", "dockyard_data.notebook_job"]
    assert run["cpu"] == 0.5 and run["tags"] == ["etl"]
    assert run["notebook"]["name"] == "etl.ipynb" and run["notebook"]["source"] == "upload"
    assert run["notebook"]["parameters"] == {"alpha": 0.5, "label": "x"}
    assert run["notebook"]["kernel"] == "python3"
    listed = api.get(f"/api/v1/runs/{run['id']}/artifacts", headers=ALICE).json["artifacts"]
    assert listed == [{"name": "input.ipynb", "size": len(ETL),
                       "media_type": "application/x-ipynb+json"}]
    snapshot = api.get(f"/api/v1/runs/{run['id']}/artifacts/input.ipynb", headers=ALICE)
    assert snapshot.status_code == 200 and snapshot.data == ETL
    assert "attachment" in snapshot.headers["Content-Disposition"]
    # Kept under HOME in the embedded default, named by its content, and not in the data
    # root, which notebook and job containers mount read-write.
    kept = Path(catalog.home) / "artifacts" / "notebooks" / f"{run['notebook']['sha256']}.ipynb"
    assert kept.read_bytes() == ETL
    assert not list(Path(catalog.data_dir).rglob("*.ipynb"))
    # The kind filter, and the run's job gets its notebook through its environment.
    notebooks = api.get("/api/v1/runs?kind=notebook", headers=ALICE).json["runs"]
    commands = api.get("/api/v1/runs?kind=command", headers=ALICE).json["runs"]
    assert [r["id"] for r in notebooks] == [run["id"]] and commands == []


def test_a_retry_runs_the_same_snapshot(api: FlaskClient, catalog: Settings) -> None:
    first = upload(api, parameters={"alpha": 3}).json
    set_run(catalog, first["id"], status=RunState.FAILED)
    retry = api.post(f"/api/v1/runs/{first['id']}/retry", headers=ALICE)
    assert retry.status_code == 201
    assert retry.json["kind"] == "notebook" and retry.json["notebook"] == first["notebook"]
    again = api.get(f"/api/v1/runs/{retry.json['id']}/artifacts/input.ipynb", headers=ALICE)
    assert again.data == ETL


@pytest.mark.parametrize(("content", "fields", "field", "words"), [
    (b"print('hello')\n", {}, "notebook", "not a notebook"),
    (b'{"cells": "no", "nbformat": 4, "nbformat_minor": 5, "metadata": {}}', {}, "notebook",
     "not a valid notebook"),
    (b"\xff\xfe\x00", {}, "notebook", "UTF-8"),
    (notebook("x = 1", kernel=""), {}, "notebook", "names no kernel"),
    (notebook("x = 1", kernel="julia-1.9"), {}, "image", "'julia-1.9' is not in image"),
    (ETL, {"image": BARE_IMAGE}, "image", "no papermill"),
    (ETL, {"parameters": {"not-a-name": 1}}, "parameters", "not a parameter name"),
    (ETL, {"command": "echo hi"}, "command", "leave the command out"),
    (ETL, {"parameters": "alpha=1"}, "parameters", ""),
])
def test_bad_notebook_runs_are_refused_naming_the_field(api: FlaskClient, content: bytes,
                                                        fields: dict[str, Any], field: str,
                                                        words: str) -> None:
    response = upload(api, content, **fields)
    assert response.status_code == 422, response.json
    found = problems(response)
    assert field in found and words in found[field], found
    assert api.get("/api/v1/runs", headers=ALICE).json["runs"] == []


def test_an_image_not_yet_inspected_is_refused(api: FlaskClient, catalog: Settings) -> None:
    _set_contents(catalog.db_url, NOTEBOOK_IMAGE, {})
    found = problems(upload(api))
    assert "has not been inspected yet" in found["image"]


def test_a_notebook_over_the_limit_is_a_field_error(tmp_path: Path, catalog: Settings) -> None:
    small = Settings(home=catalog.home, notebook_job_max_mb=1)
    api = client_for(small)
    _prepare_images(small)
    big = notebook("x = 1", "# " + "x" * (1024 * 1024 + 10))
    response = upload(api, big)
    assert response.status_code == 422
    assert "larger than the 1 MB allowed" in problems(response)["notebook"]
    # Far beyond it, the body itself is refused before it is read, with the setting named.
    huge = upload(api, b"x" * (4 * 1024 * 1024))
    assert huge.status_code == 413 and "DOCKYARD_NOTEBOOK_JOB_MAX_MB" in huge.json["detail"]


def _prepare_images(settings: Settings) -> None:
    add_images(settings.db_url, (NOTEBOOK_IMAGE, True, ImageStatus.READY))
    _set_contents(settings.db_url, NOTEBOOK_IMAGE, {
        "kernels": {"python3": {}}, "pip_packages": {"papermill": "2.7.0"}})


def test_parameters_without_a_notebook_are_refused(api: FlaskClient) -> None:
    response = api.post("/api/v1/runs", headers=ALICE, json={
        "image": SHELL_IMAGE, "command": "true", "parameters": {"a": 1}})
    assert "parameters are for notebook runs" in problems(response)["parameters"]


def test_a_notebook_from_the_home_by_path(catalog: Settings) -> None:
    """Local-process homes here (directories); the volume homes run in the e2e tests."""
    local = Settings(home=catalog.home, spawner="local")
    api = client_for(local)
    _prepare_images(local)
    home = Path(local.home) / "users" / "alice"
    (home / "work").mkdir(parents=True)
    (home / "work" / "etl.ipynb").write_bytes(ETL)
    (Path(local.home) / "users" / "bob").mkdir(parents=True)
    (Path(local.home) / "users" / "bob" / "secret.ipynb").write_bytes(ETL)
    (home / "escape.ipynb").symlink_to(Path(local.home) / "users" / "bob" / "secret.ipynb")

    def by_path(path: str) -> Any:
        return api.post("/api/v1/runs", headers=ALICE, json={
            "image": NOTEBOOK_IMAGE, "notebook": {"path": path}, "parameters": {"alpha": 2}})

    made = by_path("work/etl.ipynb")
    assert made.status_code == 201, made.json
    assert made.json["notebook"]["source"] == "home"
    assert made.json["notebook"]["path"] == "work/etl.ipynb"
    # A later edit of the file does not change the run's snapshot.
    (home / "work" / "etl.ipynb").write_bytes(notebook("alpha = 9"))
    snapshot = api.get(f"/api/v1/runs/{made.json['id']}/artifacts/input.ipynb", headers=ALICE)
    assert snapshot.data == ETL
    assert by_path("/home/jovyan/work/etl.ipynb").status_code == 201
    for outside in ("../bob/secret.ipynb", "/etc/passwd", "work/../../bob/secret.ipynb", ".."):
        assert "outside your home" in problems(by_path(outside))["notebook.path"], outside
    assert "leads outside your home" in problems(by_path("escape.ipynb"))["notebook.path"]
    assert "there is no work/missing.ipynb" in problems(by_path("work/missing.ipynb"))[
        "notebook.path"]


def test_artifacts_are_their_owners_and_only_the_runs_job_sends_output(
        api: FlaskClient, catalog: Settings) -> None:
    run_id = upload(api).json["id"]
    for name in ("input.ipynb", "output.ipynb", "output.html", "..", "run.log"):
        assert api.get(f"/api/v1/runs/{run_id}/artifacts/{name}", headers=BOB).status_code == 404
    assert api.get(f"/api/v1/runs/{run_id}/artifacts", headers=BOB).status_code == 404
    assert api.get(f"/api/v1/runs/{run_id}/artifacts/..%2F..%2Fdockyard.sqlite",
                   headers=ALICE).status_code == 404
    assert api.get(f"/api/v1/runs/{run_id}/artifacts/output.ipynb",
                   headers=ALICE).status_code == 404  # not run yet

    executed = notebook("alpha = 1", "print(alpha * 2)")
    put = f"/api/v1/runs/{run_id}/artifacts/output.ipynb"
    # The owner's own token is not the run's job.
    assert api.put(put, data=executed, headers=ALICE).status_code == 403
    token = f"dyr_{run_id}_sometestsecret"
    set_run(catalog, run_id, status=RunState.RUNNING, token_hash=hash_token(token))
    assert api.put(put, data=b"not json", headers=auth(token)).status_code == 422
    assert api.put(f"/api/v1/runs/{run_id}/artifacts/input.ipynb", data=executed,
                   headers=auth(token)).status_code == 422
    assert api.put(put, data=executed, headers=auth(token)).status_code == 204

    names = [a["name"] for a in api.get(f"/api/v1/runs/{run_id}/artifacts",
                                        headers=ALICE).json["artifacts"]]
    assert names == ["input.ipynb", "output.ipynb", "output.html"]
    html = api.get(f"/api/v1/runs/{run_id}/artifacts/output.html", headers=ALICE)
    assert html.status_code == 200 and html.mimetype == "text/html"
    assert b"alpha" in html.data and b"jp-Notebook" in html.data
    assert html.headers["Content-Security-Policy"] == "sandbox"
    sizes = {a["name"]: a["size"] for a in api.get(f"/api/v1/runs/{run_id}/artifacts",
                                                   headers=ALICE).json["artifacts"]}
    assert sizes["output.html"] == len(html.data)
    # Once the run has ended (its token no longer works), nothing more is accepted.
    set_run(catalog, run_id, status=RunState.SUCCEEDED)
    assert api.put(put, data=executed, headers=auth(token)).status_code == 401


def test_parameter_lines_are_typed_like_papermill() -> None:
    assert parse_parameter_lines("a=1\nb = 0.5\n# note\n\nc=true\nd=None\ne=hello world\n"
                                 "f=") == {"a": 1, "b": 0.5, "c": True, "d": None,
                                           "e": "hello world", "f": ""}
    with pytest.raises(InvalidJob) as caught:
        parse_parameter_lines("1x=2\njust text")
    assert [p.field for p in caught.value.problems] == ["parameters", "parameters"]


def test_the_failed_cell_is_found_in_an_executed_notebook() -> None:
    node = nbformat.reads(notebook("alpha = 1", "x = 1", "raise ValueError('boom')").decode(),
                          as_version=4)
    injected = nbformat.v4.new_code_cell("alpha = 2")
    injected.metadata["tags"] = ["injected-parameters"]
    node.cells.insert(1, injected)
    node.cells[3].execution_count = 3
    node.cells[3].outputs = [nbformat.v4.new_output("error", ename="ValueError",
                                                    evalue="boom", traceback=[])]
    text = failed_cell(nbformat.writes(node).encode())
    assert text == "cell 3: ValueError: boom"
    assert failed_cell(notebook("x = 1")) is None
    assert failed_cell(b"garbage") is None


def test_what_a_job_sends_back_must_be_a_notebook(api: FlaskClient, catalog: Settings) -> None:
    run_id = upload(api).json["id"]
    token = f"dyr_{run_id}_sometestsecret"
    set_run(catalog, run_id, status=RunState.RUNNING, token_hash=hash_token(token))
    put = f"/api/v1/runs/{run_id}/artifacts/output.ipynb"
    deep = b"[" * 100000 + b"]" * 100000
    for body in (b'{"cells": [1]}', b'{"cells": 5}', deep, b"\xff\xfe", b"[]"):
        answer = api.put(put, data=body, headers=auth(token))
        assert answer.status_code == 422, (body[:20], answer.status_code)
        assert problems(answer)["body"].startswith("not a valid notebook")
    assert api.get(f"/api/v1/runs/{run_id}/artifacts/output.ipynb",
                   headers=ALICE).status_code == 404


def test_whatever_a_job_sent_the_failed_cell_never_raises() -> None:
    for sent in (b'{"cells": [1]}', b'{"cells": 5}', b'{"cells": [{"outputs": [{"output_type":'
                 b' "error", "ename": 7}]}]}', b"[" * 5000, b"null", b"\xff"):
        failed_cell(sent)  # no exception, whatever it answers
    assert failed_cell(b'{"cells": [{"id": 3, "outputs": [{"output_type": "error", '
                       b'"ename": 7, "evalue": "x"}]}]}') == "cell 1: 7: x"


@pytest.mark.parametrize(("form", "field", "words"), [
    ({"notebook": '{"cells": []}'}, "notebook", "as a file part"),
    ({"parameters": '{"x": NaN}'}, "parameters", "not a finite number"),
    ({"parameters": "{not json"}, "parameters", ""),
])
def test_odd_multipart_forms_are_refused(api: FlaskClient, form: dict[str, str], field: str,
                                         words: str) -> None:
    data: dict[str, Any] = {"image": NOTEBOOK_IMAGE, **form}
    if "notebook" not in form:
        data["notebook"] = (io.BytesIO(ETL), "etl.ipynb")
    answer = api.post("/api/v1/runs", data=data, headers=ALICE,
                      content_type="multipart/form-data")
    assert answer.status_code == 422, answer.json
    assert words in problems(answer)[field]


def test_two_notebooks_in_one_request_are_refused(api: FlaskClient) -> None:
    answer = api.post("/api/v1/runs", headers=ALICE, content_type="multipart/form-data", data={
        "image": NOTEBOOK_IMAGE,
        "notebook": [(io.BytesIO(ETL), "a.ipynb"), (io.BytesIO(ETL), "b.ipynb")]})
    assert answer.status_code == 422 and "one notebook" in problems(answer)["notebook"]


def test_a_changed_snapshot_is_never_served(api: FlaskClient, catalog: Settings) -> None:
    run = upload(api).json
    kept = Path(catalog.home) / "artifacts" / "notebooks" / f"{run['notebook']['sha256']}.ipynb"
    kept.write_bytes(notebook("import os; os.system('steal')"))
    answer = api.get(f"/api/v1/runs/{run['id']}/artifacts/input.ipynb", headers=ALICE)
    assert answer.status_code == 409 and "has changed" in answer.json["detail"]


def test_a_store_that_fails_is_a_503_and_queues_nothing(catalog: Settings) -> None:
    blocked = Path(catalog.home) / "not-a-directory"
    blocked.write_text("a file where the store's directory should be")
    broken = Settings(home=catalog.home, artifacts_root=str(blocked / "artifacts"))
    api = client_for(broken)
    _prepare_images(broken)
    answer = upload(api)
    assert answer.status_code == 503, answer.json
    assert str(blocked) not in answer.json["detail"]  # server paths stay in the log
    assert api.get("/api/v1/runs", headers=ALICE).json["runs"] == []
