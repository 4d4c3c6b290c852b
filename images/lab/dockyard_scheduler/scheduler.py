"""JupyterLab's Notebook Jobs as Dockyard runs: a job created in Lab is a notebook run in
Dockyard (a snapshot of the notebook, run with papermill in a container of a catalog
image on one of the user's pools), and the jobs Lab lists are the user's notebook runs.
A job definition ("Run on a schedule") is a Dockyard notebook job definition with a
schedule, fired by Dockyard's worker whether or not the notebook server runs.

Nothing is kept in the notebook server: Dockyard holds the runs, the definitions, their
parameters and their files, so the lists are the same in every server and on Dockyard's
Jobs page.
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

from dockyard_scheduler.api import DockyardAPI, DockyardError
from dockyard_scheduler.definitions import (
    DockyardJobDefinition,
    DockyardJobDefinitions,
    definition_fields,
    definition_id_of,
    matches,
    put_body,
    read_offset,
    schedule_of,
    sort_definitions,
    unique_name,
    valid_name,
)
from dockyard_scheduler.runs import (
    ACTIVE_STATES,
    dockyard_sort,
    iso_time,
    job_fields,
    lab_definition_id,
    lab_job_id,
    page_token,
    parameter_value,
    read_page_token,
    run_id_of,
    sort_page,
    states_of,
)

INPUT_FOLDER = ("Dockyard runs the notebook file alone: untick 'Run job with input folder' "
                "and read other files from your data instead.")
KEPT_RUNS = ("Dockyard keeps every run, so a finished notebook job cannot be deleted; it "
             "stays on Dockyard's Jobs page. Its downloaded files (the jobs folder) can be "
             "deleted in the file browser.")
# Dockyard's tag syntax; an idempotency token becomes the tag "idempotency:<token>".
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/=-]{0,63}$")
IDEMPOTENCY_TAG = "idempotency:"
# Dockyard's largest page is an admin's setting (200 by default, at least 10).
PAGE_AT_MOST = 100
COUNT_PAGES_AT_MOST = 50
# Numbered names tried when the one wanted is taken by a definition saved meanwhile.
NAME_ATTEMPTS = 20


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
            JobFeature.job_definition: True,
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
    """jupyter-scheduler's scheduler interface over Dockyard's runs and job definitions."""

    # The extension starts the task runner of schedulers that have one; Dockyard's worker
    # fires the schedules, so there is none here.
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
        content = self._read_input(model)
        tags = list(model.tags or [])
        if model.idempotency_token:
            tags.append(await self._idempotency_tag(model.idempotency_token))
        fields = {
            "image": model.runtime_environment_name,
            "parameters": json.dumps(typed_parameters(model.parameters)),
            "tags": json.dumps(tags),
        }
        if model.compute_type:
            fields["pool"] = model.compute_type
        run = await self._call("post", "/runs", data=fields,
                               files=notebook_part(model.input_uri, content))
        return lab_job_id(run["id"])

    def _read_input(self, model: CreateJob | CreateJobDefinition) -> bytes:
        """The notebook the form names, read now: Dockyard keeps this snapshot."""
        if model.package_input_folder:
            raise SchedulerError(INPUT_FOLDER)
        if not self.file_exists(model.input_uri):
            raise InputUriError(model.input_uri)
        if not model.runtime_environment_name:
            raise SchedulerError("Environment: choose the image to run the notebook in.")
        with open(os.path.join(self.root_dir, model.input_uri), "rb") as notebook:
            return notebook.read()

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
        if query.job_definition_id:
            params["definition"] = definition_id_of(query.job_definition_id)
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

    # -- job definitions ------------------------------------------------------------------
    async def create_job_definition(self, model: CreateJobDefinition) -> str:
        content = self._read_input(model)
        fields = {
            "image": model.runtime_environment_name,
            "parameters": json.dumps(typed_parameters(model.parameters)),
            "tags": json.dumps(list(model.tags or [])),
        }
        schedule = schedule_of(model.schedule, model.timezone)
        if schedule is not None:
            fields["schedule"] = json.dumps(schedule)
        if model.compute_type:
            fields["pool"] = model.compute_type
        name = valid_name(model.name, model.input_filename or model.input_uri)
        taken = {definition["name"] for definition in await self._own_definitions()}
        for _ in range(NAME_ATTEMPTS):
            fields["name"] = unique_name(name, taken)
            try:
                definition = await self._call(
                    "post", "/definitions", data=fields,
                    files=notebook_part(model.input_uri, content))
            except DockyardError as exc:
                # Someone saved a definition of that name meanwhile: take the next number.
                if exc.status != 409:
                    raise
                taken.add(fields["name"])
                continue
            return lab_definition_id(definition["id"])
        raise SchedulerError(f"Job name: '{name}' and the next {NAME_ATTEMPTS} numbered names "
                             "are taken; choose another name.")

    async def _own_definitions(self) -> list[dict[str, Any]]:
        """The server owner's definitions (an admin's token lists everyone's)."""
        found = (await self._call("get", "/definitions"))["definitions"]
        return [definition for definition in found
                if not self.api.user or definition["owner"] == self.api.user]

    async def _notebook_definition(self, job_definition_id: str) -> dict[str, Any]:
        definition = await self._call(
            "get", f"/definitions/{definition_id_of(job_definition_id)}")
        if definition.get("kind") != "notebook":
            raise SchedulerError(f"Dockyard job definition {definition['id']} runs a command, "
                                 "not a notebook")
        return definition

    def _describe_definition(self, definition: dict[str, Any]) -> DockyardJobDefinition:
        return DockyardJobDefinition(**definition_fields(
            definition, self.api.definition_page(definition["id"])))

    async def get_job_definition(self, job_definition_id: str) -> DescribeJobDefinition:
        return self._describe_definition(await self._notebook_definition(job_definition_id))

    async def list_job_definitions(
        self, query: ListJobDefinitionsQuery
    ) -> ListJobDefinitionsResponse:
        offset = read_offset(query.next_token)
        described = [self._describe_definition(definition)
                     for definition in await self._own_definitions()
                     if definition.get("kind") == "notebook"]
        shown = sort_definitions(
            [item for item in described
             if matches(item, query.name, query.tags, query.create_time)], query.sort_by)
        wanted = max(int(query.max_items or 0), 0)
        page = shown[offset:offset + wanted]
        after = offset + len(page)
        return DockyardJobDefinitions(job_definitions=page, total_count=len(shown),
                                      next_token=str(after) if after < len(shown) else None)

    async def update_job_definition(self, job_definition_id: str,
                                    model: UpdateJobDefinition) -> None:
        """Pause or resume (``active``); a new schedule, time zone, name, environment,
        compute type, parameters or tags replace the definition's (its notebook stays
        the snapshot taken when it was created)."""
        definition = await self._notebook_definition(job_definition_id)
        changes = definition_changes(definition, model)
        wants_active = model.active
        if changes:
            if wants_active is not None:
                changes["paused"] = not wants_active
            path = f"/definitions/{definition['id']}"
            await self._call("put", path, json=put_body(definition, **changes))
        elif wants_active is not None and wants_active == bool(definition.get("paused")):
            action = "resume" if wants_active else "pause"
            await self._call("post", f"/definitions/{definition['id']}/{action}")

    async def delete_job_definition(self, job_definition_id: str) -> None:
        """The definition goes; the runs it made stay in Dockyard (and in the Jobs list)."""
        definition = await self._notebook_definition(job_definition_id)
        await self._call("delete", f"/definitions/{definition['id']}")

    async def create_job_from_definition(self, job_definition_id: str,
                                         model: CreateJobFromDefinition) -> str:
        """Run the definition now: its notebook snapshot, with these parameters over its
        own."""
        definition = await self._notebook_definition(job_definition_id)
        body: dict[str, Any] = {"definition_id": definition["id"]}
        if model.parameters:
            body["parameters"] = typed_parameters(model.parameters)
        run = await self._call("post", "/runs", json=body)
        return lab_job_id(run["id"])


def typed_parameters(parameters: dict[str, str] | None) -> dict[str, Any]:
    return {name: parameter_value(value) for name, value in (parameters or {}).items()}


def notebook_part(input_uri: str, content: bytes) -> dict[str, tuple[str, bytes, str]]:
    return {"notebook": (os.path.basename(input_uri), content, "application/x-ipynb+json")}


def definition_changes(definition: dict[str, Any],
                       model: UpdateJobDefinition) -> dict[str, Any]:
    """What ``model`` changes in the Dockyard definition, as DefinitionIn fields. Fields
    left out (None) stay; the input file is the definition's snapshot, which JupyterLab's
    edit form sends back unchanged."""
    changes: dict[str, Any] = {}
    schedule = definition.get("schedule") or {}
    cron = model.schedule if model.schedule is not None else schedule.get("cron")
    timezone = model.timezone if model.timezone is not None else schedule.get("timezone")
    wanted = schedule_of(cron, timezone)
    # The policies Dockyard keeps (concurrency, missed) are not in Lab's form: they stay.
    replaced = {**schedule, **wanted} if wanted else None
    if replaced != (definition.get("schedule") or None):
        changes["schedule"] = replaced
    if model.name is not None and model.name != definition["name"]:
        changes["name"] = model.name
    if model.runtime_environment_name and \
            model.runtime_environment_name != definition.get("image"):
        changes["image"] = model.runtime_environment_name
    if model.compute_type and model.compute_type != definition.get("pool"):
        changes["pool"] = model.compute_type
    if model.parameters is not None:
        parameters = typed_parameters(model.parameters)
        if parameters != ((definition.get("notebook") or {}).get("parameters") or {}):
            changes["parameters"] = parameters
    if model.tags is not None and list(model.tags) != list(definition.get("tags") or []):
        changes["tags"] = list(model.tags)
    return changes
