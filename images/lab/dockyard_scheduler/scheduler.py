"""JupyterLab's Notebook Jobs as Dockyard runs: a job created in Lab is a notebook run in
Dockyard (a snapshot of the notebook, run with papermill in a container of a catalog
image on one of the user's pools), and the jobs Lab lists are the user's notebook runs.

Nothing is kept in the notebook server: Dockyard holds the runs, their parameters and
their files, so the list is the same in every server and on Dockyard's Jobs page.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from typing import Any

from jupyter_scheduler.exceptions import IdempotencyTokenError, InputUriError, SchedulerError
from jupyter_scheduler.executors import ExecutionManager
from jupyter_scheduler.models import (
    CountJobsQuery,
    CreateJob,
    CreateJobDefinition,
    CreateJobFromDefinition,
    DescribeJob,
    DescribeJobDefinition,
    JobFeature,
    ListJobDefinitionsQuery,
    ListJobDefinitionsResponse,
    ListJobsQuery,
    ListJobsResponse,
    Status,
    UpdateJob,
    UpdateJobDefinition,
)
from jupyter_scheduler.scheduler import BaseScheduler
from traitlets import Unicode, default

from dockyard_scheduler.api import DockyardAPI
from dockyard_scheduler.runs import (
    ACTIVE_STATES,
    dockyard_sort,
    iso_time,
    job_fields,
    lab_job_id,
    page_token,
    parameter_value,
    read_page_token,
    run_id_of,
    sort_page,
    states_of,
)

NO_SCHEDULES = ("Schedules are not available in Dockyard yet: choose 'Run now'. (A run can "
                "be repeated from Dockyard's Jobs page.)")
KEPT_RUNS = ("Dockyard keeps every run, so a finished notebook job cannot be deleted; it "
             "stays on Dockyard's Jobs page. Its downloaded files (the jobs folder) can be "
             "deleted in the file browser.")
# Dockyard's tag syntax; an idempotency token becomes the tag "idempotency:<token>".
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/=-]{0,63}$")
IDEMPOTENCY_TAG = "idempotency:"
# Dockyard's largest page is an admin's setting (200 by default, at least 10).
PAGE_AT_MOST = 100
COUNT_PAGES_AT_MOST = 50


class DockyardExecutionManager(ExecutionManager):
    """What Dockyard's notebook jobs support, for jupyter-scheduler's config endpoint.
    Notebooks never execute in this server: Dockyard's worker runs them."""

    def execute(self) -> None:
        raise SchedulerError("notebook jobs run in Dockyard, not in the notebook server")

    # Not a classmethod: jupyter-scheduler's config handler calls it on the class with the
    # class as argument, as its own DefaultExecutionManager defines it.
    def supported_features(self) -> dict[JobFeature, bool]:
        return {
            JobFeature.job_name: False,
            JobFeature.parameters: True,
            JobFeature.output_formats: True,
            JobFeature.job_definition: False,
            JobFeature.idempotency_token: True,
            JobFeature.tags: True,
            JobFeature.email_notifications: False,
            JobFeature.timeout_seconds: False,
            JobFeature.retry_on_timeout: False,
            JobFeature.max_retries: False,
            JobFeature.min_retry_interval_millis: False,
            JobFeature.output_filename_template: False,
            JobFeature.stop_job: True,
            JobFeature.delete_job: False,
        }


class DockyardScheduler(BaseScheduler):
    """jupyter-scheduler's scheduler interface over Dockyard's runs API."""

    # The extension starts the task runner of schedulers that have one; schedules (job
    # definitions) are not Dockyard's yet, so there is none.
    task_runner = None
    db_url = Unicode(help="Unused: Dockyard keeps the jobs (the extension passes one).")

    @default("execution_manager_class")
    def _dockyard_execution(self) -> type[ExecutionManager]:
        return DockyardExecutionManager

    def __init__(self, root_dir: str, environments_manager: Any, db_url: str = "",
                 config: Any = None, **kwargs: Any) -> None:
        super().__init__(root_dir=root_dir, environments_manager=environments_manager,
                         config=config, **kwargs)
        self.db_url = db_url
        self._api: DockyardAPI | None = None

    @property
    def api(self) -> DockyardAPI:
        if self._api is None:
            self._api = DockyardAPI.from_env()
        return self._api

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(getattr(self.api, method), *args, **kwargs)

    # -- jobs ------------------------------------------------------------------------------
    async def create_job(self, model: CreateJob) -> str:
        if model.package_input_folder:
            raise SchedulerError("Dockyard runs the notebook file alone: untick 'Run job with "
                                 "input folder' and read other files from your data instead.")
        if not self.file_exists(model.input_uri):
            raise InputUriError(model.input_uri)
        if not model.runtime_environment_name:
            raise SchedulerError("Environment: choose the image to run the notebook in.")
        with open(os.path.join(self.root_dir, model.input_uri), "rb") as notebook:
            content = notebook.read()
        tags = list(model.tags or [])
        if model.idempotency_token:
            tags.append(await self._idempotency_tag(model.idempotency_token))
        fields = {
            "image": model.runtime_environment_name,
            "parameters": json.dumps({name: parameter_value(value)
                                      for name, value in (model.parameters or {}).items()}),
            "tags": json.dumps(tags),
        }
        if model.compute_type:
            fields["pool"] = model.compute_type
        name = os.path.basename(model.input_uri)
        run = await self._call("post", "/runs", data=fields,
                               files={"notebook": (name, content, "application/x-ipynb+json")})
        return lab_job_id(run["id"])

    async def _idempotency_tag(self, token: str) -> str:
        tag = IDEMPOTENCY_TAG + token
        if not _TAG.match(tag):
            raise SchedulerError("Idempotency token: at most 52 letters, digits and _ . : / = -")
        page = await self._call("get", "/runs", params={"kind": "notebook", "tag": tag,
                                                        "limit": 1, **self._owner()})
        if page["runs"]:
            raise IdempotencyTokenError(token)
        return tag

    def _owner(self) -> dict[str, str]:
        # An admin's token lists everyone's runs; Lab shows the server owner's own.
        return {"owner": self.api.user} if self.api.user else {}

    async def _notebook_run(self, job_id: str) -> dict[str, Any]:
        run = await self._call("get", f"/runs/{run_id_of(job_id)}")
        if run.get("kind") != "notebook":
            raise SchedulerError(f"Dockyard run {run['id']} is not a notebook job")
        return run

    def _describe(self, run: dict[str, Any], job_files: bool = True) -> DescribeJob:
        job = DescribeJob(**job_fields(run, self.api.run_page(run["id"])))
        if job_files:
            self.add_job_files(job)
        return job

    async def get_job(self, job_id: str, job_files: bool | None = True) -> DescribeJob:
        return self._describe(await self._notebook_run(job_id), bool(job_files))

    async def list_jobs(self, query: ListJobsQuery) -> ListJobsResponse:
        shown_before, cursor = read_page_token(query.next_token)
        wanted = int(query.max_items or 0)
        params: dict[str, Any] = {"kind": "notebook", "sort": dockyard_sort(query.sort_by),
                                  **self._owner()}
        if query.status is not None:
            states = states_of(query.status)
            if not states:
                return ListJobsResponse(jobs=[], total_count=0)
            params["status"] = states
        if query.tags:
            params["tag"] = query.tags[0]
        if query.start_time:
            params["since"] = iso_time(query.start_time)
        if cursor:
            params["cursor"] = cursor
        if wanted <= 0:  # JupyterLab asks for none to learn whether the extension is there
            return ListJobsResponse(jobs=[], total_count=0)
        params["limit"] = min(wanted, PAGE_AT_MOST)
        page = await self._call("get", "/runs", params=params)
        jobs = [self._describe(run) for run in page["runs"]]
        if query.tags:
            jobs = [job for job in jobs if set(query.tags) <= set(job.tags or [])]
        if query.name:
            jobs = [job for job in jobs if job.name.startswith(query.name)]
        next_cursor = page.get("next_cursor")
        return ListJobsResponse(
            jobs=sort_page(jobs, query.sort_by),
            # Unknown (-1) until the last page: Dockyard pages without counting.
            total_count=-1 if next_cursor else shown_before + len(jobs),
            next_token=page_token(shown_before + len(jobs), next_cursor),
        )

    async def count_jobs(self, query: CountJobsQuery) -> int:
        params: dict[str, Any] = {"kind": "notebook", "status": states_of(query.status),
                                  "limit": PAGE_AT_MOST, **self._owner()}
        if not params["status"]:
            return 0
        count = 0
        for _ in range(COUNT_PAGES_AT_MOST):
            page = await self._call("get", "/runs", params=params)
            count += len(page["runs"])
            if not page.get("next_cursor"):
                break
            params["cursor"] = page["next_cursor"]
        return count

    async def update_job(self, job_id: str, model: UpdateJob) -> None:
        if model.status == Status.STOPPED:
            await self.stop_job(job_id)
            return
        if model.name is not None or model.compute_type is not None:
            raise SchedulerError("A Dockyard run cannot be renamed or moved to another compute "
                                 "type after it was submitted; create a new job instead.")

    async def stop_job(self, job_id: str) -> None:
        run = await self._notebook_run(job_id)
        await self._call("post", f"/runs/{run['id']}/cancel")

    async def delete_job(self, job_id: str) -> None:
        """Dockyard keeps runs: deleting an active job cancels it; a finished one stays."""
        run = await self._notebook_run(job_id)
        if run["status"] in ACTIVE_STATES:
            await self._call("post", f"/runs/{run['id']}/cancel")
            return
        raise SchedulerError(KEPT_RUNS)

    def get_staging_paths(self, model: Any) -> dict[str, str]:
        # Job files come from Dockyard's API (DockyardJobFilesManager), not a staging area.
        return {}

    # -- schedules: not in Dockyard yet ----------------------------------------------------
    async def create_job_definition(self, model: CreateJobDefinition) -> str:
        raise SchedulerError(NO_SCHEDULES)

    async def update_job_definition(self, job_definition_id: str,
                                    model: UpdateJobDefinition) -> None:
        raise SchedulerError(NO_SCHEDULES)

    async def delete_job_definition(self, job_definition_id: str) -> None:
        raise SchedulerError(NO_SCHEDULES)

    async def get_job_definition(self, job_definition_id: str) -> DescribeJobDefinition:
        raise SchedulerError(NO_SCHEDULES)

    async def list_job_definitions(
        self, query: ListJobDefinitionsQuery
    ) -> ListJobDefinitionsResponse:
        return ListJobDefinitionsResponse(job_definitions=[], total_count=0)

    async def create_job_from_definition(self, job_definition_id: str,
                                         model: CreateJobFromDefinition) -> str:
        raise SchedulerError(NO_SCHEDULES)
