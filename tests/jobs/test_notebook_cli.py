"""`dockyard jobs submit-notebook` against a real web app on a loopback port: the upload
is queued as a notebook run with its typed parameters and its snapshot; bad input is told
as ``field: message`` lines with exit code 2 and nothing queued; ``--wait`` follows a run
(local processes) to its end and its exit code says how it ended."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
import requests
from sqlalchemy import select

from dockyard.db import make_engine, make_session_factory
from dockyard.models import Image, ImageStatus
from dockyard.settings import Settings
from tests.conftest import web_app
from tests.data.conftest import served
from tests.jobs.conftest import ThreadedWorker, unique_namespace

IMAGE = "dockyard/notebook:latest"
#: A job image with Python but no papermill: it cannot run notebooks.
PLAIN_IMAGE = "team/plain-python:1"
NOTEBOOK_COMMAND = ["python", "-m", "dockyard_data.notebook_job"]
#: What the image's inspection records of an image that runs Python notebooks.
NOTEBOOK_IMAGE_CONTENTS = {
    "kernels": {"python3": {"display_name": "Python 3 (ipykernel)", "language": "python"}},
    "pip_packages": {"papermill": "2.6.0", "ipykernel": "6.29.5"},
}


def add_job_images(settings: Settings) -> None:
    """The notebook image and a plain one in the catalog, as their inspection left them."""
    plain = {"kernels": NOTEBOOK_IMAGE_CONTENTS["kernels"], "pip_packages": {"pandas": "2.2.3"}}
    engine = make_engine(settings.db_url)
    try:
        with make_session_factory(engine)() as session:
            for reference, contents in ((IMAGE, NOTEBOOK_IMAGE_CONTENTS), (PLAIN_IMAGE, plain)):
                if session.scalar(select(Image).where(Image.reference == reference)) is None:
                    session.add(Image(reference=reference, for_jobs=True,
                                      status=ImageStatus.READY, contents=contents,
                                      created_by="admin"))
            session.commit()
    finally:
        engine.dispose()


def write_notebook(path: Path, *cells: str, parameters: str = "alpha = 0.1\nname = 'a'") -> Path:
    parameter_cell = nbformat.v4.new_code_cell(parameters)
    parameter_cell.metadata["tags"] = ["parameters"]
    notebook = nbformat.v4.new_notebook(
        cells=[parameter_cell, *(nbformat.v4.new_code_cell(source) for source in cells)],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}})
    nbformat.write(notebook, path)
    return path


class Dockyard:
    """The web app served on loopback, and the `dockyard` command pointed at it."""

    def __init__(self, url: str, tmp_path: Path) -> None:
        self.url = url
        self.tmp_path = tmp_path
        self.api = requests.Session()
        self.api.headers["Authorization"] = "token tok-alice"

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
        env.update(DOCKYARD_URL=self.url + "/", DOCKYARD_TOKEN="tok-alice")
        return subprocess.run([sys.executable, "-m", "dockyard.cli", "jobs", *args], env=env,
                              cwd=self.tmp_path, capture_output=True, text=True,
                              timeout=timeout)

    def get(self, path: str) -> Any:
        return self.download(path).json()

    def download(self, path: str) -> requests.Response:
        response = self.api.get(f"{self.url}/api/v1{path}", timeout=30)
        response.raise_for_status()
        return response

    def runs(self) -> list[dict[str, Any]]:
        return self.get("/runs")["runs"]


@pytest.fixture
def dockyard(migrated: Settings, tmp_path: Path) -> Iterator[Dockyard]:
    add_job_images(migrated)
    with served(web_app(migrated)) as url:
        yield Dockyard(url, tmp_path)


def test_an_uploaded_notebook_is_queued_with_its_typed_parameters_and_snapshot(
    dockyard: Dockyard, tmp_path: Path,
) -> None:
    notebook = write_notebook(tmp_path / "etl.ipynb", "print(alpha * 2, name)")
    result = dockyard.cli("submit-notebook", "etl.ipynb", "-p", "alpha=0.5", "-p", "name=x",
                          "-p", "n=3", "-p", "dry=true", "-p", "day=2024-01-01",
                          "-p", "empty=null", "--image", IMAGE, "--cpu", "0.5",
                          "--memory", "256", "--timeout", "600", "--tag", "nightly",
                          "--env", "STAGE=test")
    assert result.returncode == 0, result.stderr
    first, page = result.stdout.splitlines()
    run_id = int(first.split()[1])
    assert first == f"Run {run_id} queued: notebook etl.ipynb in {IMAGE}."
    assert page == f"{dockyard.url}/jobs/runs/{run_id}"

    run = dockyard.get(f"/runs/{run_id}")
    assert (run["kind"], run["status"], run["command"]) == ("notebook", "QUEUED",
                                                              NOTEBOOK_COMMAND)
    assert (run["cpu"], run["memory_mb"], run["timeout_seconds"]) == (0.5, 256, 600)
    assert (run["tags"], run["env"]) == (["nightly"], {"STAGE": "test"})
    content = notebook.read_bytes()
    assert run["notebook"]["name"] == "etl.ipynb"
    assert run["notebook"]["source"] == "upload"
    assert run["notebook"]["kernel"] == "python3"
    assert run["notebook"]["sha256"] == hashlib.sha256(content).hexdigest()
    assert run["notebook"]["parameters"] == {"alpha": 0.5, "name": "x", "n": 3, "dry": True,
                                             "day": "2024-01-01", "empty": None}
    # The run keeps what was sent: a later edit of the file changes nothing.
    write_notebook(notebook, "print('edited')")
    assert dockyard.download(f"/runs/{run_id}/artifacts/input.ipynb").content == content

    listed = dockyard.cli("list", "--kind", "notebook", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [r["id"] for r in json.loads(listed.stdout)["runs"]] == [run_id]
    assert json.loads(dockyard.cli("list", "--kind", "command", "--json").stdout)["runs"] == []


@pytest.mark.parametrize(
    ("parameter", "message"),
    [
        ("2x=1", "parameters: '2x' is not a parameter name"),
        ("alpha-beta=1", "parameters: 'alpha-beta' is not a parameter name"),
        ("alpha", "parameters: line 1: write name=value"),
    ],
)
def test_a_bad_parameter_is_a_field_line_and_exit_2_with_nothing_queued(
    dockyard: Dockyard, tmp_path: Path, parameter: str, message: str,
) -> None:
    write_notebook(tmp_path / "etl.ipynb")
    result = dockyard.cli("submit-notebook", "etl.ipynb", "-p", "ok=1", "-p", parameter,
                          "--image", IMAGE)
    assert result.returncode == 2
    assert result.stderr.splitlines()[0].startswith(message), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert dockyard.runs() == []


def test_what_dockyard_refuses_is_printed_field_by_field_with_exit_2(
    dockyard: Dockyard, tmp_path: Path,
) -> None:
    (tmp_path / "notes.ipynb").write_text("these are notes, not a notebook")
    refused = dockyard.cli("submit-notebook", "notes.ipynb", "--image", IMAGE)
    assert refused.returncode == 2
    assert refused.stderr.startswith("notebook: not a notebook"), refused.stderr

    write_notebook(tmp_path / "etl.ipynb")
    outside = dockyard.cli("submit-notebook", "--home-path", "../../etc/passwd", "--image", IMAGE)
    assert outside.returncode == 2
    assert outside.stderr.startswith("notebook.path: "), outside.stderr

    no_papermill = dockyard.cli("submit-notebook", "etl.ipynb", "--image", PLAIN_IMAGE)
    assert no_papermill.returncode == 2
    assert no_papermill.stderr.startswith("image: "), no_papermill.stderr
    assert "papermill" in no_papermill.stderr
    assert "Traceback" not in refused.stderr + outside.stderr + no_papermill.stderr
    assert dockyard.runs() == []


def test_a_missing_file_or_no_notebook_at_all_is_a_usage_error(
    dockyard: Dockyard, tmp_path: Path,
) -> None:
    missing = dockyard.cli("submit-notebook", "nowhere.ipynb", "--image", IMAGE)
    assert missing.returncode == 2
    assert "'nowhere.ipynb' does not exist" in missing.stderr

    neither = dockyard.cli("submit-notebook", "--image", IMAGE)
    both = dockyard.cli("submit-notebook", str(write_notebook(tmp_path / "etl.ipynb")),
                        "--home-path", "work/etl.ipynb", "--image", IMAGE)
    for result in (neither, both):
        assert result.returncode == 2
        assert "give a notebook file or --home-path" in result.stderr
    assert dockyard.runs() == []


# -- --wait: the run goes to its end (local processes run papermill in Dockyard's Python) ----
@pytest.fixture
def dockyard_with_worker(migrated: Settings, tmp_path: Path) -> Iterator[Dockyard]:
    """Jobs as local processes (no image needed); the worker tells them where the API is."""
    local = migrated.model_copy(update={
        "job_backend": "local", "job_namespace": unique_namespace("jtnb"),
        "worker_poll_seconds": 0.1})
    with served(web_app(local)) as url:
        worker = local.model_copy(update={"job_dockyard_url": url + "/"})
        with ThreadedWorker(worker, name="notebook-cli-worker"):
            yield Dockyard(url, tmp_path)


def test_wait_follows_a_notebook_run_to_success_and_its_output_is_kept(
    dockyard_with_worker: Dockyard, tmp_path: Path,
) -> None:
    dockyard = dockyard_with_worker
    write_notebook(tmp_path / "etl.ipynb", "print('doubled', alpha * 2)")
    result = dockyard.cli("submit-notebook", "etl.ipynb", "-p", "alpha=21", "--wait",
                          timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = int(result.stdout.split()[1])
    assert f"Run {run_id} SUCCEEDED" in result.stderr
    executed = dockyard.get(f"/runs/{run_id}/artifacts/output.ipynb")
    printed = "".join("".join(output.get("text", ""))
                      for cell in executed["cells"] for output in cell.get("outputs", []))
    assert "doubled 42" in printed


def test_wait_exits_non_zero_with_the_failing_cell_when_the_notebook_raises(
    dockyard_with_worker: Dockyard, tmp_path: Path,
) -> None:
    dockyard = dockyard_with_worker
    write_notebook(tmp_path / "etl.ipynb", "x = 1", "raise ValueError('boom')")
    result = dockyard.cli("submit-notebook", "etl.ipynb", "--wait", timeout=300)
    assert result.returncode != 0
    run_id = int(result.stdout.split()[1])
    assert f"Run {run_id} FAILED: " in result.stderr
    assert "cell 3" in result.stderr and "ValueError: boom" in result.stderr
