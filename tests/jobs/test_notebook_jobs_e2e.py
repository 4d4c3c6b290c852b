"""Notebook runs end to end on the real Docker engine: submitted over HTTP (a multipart
upload, or a path in the user's home volume), run by the real worker in a container of
Dockyard's notebook image, where ``dockyard_data.notebook_job`` fetches the snapshot
through the API, runs it with papermill and sends the executed notebook back; then the
artifacts, the run's reason and its log as a user sees them. Python and R, a failing cell,
a cancelled run, and a Swarm pool."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import docker
import pytest

from dockyard.models import RunState
from dockyard.settings import Settings
from spawner.jobs.base import LABEL_NAMESPACE, LABEL_RUN_ID
from tests.jobs.conftest import ALICE, unique_namespace
from tests.jobs.notebook_support import (
    ARTIFACT_NAMES,
    NOTEBOOK_IMAGE,
    NotebookJobs,
    home_volume,
    notebook,
    read_notebook,
    stream_text,
)
from tests.support.requirements import require_image
from tests.support.swarm import single_node_swarm

pytestmark = [pytest.mark.docker, pytest.mark.image]

#: Enough for the kernel and papermill beside it (R's kernel too).
RESOURCES = {"memory_mb": 1024, "cpu": 1.0}
ETL = notebook(
    "result = round(alpha * 2, 3)\nprint(f'{label}: result={result}')",
    "result",
    parameters="alpha = 1.0\nlabel = 'default'")


class DockerNotebookJobs(NotebookJobs):
    run_defaults: ClassVar[dict[str, Any]] = RESOURCES

    def __init__(self, settings: Settings, tmp_path: Path) -> None:
        super().__init__(settings, tmp_path, {
            "job_backend": "docker", "job_namespace": unique_namespace("nbj"),
            "worker_name": "notebook-worker", "spawner": "docker",
            "docker_name_prefix": unique_namespace("nbj")})
        self.docker = docker.from_env(timeout=60)

    def containers(self, run_id: int | None = None) -> list[Any]:
        labels = [f"{LABEL_NAMESPACE}={self.namespace}"]
        if run_id is not None:
            labels.append(f"{LABEL_RUN_ID}={run_id}")
        return self.docker.containers.list(all=True, sparse=True, filters={"label": labels})

    engine_objects = containers

    def close(self) -> None:
        try:
            super().close()
        finally:
            for container in self.containers():
                container.remove(force=True)
            self.docker.close()


@pytest.fixture
def jobs(catalog: Settings, tmp_path: Path) -> Iterator[DockerNotebookJobs]:
    require_image(NOTEBOOK_IMAGE)
    harness = DockerNotebookJobs(catalog, tmp_path)
    try:
        harness.start_worker()
        yield harness
    finally:
        harness.close()


def test_an_uploaded_notebook_runs_with_its_parameter_and_keeps_its_files(
        jobs: DockerNotebookJobs) -> None:
    submitted = jobs.upload(ALICE, ETL, parameters={"alpha": 21.5, "label": "etl"},
                            tags=["nb-e2e"])
    run_id = submitted["id"]
    assert submitted["kind"] == "notebook"
    assert submitted["command"] == ["python", "-m", "dockyard_data.notebook_job"]
    run = jobs.ended(run_id)
    log = jobs.log_text(ALICE, run_id)
    assert run.status == RunState.SUCCEEDED, (run.reason, log)
    assert (run.exit_code, run.backend) == (0, "docker")
    assert jobs.removed(run_id)
    # The cells' output is in the run's log, as it came.
    assert "etl: result=43.0\n" in log

    listed = jobs.artifacts(ALICE, run_id)
    assert [a["name"] for a in listed] == ARTIFACT_NAMES
    assert listed[0]["size"] == len(ETL) and listed[1]["size"] > 0
    assert listed[2]["size"] is None  # rendered on first request
    assert jobs.artifact(ALICE, run_id, "input.ipynb") == ETL
    executed = read_notebook(jobs.artifact(ALICE, run_id, "output.ipynb"))
    assert executed.cells[1].metadata.tags == ["injected-parameters"]
    assert "alpha = 21.5" in executed.cells[1].source
    assert stream_text(executed.cells[2]) == "etl: result=43.0\n"
    assert executed.cells[3].outputs[0]["data"]["text/plain"] == "43.0"
    assert executed.metadata.papermill["parameters"] == {"alpha": 21.5, "label": "etl"}
    html = jobs.artifact(ALICE, run_id, "output.html").decode()
    assert "etl: result=43.0" in html
    assert jobs.artifacts(ALICE, run_id)[2]["size"] == len(html.encode())
    # Another user sees neither the run nor its files.
    bob = {"Authorization": "token tok-bob"}
    assert jobs.api("GET", f"/runs/{run_id}/artifacts", bob).status_code == 404
    assert jobs.api("GET", f"/runs/{run_id}/artifacts/output.ipynb", bob).status_code == 404
    # Only the run's own job sends its executed notebook, not its owner.
    forged = jobs.api("PUT", f"/runs/{run_id}/artifacts/output.ipynb", ALICE, data=ETL)
    assert forged.status_code == 403


def test_a_failing_cell_fails_the_run_with_its_cell_and_keeps_the_partial_notebook(
        jobs: DockerNotebookJobs) -> None:
    failing = notebook("print('loaded', rows)",
                       "if rows == 0:\n    raise ValueError(f'no rows in {table}')",
                       "print('never runs')",
                       parameters="rows = 10\ntable = 'orders'")
    run_id = jobs.upload(ALICE, failing, parameters={"rows": 0})["id"]
    run = jobs.ended(run_id)
    assert run.status == RunState.FAILED and run.exit_code == 1
    # The cell as counted in the submitted notebook (papermill's added cell is not).
    assert run.reason == ("the notebook failed in cell 3: ValueError: no rows in "
                          "orders (exit code 1)"), run.reason
    log = jobs.log_text(ALICE, run_id)
    assert log.splitlines()[-1] == "notebook failed in cell 3: ValueError: no rows in orders"
    assert "loaded 0\n" in log
    assert [a["name"] for a in jobs.artifacts(ALICE, run_id)] == ARTIFACT_NAMES
    executed = read_notebook(jobs.artifact(ALICE, run_id, "output.ipynb"))
    by_source = {cell.source: cell for cell in executed.cells}
    assert stream_text(by_source["print('loaded', rows)"]) == "loaded 0\n"
    (error,) = [o for o in by_source[failing_source(failing)].outputs
                if o.output_type == "error"]
    assert (error.ename, error.evalue) == ("ValueError", "no rows in orders")
    assert by_source["print('never runs')"].outputs == []
    assert "no rows in orders" in jobs.artifact(ALICE, run_id, "output.html").decode()


def failing_source(content: bytes) -> str:
    return next(c.source for c in read_notebook(content).cells if "raise" in c.source)


def test_an_r_notebook_runs_in_its_own_kernel(jobs: DockerNotebookJobs) -> None:
    r_notebook = notebook('cat("sum:", sum(seq_len(n)), "\\n")\ncat("R", R.version$major, "\\n")',
                          parameters="n <- 3", kernel="ir", language="R")
    submitted = jobs.upload(ALICE, r_notebook, name="sums.ipynb", parameters={"n": 10})
    assert (submitted["notebook"]["kernel"], submitted["notebook"]["language"]) == ("ir", "R")
    run = jobs.ended(submitted["id"])
    assert run.status == RunState.SUCCEEDED, (run.reason, jobs.log_text(ALICE, run.id))
    executed = read_notebook(jobs.artifact(ALICE, run.id, "output.ipynb"))
    assert executed.metadata.language_info.name == "R"
    injected = executed.cells[1]
    assert injected.metadata.tags == ["injected-parameters"] and "n = 10" in injected.source
    assert stream_text(executed.cells[2]).startswith("sum: 55 \nR 4 \n")


def test_a_notebook_from_the_home_volume_runs_as_it_was_at_submit_and_so_does_its_retry(
        jobs: DockerNotebookJobs) -> None:
    with home_volume(jobs.settings.docker_name_prefix, "alice") as home:
        home.write("work/etl.ipynb", ETL)
        response = jobs.api("POST", "/runs", ALICE, json={
            "notebook": {"path": "work/etl.ipynb"}, "parameters": {"alpha": 2, "label": "home"},
            "image": NOTEBOOK_IMAGE, **RESOURCES})
        assert response.status_code == 201, response.text
        submitted = response.json()
        assert submitted["notebook"]["source"] == "home"
        assert submitted["notebook"]["path"] == "work/etl.ipynb"
        assert submitted["notebook"]["name"] == "etl.ipynb"
        # Editing the notebook after submitting changes nothing for this run.
        edited = notebook("print('edited after submit')", parameters="alpha = 0")
        home.write("work/etl.ipynb", edited)
        first = jobs.ended(submitted["id"])
        assert first.status == RunState.SUCCEEDED, (first.reason,
                                                    jobs.log_text(ALICE, first.id))
        assert jobs.artifact(ALICE, first.id, "input.ipynb") == ETL
        executed = read_notebook(jobs.artifact(ALICE, first.id, "output.ipynb"))
        assert stream_text(executed.cells[2]) == "home: result=4\n"

        retried = jobs.api("POST", f"/runs/{first.id}/retry", ALICE)
        assert retried.status_code == 201, retried.text
        retry = retried.json()
        assert retry["notebook"] == submitted["notebook"]
        second = jobs.ended(retry["id"])
        assert second.status == RunState.SUCCEEDED, second.reason
        assert jobs.artifact(ALICE, second.id, "input.ipynb") == ETL
        again = read_notebook(jobs.artifact(ALICE, second.id, "output.ipynb"))
        assert stream_text(again.cells[2]) == "home: result=4\n"
        # A later submit of the same path takes the notebook as it is now.
        now = jobs.api("POST", "/runs", ALICE, json={
            "notebook": {"path": "/home/jovyan/work/etl.ipynb"}, "image": NOTEBOOK_IMAGE,
            **RESOURCES}).json()
        assert jobs.artifact(ALICE, now["id"], "input.ipynb") == edited
        assert jobs.ended(now["id"]).status == RunState.SUCCEEDED
        # Outside the home, or not there: refused, nothing queued.
        for path, words in (("../bob/work/etl.ipynb", "outside your home"),
                            ("work/missing.ipynb", "there is no work/missing.ipynb")):
            refused = jobs.api("POST", "/runs", ALICE, json={
                "notebook": {"path": path}, "image": NOTEBOOK_IMAGE})
            assert refused.status_code == 422, refused.text
            (problem,) = refused.json()["detail"]
            assert problem["field"] == "notebook.path" and words in problem["message"]


def test_a_cancelled_notebook_keeps_what_it_ran(jobs: DockerNotebookJobs) -> None:
    slow = notebook("print('first cell ran')",
                    "import time\nprint('waiting', flush=True)\ntime.sleep(600)",
                    "print('never runs')")
    run_id = jobs.upload(ALICE, slow)["id"]
    jobs.wait_for_log(ALICE, run_id, "waiting\n")
    assert jobs.api("POST", f"/runs/{run_id}/cancel", ALICE).status_code == 202
    run = jobs.ended(run_id)
    assert run.status == RunState.CANCELLED, run.reason
    assert run.exit_code == 143  # the job's own exit after sending its notebook, not a kill
    log = jobs.log_text(ALICE, run_id)
    assert "The run was stopped (SIGTERM): keeping the notebook as far as it ran." in log
    executed = read_notebook(jobs.artifact(ALICE, run_id, "output.ipynb"))
    assert stream_text(executed.cells[0]) == "first cell ran\n"
    assert stream_text(executed.cells[1]) == "waiting\n"
    assert executed.cells[2].outputs == []
    assert jobs.removed(run_id)


# -- a Swarm pool ------------------------------------------------------------------------------
SWARM_POOL = {"backend": "swarm", "poll_seconds": 0.5, "description": "the team swarm"}


class SwarmNotebookJobs(NotebookJobs):
    run_defaults: ClassVar[dict[str, Any]] = {**RESOURCES, "pool": "swarm"}

    def __init__(self, settings: Settings, engine: docker.DockerClient, tmp_path: Path) -> None:
        super().__init__(settings, tmp_path, {
            "job_pools": {"swarm": SWARM_POOL}, "job_backend": "local",
            "job_namespace": unique_namespace("nbs"), "worker_name": "notebook-swarm-worker"})
        self.engine = engine

    def services(self, run_id: int | None = None) -> list[dict[str, Any]]:
        labels = [f"{LABEL_NAMESPACE}={self.namespace}"]
        if run_id is not None:
            labels.append(f"{LABEL_RUN_ID}={run_id}")
        return self.engine.api.services(filters={"label": labels})

    engine_objects = services

    def close(self) -> None:
        try:
            super().close()
        finally:
            for service in self.services():
                self.engine.api.remove_service(service["ID"])


@pytest.fixture
def swarm_jobs(catalog: Settings, tmp_path: Path) -> Iterator[SwarmNotebookJobs]:
    require_image(NOTEBOOK_IMAGE)
    engine = docker.from_env(timeout=120)
    try:
        with single_node_swarm(engine):
            harness = SwarmNotebookJobs(catalog, engine, tmp_path)
            try:
                harness.start_worker()
                yield harness
            finally:
                harness.close()
    finally:
        engine.close()


def test_a_notebook_runs_in_a_swarm_pool(swarm_jobs: SwarmNotebookJobs) -> None:
    run_id = swarm_jobs.upload(ALICE, ETL, parameters={"alpha": 5, "label": "swarm"})["id"]
    run = swarm_jobs.ended(run_id)
    assert run.status == RunState.SUCCEEDED, (run.reason, swarm_jobs.log_text(ALICE, run_id))
    assert (run.pool, run.backend) == ("swarm", "swarm")
    executed = read_notebook(swarm_jobs.artifact(ALICE, run_id, "output.ipynb"))
    assert stream_text(executed.cells[2]) == "swarm: result=10\n"
    assert [a["name"] for a in swarm_jobs.artifacts(ALICE, run_id)] == ARTIFACT_NAMES
    assert swarm_jobs.removed(run_id)
