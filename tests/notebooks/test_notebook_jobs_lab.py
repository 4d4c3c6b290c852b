"""JupyterLab's Notebook Jobs against a real Dockyard: Docker notebooks and Docker jobs from
dockyard/notebook, whose jupyter-scheduler front end sends each job to Dockyard as a
notebook run and each job definition as a scheduled notebook definition (images/lab). A
person creates a job and a scheduled one in Chromium and opens the job's executed copy;
the scheduler's REST API (what the front end calls) maps runs, definitions, states,
errors and files, each against the real service."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import docker
import nbformat
import pytest
import requests

from tests.browser.conftest import CHROMIUM_ARGS
from tests.notebooks.conftest import NotebookHub, running_notebook_hub
from tests.support.requirements import require_chromium, require_image

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.image]

NOTEBOOK_IMAGE = "dockyard/notebook:latest"
FINAL = {"COMPLETED", "FAILED", "STOPPED"}
# Hourly at most, so that a cron every few minutes is refused (five cron fields cannot go
# below the default minute).
SCHEDULE_MIN_SECONDS = 3600


def notebook_json(*cells: str, parameters: str | None = None) -> dict[str, Any]:
    """A Python notebook whose first cell (tagged ``parameters``) holds ``parameters``."""
    node = nbformat.v4.new_notebook()
    node.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                   "language": "python"}
    if parameters is not None:
        cell = nbformat.v4.new_code_cell(parameters)
        cell.metadata["tags"] = ["parameters"]
        node.cells.append(cell)
    node.cells += [nbformat.v4.new_code_cell(source) for source in cells]
    return json.loads(nbformat.writes(node))


@contextmanager
def dockyard_with_lab_jobs(home: Any, prefix: str) -> Iterator[NotebookHub]:
    """Docker notebooks and Docker jobs; dockyard/notebook registered through the API,
    inspected by the worker and made the default for both. Afterwards every notebook
    and job container of this Dockyard is gone."""
    require_image(NOTEBOOK_IMAGE)
    try:
        with running_notebook_hub(home, prefix, DOCKYARD_JOB_BACKEND="docker",
                                  DOCKYARD_JOB_NAMESPACE=prefix,
                                  DOCKYARD_SCHEDULE_MIN_SECONDS=str(SCHEDULE_MIN_SECONDS),
                                  ) as notebooks:
            offer_for_notebooks_and_jobs(notebooks, NOTEBOOK_IMAGE)
            yield notebooks
    finally:
        engine = docker.from_env(timeout=120)
        try:
            jobs = {"label": f"dockyard.namespace={prefix}"}
            for container in engine.containers.list(all=True, filters=jobs):
                container.remove(force=True)
        finally:
            engine.close()


def dockyard_api(notebooks: NotebookHub, method: str, path: str, token: str | None = None,
                 **kwargs: Any) -> requests.Response:
    return requests.request(method, notebooks.hub.service(f"api/v1/{path.lstrip('/')}"),
                            headers={"Authorization": f"token {token or notebooks.admin_token}"},
                            timeout=kwargs.pop("timeout", 60), **kwargs)


def offer_for_notebooks_and_jobs(notebooks: NotebookHub, reference: str) -> None:
    created = dockyard_api(notebooks, "POST", "images", json={
        "reference": reference, "description": "Dockyard's notebook image",
        "for_notebooks": True, "for_jobs": True})
    assert created.status_code == 201, created.text
    image_id = created.json()["id"]
    deadline = time.monotonic() + 300
    image: dict[str, Any] = {}
    while time.monotonic() < deadline:  # the worker inspects it: kernels, papermill
        image = dockyard_api(notebooks, "GET", f"images/{image_id}").json()
        if image["status"] == "ready" and image["inspected_at"]:
            break
        time.sleep(0.5)
    assert "python3" in image.get("kernels", []), image
    changed = dockyard_api(notebooks, "PATCH", f"images/{image_id}",
                           json={"default_for_notebooks": True, "default_for_jobs": True})
    assert changed.status_code == 200, changed.text


@pytest.fixture(scope="module")
def lab_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NotebookHub]:
    with dockyard_with_lab_jobs(tmp_path_factory.mktemp("labjobs"),
                                "dylj" + secrets.token_hex(3)) as notebooks:
        yield notebooks


class LabServer:
    """A user's running notebook server, called as JupyterLab calls it (with the user's
    token): the Jupyter contents API and jupyter-scheduler's REST API."""

    def __init__(self, notebooks: NotebookHub, name: str) -> None:
        self.notebooks = notebooks
        self.name = name
        self.token = notebooks.user(name)
        self.base = f"{notebooks.hub.url}/user/{name}"

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, f"{self.base}/{path.lstrip('/')}",
                                headers={"Authorization": f"token {self.token}"},
                                timeout=kwargs.pop("timeout", 120), **kwargs)

    def put_notebook(self, path: str, notebook: dict[str, Any]) -> None:
        directory = path.rpartition("/")[0]
        if directory:
            self.call("PUT", f"api/contents/{directory}", json={"type": "directory"})
        saved = self.call("PUT", f"api/contents/{path}",
                          json={"type": "notebook", "format": "json", "content": notebook})
        assert saved.status_code in (200, 201), saved.text

    def get_file(self, path: str) -> dict[str, Any]:
        answer = self.call("GET", f"api/contents/{path}")
        assert answer.status_code == 200, f"{path}: {answer.status_code} {answer.text}"
        return answer.json()

    def create_job(self, input_uri: str, **fields: Any) -> requests.Response:
        body = {"input_uri": input_uri, "name": input_uri.rsplit("/", 1)[-1].split(".")[0],
                "runtime_environment_name": NOTEBOOK_IMAGE, "compute_type": "default",
                "output_formats": ["ipynb", "html"], **fields}
        return self.call("POST", "scheduler/jobs", json=body)

    def create_definition(self, input_uri: str, **fields: Any) -> requests.Response:
        body = {"input_uri": input_uri, "name": input_uri.rsplit("/", 1)[-1].split(".")[0],
                "runtime_environment_name": NOTEBOOK_IMAGE, "compute_type": "default",
                "output_formats": ["ipynb", "html"], **fields}
        return self.call("POST", "scheduler/job_definitions", json=body)

    def definition(self, job_definition_id: str) -> dict[str, Any]:
        answer = self.call("GET", f"scheduler/job_definitions/{job_definition_id}")
        assert answer.status_code == 200, answer.text
        return answer.json()

    def job(self, job_id: str) -> dict[str, Any]:
        answer = self.call("GET", f"scheduler/jobs/{job_id}")
        assert answer.status_code == 200, answer.text
        return answer.json()

    def wait_for(self, job_id: str, statuses: set[str], timeout: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job = self.job(job_id)
        while job["status"] not in statuses and time.monotonic() < deadline:
            time.sleep(0.5)
            job = self.job(job_id)
        assert job["status"] in statuses, (job, self.notebooks.hub.log_tail())
        return job


# -- in the browser ----------------------------------------------------------------------------
SALES = notebook_json('print("RESULT", rate * 6)', parameters="rate = 1")


@pytest.fixture
def page() -> Iterator[Any]:
    executable = require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        # The form's time zone is the browser's.
        context = browser.new_context(viewport={"width": 1400, "height": 1000},
                                      timezone_id="Europe/Berlin")
        yield context.new_page()
        context.close()
        browser.close()


def reload_until(page: Any, ready: Any, timeout: float = 300) -> None:
    """Click the Notebook Jobs panel's Reload until ``ready`` shows (the panel does not
    refresh by itself)."""
    deadline = time.monotonic() + timeout
    while not ready.count():
        assert time.monotonic() < deadline, "the Notebook Jobs panel never showed it"
        page.get_by_role("button", name="Reload", exact=True).click()
        page.wait_for_timeout(1000)


@pytest.mark.browser
def test_a_notebook_job_created_in_jupyterlab_runs_in_dockyard(lab_hub: NotebookHub,
                                                                page: Any) -> None:
    from playwright.sync_api import expect

    lab_hub.start("lena")
    assert lab_hub.container("lena").attrs["Config"]["Image"] == NOTEBOOK_IMAGE
    lab = LabServer(lab_hub, "lena")
    lab.put_notebook("sales.ipynb", SALES)

    page.set_default_timeout(60_000)
    page.goto(lab_hub.hub.url + "/hub/login?next=%2Fuser%2Flena%2Flab")
    page.fill("#username_input", "lena")
    page.fill("#password_input", "user-pass-2024!")
    page.click("#login_submit")
    page.wait_for_url("**/user/lena/lab**")
    page.locator('.jp-DirListing-item[data-file-type="notebook"]',
                 has_text="sales.ipynb").click(button="right")
    page.locator(".lm-Menu-itemLabel", has_text="Create Job").click()

    # The pools are the compute types; a parameter Dockyard refuses comes back to the form
    # as Dockyard's sentence, naming the field as the form does.
    assert page.locator('input[name="computeType"]').input_value() == "default"
    page.get_by_title("Add new parameter").click()
    name, value = page.locator('input[name="parameter-0-name"]'), \
        page.locator('input[name="parameter-0-value"]')
    name.fill("2fast")
    value.fill("7")
    value.press("Tab")
    create = page.get_by_role("button", name="Create", exact=True)
    create.click()
    refused = page.locator(".MuiAlert-standardError")
    refused.wait_for()
    assert "Parameters (parameters): '2fast' is not a parameter name" in refused.inner_text()
    assert dockyard_api(lab_hub, "GET", "runs", lab.token).json()["runs"] == []

    name.fill("rate")
    name.press("Tab")
    create.click()
    row = page.locator("tr", has_text="sales.ipynb")
    reload_until(page, row.filter(has_text="Completed"))

    # Its files come from Dockyard into the workspace, and the executed copy opens in Lab.
    page.get_by_title('Download output files for "sales"').click()
    output_link = row.locator('a[title^="Open output file"]', has_text="Notebook")
    reload_until(page, output_link, timeout=120)
    output_link.click()
    output = page.locator(".jp-NotebookPanel .jp-OutputArea-output", has_text="RESULT")
    output.wait_for()
    assert output.inner_text().strip() == "RESULT 42"

    # In Dockyard it is lena's notebook run, with the parameter typed and the executed copy.
    [run] = dockyard_api(lab_hub, "GET", "runs?kind=notebook", lab.token).json()["runs"]
    assert (run["status"], run["image"], run["pool"]) == ("SUCCEEDED", NOTEBOOK_IMAGE, "default")
    assert run["notebook"]["name"] == "sales.ipynb"
    assert run["notebook"]["parameters"] == {"rate": 7}
    job = lab.job(f"dockyard-{run['id']}")
    downloaded = {f["file_format"]: f["file_path"] for f in job["job_files"]}
    assert downloaded["ipynb"].startswith(f"jobs/sales-dockyard-{run['id']}/sales-")
    executed = nbformat.reads(dockyard_api(
        lab_hub, "GET", f"runs/{run['id']}/artifacts/output.ipynb", lab.token).text, as_version=4)
    in_lab = lab.get_file(downloaded["ipynb"])["content"]
    assert [(c["source"], c.get("outputs")) for c in in_lab["cells"]] == \
        [(c["source"], c.get("outputs")) for c in executed.cells]
    assert lab.get_file(downloaded["input"])["content"]["cells"][0]["source"] == "rate = 1"

    # Run on a schedule: the form's schedule (weekdays at midnight, the browser's time zone)
    # becomes a Dockyard definition, shown in the Job Definitions tab.
    page.locator('.jp-DirListing-item[data-file-type="notebook"]',
                 has_text="sales.ipynb").click(button="right")
    page.locator(".lm-Menu-itemLabel", has_text="Create Job").click()
    # The form is filled in once the environments have come (the compute type with them).
    expect(page.locator('input[name="computeType"]')).to_have_value("default")
    page.get_by_title("Add new parameter").click()
    page.locator('input[name="parameter-0-name"]').fill("rate")
    page.locator('input[name="parameter-0-value"]').fill("2")
    # Leave the field first, as a person does: the form checks it on leaving, and a choice
    # made while it is being checked is lost.
    page.locator('input[name="parameter-0-value"]').press("Tab")
    page.locator('input[name="createType"][value="JobDefinition"]').check()
    create.click()
    listed = page.locator("tr", has_text="sales.ipynb").filter(
        has=page.get_by_title('Open detail view for "sales"'))
    listed.filter(has_text="Active").wait_for()
    [definition] = dockyard_api(lab_hub, "GET", "definitions", lab.token).json()["definitions"]
    assert (definition["name"], definition["kind"], definition["paused"]) == \
        ("sales", "notebook", False)
    assert (definition["schedule"]["cron"], definition["schedule"]["timezone"]) == \
        ("0 0 * * MON-FRI", "Europe/Berlin")
    assert definition["notebook"]["parameters"] == {"rate": 2}
    assert len(definition["next_runs"]) == 5

    page.goto(lab_hub.hub.service(f"jobs/runs/{run['id']}"))
    assert page.locator("#notebook-parameters").inner_text().split() == ["rate", "7"]
    page.frame_locator("#notebook-frame").get_by_text("RESULT 42").wait_for()
    lab_hub.stop("lena")


# -- what the front end calls ------------------------------------------------------------------
def test_states_errors_and_pages_map_between_lab_and_dockyard(lab_hub: NotebookHub) -> None:
    lab_hub.start("nils")
    lab = LabServer(lab_hub, "nils")
    lab.put_notebook("work/fails.ipynb", notebook_json("x = 1", "raise ValueError('boom')"))
    lab.put_notebook("work/sleeps.ipynb", notebook_json("import time; time.sleep(600)"))
    lab.put_notebook("work/quick.ipynb", notebook_json("print('quick')"))

    [environment] = lab.call("GET", "scheduler/runtime_environments").json()
    assert environment["name"] == NOTEBOOK_IMAGE
    assert environment["compute_types"] == ["default"]
    assert "python3" in environment["metadata"]["kernels"]

    # Dockyard's refusals, field by field, as the form shows them; nothing queued.
    refusals = {
        "image": lab.create_job("work/quick.ipynb", runtime_environment_name="no/such:image"),
        "pool": lab.create_job("work/quick.ipynb", compute_type="nowhere"),
        "folder": lab.create_job("work/quick.ipynb", package_input_folder=True),
        "missing": lab.create_job("work/absent.ipynb"),
    }
    messages = {what: answer.json()["message"] for what, answer in refusals.items()}
    assert all(answer.status_code == 500 for answer in refusals.values()), messages
    assert messages["image"].startswith("Invalid input: Environment (image): ")
    assert messages["pool"].startswith("Invalid input: Compute type (pool): ")
    assert "untick 'Run job with input folder'" in messages["folder"]
    assert messages["missing"] == "Input path 'work/absent.ipynb' does not exist."
    assert lab.call("GET", "scheduler/job_definitions").json()["job_definitions"] == []
    assert dockyard_api(lab_hub, "GET", "runs", lab.token).json()["runs"] == []

    fails = lab.create_job("work/fails.ipynb").json()["job_id"]
    sleeps = lab.create_job("work/sleeps.ipynb").json()["job_id"]
    quick = lab.create_job("work/quick.ipynb", idempotency_token="nils-quick-1").json()["job_id"]
    again = lab.create_job("work/quick.ipynb", idempotency_token="nils-quick-1")
    assert again.status_code == 409, again.text

    # A cell that raised: FAILED, with Dockyard's reason naming the cell.
    failed = lab.wait_for(fails, FINAL)
    assert failed["status"] == "FAILED"
    assert "cell 2" in failed["status_message"] and "ValueError: boom" in \
        failed["status_message"]
    # Stop (the panel's stop button) cancels the Dockyard run.
    lab.wait_for(sleeps, {"IN_PROGRESS"})
    assert lab.call("PATCH", f"scheduler/jobs/{sleeps}",
                    json={"status": "STOPPED"}).status_code == 204
    assert lab.wait_for(sleeps, FINAL)["status"] == "STOPPED"
    assert lab.wait_for(quick, FINAL)["status"] == "COMPLETED"

    # Dockyard keeps runs: deleting a finished job is refused with a reason.
    refused = lab.call("DELETE", f"scheduler/jobs/{fails}")
    assert refused.status_code == 500
    assert refused.json()["message"].startswith("Dockyard keeps every run")
    runs = {run["id"]: run for run in dockyard_api(lab_hub, "GET", "runs?kind=notebook",
                                                   lab.token).json()["runs"]}
    assert {f"dockyard-{run_id}" for run_id in runs} == {fails, sleeps, quick}
    assert runs[int(quick.split("-")[1])]["tags"] == ["idempotency:nils-quick-1"]

    # A command run of nils's is no notebook job: not listed, not opened, not stopped.
    command = dockyard_api(lab_hub, "POST", "runs", lab.token, json={"command": "echo hi"})
    assert command.status_code == 201, command.text
    command_job = f"dockyard-{command.json()['id']}"
    for method, path in (("GET", command_job), ("DELETE", command_job)):
        answer = lab.call(method, f"scheduler/jobs/{path}")
        assert answer.json()["message"] == f"Dockyard run {command.json()['id']} is not a " \
            "notebook job", (method, answer.text)

    # The panel's pages: newest first, the total known once the last page is reached.
    first = lab.call("GET", "scheduler/jobs", params={"max_items": 2}).json()
    assert [job["job_id"] for job in first["jobs"]] == [quick, sleeps]
    assert first["total_count"] == -1 and first["next_token"]
    last = lab.call("GET", "scheduler/jobs", params={
        "max_items": 2, "next_token": first["next_token"]}).json()
    assert [job["job_id"] for job in last["jobs"]] == [fails]
    assert last["total_count"] == 3 and "next_token" not in last
    stopped = lab.call("GET", "scheduler/jobs", params={"status": "STOPPED"}).json()
    assert [job["job_id"] for job in stopped["jobs"]] == [sleeps]
    assert lab.call("GET", "scheduler/jobs/count",
                    params={"status": "COMPLETED"}).json() == {"count": 1}

    # Another user's run is not a job of nils's, whatever its id.
    other = lab.call("GET", "scheduler/jobs/dockyard-999999")
    assert other.status_code == 500 and "not found" in other.json()["message"].lower()

    # The failed run's files: its partial executed notebook and the input, no HTML needed.
    assert lab.call("GET", f"scheduler/jobs/{fails}/download_files",
                    params={"redownload": "false"}).status_code == 204
    files = {f["file_format"]: f["file_path"] for f in lab.job(fails)["job_files"]}
    executed = lab.get_file(files["ipynb"])["content"]
    assert any(output.get("ename") == "ValueError" for cell in executed["cells"]
               for output in cell.get("outputs", []))
    assert files["ipynb"].startswith(f"jobs/fails-{fails}/")

    # Dockyard keeps the jobs: the scheduler extension wrote no database into the home.
    code, found = lab_hub.run_in(lab_hub.container("nils"), "find", "/home/jovyan",
                                 "-name", "scheduler*")
    assert (code, found) == (0, "")
    lab_hub.stop("nils")


def epoch_ms(timestamp: str) -> int:
    return int(datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp() * 1000)


def test_job_definitions_are_dockyard_schedules(lab_hub: NotebookHub) -> None:
    lab_hub.start("olga")
    lab = LabServer(lab_hub, "olga")
    lab.put_notebook("reports/daily.ipynb", SALES)

    # A cron Dockyard finds too frequent comes back as its sentence; nothing is saved.
    refused = lab.create_definition("reports/daily.ipynb", schedule="*/5 * * * *",
                                    timezone="UTC")
    assert refused.status_code == 500
    assert refused.json()["message"] == (
        "Invalid input: Schedule (schedule.cron): fires 5 min apart at times; schedules may "
        "fire at most every 1 h (DOCKYARD_SCHEDULE_MIN_SECONDS)")
    assert dockyard_api(lab_hub, "GET", "definitions", lab.token).json()["definitions"] == []

    # The job's name becomes a valid Dockyard name, numbered when it is taken.
    created = lab.create_definition("reports/daily.ipynb", name="Daily report",
                                    schedule="0 6 1 * *", timezone="Europe/Berlin",
                                    parameters={"rate": "3"})
    assert created.status_code == 200, created.text
    daily = created.json()["job_definition_id"]
    second = lab.create_definition("reports/daily.ipynb", name="Daily report",
                                   schedule="0 6 1 * *", timezone="UTC").json()
    [mine, other] = sorted(dockyard_api(lab_hub, "GET", "definitions", lab.token)
                           .json()["definitions"], key=lambda d: d["id"])
    assert (daily, second["job_definition_id"]) == (f"dockyard-def-{mine['id']}",
                                                    f"dockyard-def-{other['id']}")
    assert (mine["name"], other["name"]) == ("Daily-report", "Daily-report-2")
    assert (mine["owner"], mine["kind"], mine["image"], mine["pool"]) == \
        ("olga", "notebook", NOTEBOOK_IMAGE, "default")
    assert mine["schedule"] == {"cron": "0 6 1 * *", "timezone": "Europe/Berlin",
                                "concurrency": "allow", "missed": "skip"}
    assert mine["notebook"]["name"] == "daily.ipynb"
    assert mine["notebook"]["parameters"] == {"rate": 3}

    # Lab's list shows Dockyard's definitions with their next run.
    listed = lab.call("GET", "scheduler/job_definitions").json()
    assert listed["total_count"] == 2
    shown = {d["job_definition_id"]: d for d in listed["job_definitions"]}[daily]
    assert (shown["name"], shown["input_filename"], shown["schedule"], shown["timezone"],
            shown["active"], shown["compute_type"]) == \
        ("Daily-report", "daily.ipynb", "0 6 1 * *", "Europe/Berlin", True, "default")
    assert shown["parameters"] == {"rate": "3"}
    assert shown["next_run_time"] == epoch_ms(mine["next_runs"][0])
    assert shown["url"].endswith(f"/services/dockyard/jobs/definitions/{mine['id']}")

    # Pause and resume (the panel's buttons) are Dockyard's.
    assert lab.call("PATCH", f"scheduler/job_definitions/{daily}",
                    json={"active": False}).status_code == 204
    paused = dockyard_api(lab_hub, "GET", f"definitions/{mine['id']}", lab.token).json()
    assert (paused["paused"], paused["next_runs"]) == (True, [])
    assert (lab.definition(daily)["active"], lab.definition(daily)["next_run_time"]) == \
        (False, None)
    assert lab.call("PATCH", f"scheduler/job_definitions/{daily}",
                    json={"active": True}).status_code == 204
    resumed = dockyard_api(lab_hub, "GET", f"definitions/{mine['id']}", lab.token).json()
    assert resumed["paused"] is False and len(resumed["next_runs"]) == 5
    assert lab.definition(daily)["active"] is True

    # The edit form's new schedule replaces Dockyard's; the notebook snapshot stays.
    edited = lab.call("PATCH", f"scheduler/job_definitions/{daily}", json={
        "schedule": "15 7 1 * *", "timezone": "UTC", "input_uri": "daily.ipynb"})
    assert edited.status_code == 204, edited.text
    now = dockyard_api(lab_hub, "GET", f"definitions/{mine['id']}", lab.token).json()
    assert now["schedule"]["cron"] == "15 7 1 * *" and now["schedule"]["timezone"] == "UTC"
    assert now["notebook"] == mine["notebook"] and now["name"] == "Daily-report"
    too_often = lab.call("PATCH", f"scheduler/job_definitions/{daily}",
                         json={"schedule": "*/10 * * * *", "timezone": "UTC"})
    assert too_often.json()["message"].startswith(
        "Invalid input: Schedule (schedule.cron): fires 10 min apart")

    # Run now, from the definition: its snapshot with this parameter over its own.
    ran = lab.call("POST", f"scheduler/job_definitions/{daily}/jobs",
                   json={"parameters": {"rate": "5"}})
    assert ran.status_code == 200, ran.text
    job_id = ran.json()["job_id"]
    job = lab.wait_for(job_id, FINAL)
    assert (job["status"], job["job_definition_id"], job["name"]) == \
        ("COMPLETED", daily, "Daily-report")
    run = dockyard_api(lab_hub, "GET", f"runs/{job_id.split('-')[1]}", lab.token).json()
    assert (run["definition_id"], run["notebook"]["parameters"]) == (mine["id"], {"rate": 5})
    executed = nbformat.reads(dockyard_api(
        lab_hub, "GET", f"runs/{run['id']}/artifacts/output.ipynb", lab.token).text,
        as_version=4)
    assert any("RESULT 30" in output.get("text", "") for cell in executed.cells
               for output in cell.get("outputs", []))
    # The definition's page in Lab lists its runs.
    of_daily = lab.call("GET", "scheduler/jobs", params={"job_definition_id": daily}).json()
    assert [j["job_id"] for j in of_daily["jobs"]] == [job_id]
    assert lab.call("GET", "scheduler/jobs", params={
        "job_definition_id": second["job_definition_id"]}).json()["jobs"] == []

    # A command definition is no notebook job definition of Lab's.
    command = dockyard_api(lab_hub, "POST", "definitions", lab.token,
                           json={"name": "nightly-shell", "command": "echo hi"})
    assert command.status_code == 201, command.text
    answer = lab.call("GET", f"scheduler/job_definitions/dockyard-def-{command.json()['id']}")
    assert answer.json()["message"] == f"Dockyard job definition {command.json()['id']} runs " \
        "a command, not a notebook"
    assert lab.call("GET", "scheduler/job_definitions").json()["total_count"] == 2

    # Deleting the definition deletes Dockyard's; its run stays.
    for job_definition_id in (daily, second["job_definition_id"]):
        assert lab.call("DELETE", f"scheduler/job_definitions/{job_definition_id}"
                        ).status_code == 204
    assert dockyard_api(lab_hub, "GET", f"definitions/{mine['id']}",
                        lab.token).status_code == 404
    assert lab.call("GET", "scheduler/job_definitions").json()["job_definitions"] == []
    assert lab.job(job_id)["status"] == "COMPLETED"
    lab_hub.stop("olga")
