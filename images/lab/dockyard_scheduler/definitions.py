"""How a Dockyard notebook job definition and a jupyter-scheduler job definition translate
into each other: ids, names, schedules, the fields Lab shows, sorting and pages. Pure
functions, no calls.
"""

from __future__ import annotations

import os
import re
from typing import Any

from jupyter_scheduler.exceptions import SchedulerError
from jupyter_scheduler.models import (
    DescribeJobDefinition,
    ListJobDefinitionsResponse,
    SortDirection,
    SortField,
)

from dockyard_scheduler.runs import (
    OUTPUT_FORMATS,
    lab_definition_id,
    milliseconds,
    parameter_text,
)

# jupyter-scheduler's URL pattern for a definition id needs a dash (see runs.py).
_DEFINITION_ID = re.compile(r"^dockyard-def-([1-9][0-9]{0,17})$")
DEFAULT_TIMEZONE = "UTC"
# Dockyard's definition names: ^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$, unique per owner.
NAME_AT_MOST = 128
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_.-]+")
_NAME_START = re.compile(r"^[^A-Za-z0-9]+")
FALLBACK_NAME = "notebook"
# Room kept at the end of a name for "-<n>" when the name is taken.
_SUFFIX_ROOM = 6


class DockyardJobDefinition(DescribeJobDefinition):
    """jupyter-scheduler's job definition with what Dockyard knows besides: when its
    schedule fires next and its page in Dockyard. (JupyterLab's panel ignores fields it
    does not know; the REST API returns them.)"""

    #: The next fire time in epoch milliseconds; None when unscheduled or paused.
    next_run_time: int | None = None
    url: str | None = None


class DockyardJobDefinitions(ListJobDefinitionsResponse):
    job_definitions: list[DockyardJobDefinition] = []


def definition_id_of(job_definition_id: str) -> int:
    match = _DEFINITION_ID.match(job_definition_id or "")
    if not match:
        raise SchedulerError(f"'{job_definition_id}' is not a Dockyard notebook job definition")
    return int(match.group(1))


def valid_name(wanted: str, input_filename: str) -> str:
    """A Dockyard definition name for what was typed as the job's name: runs of other
    characters become '-', it starts with a letter or digit; the notebook's name (then
    'notebook') when nothing usable is left."""
    for candidate in (wanted, os.path.splitext(input_filename)[0]):
        name = _NAME_START.sub("", _NOT_IN_NAME.sub("-", candidate or "").strip())
        name = name[:NAME_AT_MOST - _SUFFIX_ROOM].rstrip("-")
        if name:
            return name
    return FALLBACK_NAME


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name-2``, ``name-3`` … whichever the owner does not have yet."""
    if name not in taken:
        return name
    number = 2
    while f"{name}-{number}" in taken:
        number += 1
    return f"{name}-{number}"


def schedule_of(cron: str | None, timezone: str | None) -> dict[str, str] | None:
    """Dockyard's schedule for the cron and time zone of JupyterLab's form; None: a
    definition without a schedule (it runs when asked)."""
    if cron is None or not cron.strip():
        return None
    return {"cron": cron.strip(), "timezone": timezone or DEFAULT_TIMEZONE}


def definition_fields(definition: dict[str, Any], page: str) -> dict[str, Any]:
    """A Dockyard notebook definition (DefinitionOut) as DockyardJobDefinition's fields."""
    notebook = definition.get("notebook") or {}
    input_filename = os.path.basename(str(notebook.get("name") or ""))
    if input_filename in ("", ".", ".."):
        input_filename = f"{definition['name']}.ipynb"
    schedule = definition.get("schedule") or {}
    next_runs = definition.get("next_runs") or []
    created = milliseconds(definition["created_at"]) or 0
    return {
        "job_definition_id": lab_definition_id(definition["id"]),
        "name": definition["name"],
        "input_filename": input_filename,
        "runtime_environment_name": definition.get("image") or "",
        "runtime_environment_parameters": {},
        "compute_type": definition.get("pool"),
        "output_formats": list(OUTPUT_FORMATS),
        "parameters": {name: parameter_text(value)
                       for name, value in (notebook.get("parameters") or {}).items()},
        "tags": list(definition.get("tags") or []),
        "schedule": schedule.get("cron"),
        "timezone": schedule.get("timezone"),
        "create_time": created,
        "update_time": milliseconds(definition.get("updated_at")) or created,
        "active": not definition.get("paused"),
        "package_input_folder": False,
        "next_run_time": milliseconds(next_runs[0]) if next_runs else None,
        "url": page,
    }


def put_body(definition: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """What ``PUT /definitions/{id}`` needs to keep the definition as it is but for
    ``changes`` (PUT replaces the whole definition). No notebook and no command: a notebook
    definition saved without a notebook keeps its snapshot."""
    notebook = definition.get("notebook") or {}
    body = {key: definition.get(key) for key in (
        "name", "description", "image", "pool", "cpu", "memory_mb", "gpu", "env", "tags",
        "timeout_seconds", "max_retries", "schedule", "paused", "after", "on_batch")}
    body["parameters"] = dict(notebook.get("parameters") or {})
    body.update(changes)
    return body


def matches(definition: DescribeJobDefinition, name: str | None, tags: list[str] | None,
            create_time: int | None) -> bool:
    """As jupyter-scheduler filters definitions: a name prefix, every tag, created since."""
    if name and not definition.name.startswith(name):
        return False
    if tags and not set(tags) <= set(definition.tags or []):
        return False
    return not (create_time and definition.create_time < create_time)


def sort_definitions(definitions: list[Any], sort_by: list[SortField]) -> list[Any]:
    """Sorted by each key in turn (the first decides first); a missing value sorts first."""
    ordered = list(definitions)
    for field in reversed(sort_by):
        ordered.sort(key=lambda item, name=field.name: _sort_key(getattr(item, name, None)),
                     reverse=field.direction == SortDirection.desc)
    return ordered


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None:
        return (0, 0)
    if isinstance(value, bool | int | float):
        return (1, value)
    return (2, str(value))


def read_offset(token: str | None) -> int:
    """JupyterLab's next_token for definitions: how many came before (Dockyard lists a
    user's definitions whole, so the page is cut here)."""
    if not token:
        return 0
    if not token.isdigit():
        raise SchedulerError("the list of job definitions changed; reload it")
    return int(token)
