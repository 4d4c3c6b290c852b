"""How a Dockyard notebook run and a jupyter-scheduler job translate into each other:
ids, states, parameters, times, sorting and pages. Pure functions, no calls.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from typing import Any

from jupyter_scheduler.exceptions import SchedulerError
from jupyter_scheduler.models import SortDirection, SortField, Status

# jupyter-scheduler's URL pattern for a job id needs a dash: r"\w+(?:-\w+)+".
JOB_ID_PREFIX = "dockyard-"
_JOB_ID = re.compile(r"^dockyard-([1-9][0-9]{0,17})$")
# A job definition's id: "def" keeps it apart from a run's.
DEFINITION_ID_PREFIX = "dockyard-def-"

STATUS_OF_STATE = {
    "QUEUED": Status.QUEUED,
    "PENDING": Status.QUEUED,
    "RUNNING": Status.IN_PROGRESS,
    "SUCCEEDED": Status.COMPLETED,
    "FAILED": Status.FAILED,
    "TIMED_OUT": Status.FAILED,
    "CANCELLED": Status.STOPPED,
}
ACTIVE_STATES = frozenset({"QUEUED", "PENDING", "RUNNING"})
OUTPUT_FORMATS = ["ipynb", "html"]
#: What each job file of JupyterLab is called among the run's artifacts in Dockyard.
ARTIFACT_OF_FORMAT = {"ipynb": "output.ipynb", "html": "output.html", "input": "input.ipynb"}

# JupyterLab sorts by these; Dockyard pages by queue, start or finish time. Other keys
# (name, status) sort each page as it comes.
_DOCKYARD_SORT = {"create_time": "queued", "start_time": "started", "end_time": "finished"}


def lab_job_id(run_id: int) -> str:
    return f"{JOB_ID_PREFIX}{run_id}"


def lab_definition_id(definition_id: int) -> str:
    return f"{DEFINITION_ID_PREFIX}{definition_id}"


def run_id_of(job_id: str) -> int:
    match = _JOB_ID.match(job_id or "")
    if not match:
        raise SchedulerError(f"'{job_id}' is not a Dockyard notebook job")
    return int(match.group(1))


def states_of(status: Status) -> list[str]:
    """The Dockyard states shown in JupyterLab as ``status`` (none for CREATED, STOPPING)."""
    return [state for state, shown in STATUS_OF_STATE.items() if shown == status]


def parameter_value(text: str) -> str | int | float | bool | None:
    """A value typed in JupyterLab's form (always text) typed as papermill's ``-p`` and
    Dockyard's ``name=value`` lines type it: int, float, a boolean, null, else the text."""
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    stripped = text.strip()
    if stripped in ("true", "True"):
        return True
    if stripped in ("false", "False"):
        return False
    if stripped in ("null", "None"):
        return None
    return text


def parameter_text(value: Any) -> str:
    """A parameter Dockyard kept, as JupyterLab shows parameters (text)."""
    return value if isinstance(value, str) else json.dumps(value)


def milliseconds(timestamp: str | None) -> int | None:
    """An ISO 8601 time from Dockyard as JupyterLab's epoch milliseconds."""
    if not timestamp:
        return None
    moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def iso_time(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, tz=timezone.utc).isoformat()


def job_name(notebook_name: str) -> str:
    return os.path.splitext(notebook_name)[0] or notebook_name


def job_fields(run: dict[str, Any], run_page: str) -> dict[str, Any]:
    """A Dockyard run (RunOut) as the fields of jupyter-scheduler's DescribeJob."""
    notebook = run.get("notebook") or {}
    # A name from Dockyard is a file name already; never let it become a path here.
    input_filename = os.path.basename(str(notebook.get("name") or ""))
    if input_filename in ("", ".", ".."):
        input_filename = f"run-{run['id']}.ipynb"
    created = milliseconds(run["queued_at"]) or 0
    started = milliseconds(run.get("started_at"))
    finished = milliseconds(run.get("finished_at"))
    definition_id = run.get("definition_id")
    return {
        "job_id": lab_job_id(run["id"]),
        # A run of a definition is named after it, as jupyter-scheduler names its own.
        "name": run.get("definition_name") or job_name(input_filename),
        "job_definition_id": lab_definition_id(definition_id) if definition_id else None,
        "input_filename": input_filename,
        "runtime_environment_name": run.get("image") or "",
        "runtime_environment_parameters": {},
        "compute_type": run.get("pool"),
        "output_formats": list(OUTPUT_FORMATS),
        "parameters": {name: parameter_text(value)
                       for name, value in (notebook.get("parameters") or {}).items()},
        "tags": list(run.get("tags") or []),
        "url": run_page,
        "create_time": created,
        "update_time": max(t for t in (created, started, finished) if t is not None),
        "start_time": started,
        "end_time": finished,
        "status": STATUS_OF_STATE.get(run["status"], Status.QUEUED),
        "status_message": run.get("reason") or None,
        "package_input_folder": False,
    }


def dockyard_sort(sort_by: list[SortField]) -> str:
    """Dockyard's ``sort`` for JupyterLab's first sort key, newest first by default."""
    for field in sort_by[:1]:
        key = _DOCKYARD_SORT.get(field.name)
        if key:
            return key if field.direction == SortDirection.asc else f"-{key}"
    return "-queued"


def sort_page(jobs: list[Any], sort_by: list[SortField]) -> list[Any]:
    """A page sorted by a key Dockyard does not sort by (name, status …)."""
    if not sort_by or sort_by[0].name in _DOCKYARD_SORT:
        return jobs
    field = sort_by[0]
    return sorted(jobs, key=lambda job: str(getattr(job, field.name, "") or ""),
                  reverse=field.direction == SortDirection.desc)


# JupyterLab's next_token carries how many jobs came before, so that the last page can
# tell the total; Dockyard's cursor is opaque text after the colon.
def page_token(shown_before: int, cursor: str | None) -> str | None:
    return f"{shown_before}:{cursor}" if cursor else None


def read_page_token(token: str | None) -> tuple[int, str | None]:
    if not token:
        return 0, None
    before, _, cursor = token.partition(":")
    if not before.isdigit() or not cursor:
        raise SchedulerError("the list of notebook jobs changed; reload it")
    return int(before), cursor
