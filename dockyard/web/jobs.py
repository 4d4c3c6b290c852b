"""Job pages: the runs list, the launch form (a command or a notebook), a run (with a
notebook run's files, executed notebook and what fired it), definitions with their
triggers, fires and backfills. Parse, call, render; the rules live in
dockyard.jobs.service."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any
from zoneinfo import available_timezones

from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)
from pydantic import ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from dockyard.clusters.service import cluster_of_run
from dockyard.images.catalog import default_image, usable_images
from dockyard.images.curated import curated_reference
from dockyard.jobs import service
from dockyard.jobs.artifacts import MEDIA_TYPES, OUTPUT, ArtifactStoreUnavailable
from dockyard.jobs.notebooks import NotebookFile, parse_parameter_lines
from dockyard.jobs.run_logs import log_path, read_log
from dockyard.jobs.schemas import BackfillIn, DefinitionIn, FieldProblem, JobLimits, RunIn
from dockyard.jobs.service import InvalidJob, JobConflict, JobNotFound, RunFilters
from dockyard.jobs.trigger_words import describe_triggers, in_zone, parse_instant
from dockyard.models import (
    FINAL_STATES,
    MAX_ID,
    Backfill,
    JobDefinition,
    Run,
    RunKind,
    RunState,
    utcnow,
)
from dockyard.web.auth import User, current_user, page_login_required
from dockyard.web.context import artifacts, db, homes, settings, write_db
from dockyard.web.errors import request_too_large, validation_detail

bp = Blueprint("jobs", __name__, url_prefix="/jobs")

PAGE_SIZE = 50
SORTS = {
    "-queued": "Newest first", "queued": "Oldest first",
    "-started": "Started, latest first", "started": "Started, earliest first",
    "-finished": "Finished, latest first", "finished": "Finished, earliest first",
}
STATUS_BADGES = {
    RunState.QUEUED: "text-bg-secondary", RunState.PENDING: "text-bg-info",
    RunState.RUNNING: "text-bg-primary", RunState.SUCCEEDED: "text-bg-success",
    RunState.FAILED: "text-bg-danger", RunState.CANCELLED: "text-bg-dark",
    RunState.TIMED_OUT: "text-bg-warning",
}
#: A run's cluster, as the form names its fields (none: the cluster kind left at "none").
CLUSTER_FIELDS = ("cluster_kind", "cluster_workers", "cluster_worker_cpu",
                  "cluster_worker_memory_mb")
JOB_FIELDS = ("image", "command", "cpu", "memory_mb", "gpu", "env", "tags", "timeout_seconds",
              "max_retries", "pool", *CLUSTER_FIELDS)
#: The notebook form: the job fields but the command (Dockyard's own), and the notebook's.
NOTEBOOK_FIELDS = (*(name for name in JOB_FIELDS if name != "command"), "notebook_path",
                   "parameters")
#: A definition's triggers, as the definition form names its fields.
TRIGGER_FIELDS = ("cron", "timezone", "concurrency", "missed", "paused", "after_definition_id",
                  "after_on", "on_batch_namespace", "on_batch_table", "on_batch_partition")
#: Where a problem the service names goes on the form, when not under its first part
#: (the longest name that has a place wins: "on_batch.partition.date" → on_batch_partition).
FORM_FIELD_OF_PROBLEM = {
    "notebook.path": "notebook_path",
    "schedule": "cron", "schedule.cron": "cron", "schedule.timezone": "timezone",
    "schedule.concurrency": "concurrency", "schedule.missed": "missed",
    "after": "after_definition_id", "after.definition_id": "after_definition_id",
    "after.on": "after_on",
    "on_batch": "on_batch_table", "on_batch.namespace": "on_batch_namespace",
    "on_batch.table": "on_batch_table", "on_batch.partition": "on_batch_partition",
    "cluster": "cluster_kind", "cluster.kind": "cluster_kind",
    "cluster.workers": "cluster_workers", "cluster.worker_cpu": "cluster_worker_cpu",
    "cluster.worker_memory_mb": "cluster_worker_memory_mb",
}
SCHEDULE_DEFAULTS = {"timezone": "UTC", "concurrency": "allow", "missed": "skip"}
#: The time zones the schedule field offers first (any IANA name may be typed).
COMMON_ZONES = ("UTC", "Europe/London", "Europe/Berlin", "Europe/Paris", "America/New_York",
                "America/Chicago", "America/Los_Angeles", "Asia/Tokyo", "Asia/Kolkata",
                "Asia/Singapore", "Australia/Sydney")
FIRES_SHOWN = 20
#: What the executed notebook may do in its frame: show itself (inline styles, images
#: embedded as data: URLs) and nothing more. ``sandbox`` gives it an origin of its own, so
#: even a script that ran could not reach Dockyard's pages, cookies or API.
NOTEBOOK_FRAME_POLICY = ("sandbox; default-src 'none'; img-src data:; "
                         "style-src 'unsafe-inline'; frame-ancestors 'self'")


def _caller() -> User:
    user = current_user()
    assert user is not None
    return user


def _limits() -> JobLimits:
    return JobLimits.from_settings(settings())


@contextmanager
def _found() -> Iterator[None]:
    try:
        yield
    except JobNotFound:
        abort(404, "Nothing here, or it belongs to someone else.")


@bp.app_template_filter("jobs_time")
def _format_time(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "—"


@bp.app_template_filter("jobs_zone_time")
def _format_zone_time(value: datetime | None) -> str:
    """A time on the clocks of its own zone, the zone named."""
    return value.strftime("%Y-%m-%d %H:%M:%S %Z") if value else "—"


@bp.app_template_filter("jobs_duration")
def _format_duration(run: Run) -> str:
    if run.started_at is None:
        return "—"
    seconds = int(((run.finished_at or utcnow()) - run.started_at).total_seconds())
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


@bp.app_context_processor
def _job_helpers() -> dict[str, Any]:
    return {"status_badges": STATUS_BADGES, "final_states": FINAL_STATES,
            "command_text": command_text, "parameter_text": parameter_text,
            "describe_triggers": describe_triggers}


def parameter_text(value: Any) -> str:
    """A parameter's value as it is typed in a ``name=value`` line (and read back the same
    way): true, false, null, numbers as numbers, text as it is."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return str(value)


def command_text(command: Any) -> str:
    """A command as typed in the form: the shell string, or the argv list as JSON."""
    return command if isinstance(command, str) else json.dumps(command)


# -- runs list -----------------------------------------------------------------------------
@bp.get("/")
@page_login_required
def runs_page() -> Any:
    user = _caller()
    args = request.args
    errors: list[str] = []
    statuses = []
    for value in args.getlist("status"):
        if value in RunState.__members__:
            statuses.append(RunState(value))
        elif value:
            errors.append(f"unknown status '{value}'")
    kind = args.get("kind") or None
    if kind is not None and kind not in set(RunKind):
        errors.append(f"unknown kind '{kind[:40]}'")
        kind = None
    sort = args.get("sort", "-queued")
    if sort not in SORTS:
        errors.append(f"unknown sort '{sort}'")
        sort = "-queued"
    filters = RunFilters(
        status=statuses, owner=args.get("owner") or None, image=args.get("image") or None,
        tag=args.get("tag") or None, kind=RunKind(kind) if kind else None,
        definition_id=_int_arg("definition", errors),
        since=_date_arg("since", errors), until=_date_arg("until", errors, end_of_day=True),
        sort=sort, cursor=args.get("cursor") or None, limit=PAGE_SIZE,
    )
    try:
        page = service.list_runs(db(), user, filters)
    except InvalidJob as exc:
        errors += [p.message for p in exc.problems]
        filters.cursor = None
        page = service.list_runs(db(), user, filters)
    query = {k: args.getlist(k) for k in args if k != "cursor"}
    return render_template(
        "jobs/runs.html", page=page, filters=filters, errors=errors, sorts=SORTS,
        statuses=list(RunState), kinds=list(RunKind), images=usable_images(db(), "jobs"),
        definitions=service.list_definitions(db(), user), args=args,
        next_url=url_for("jobs.runs_page", **query, cursor=page.next_cursor)
        if page.next_cursor else None,
        first_url=url_for("jobs.runs_page", **query) if filters.cursor else None,
        sort_url=lambda key: url_for(
            "jobs.runs_page", **{k: v for k, v in query.items() if k != "sort"}, sort=key),
        live=any(run.status not in FINAL_STATES for run in page.runs),
    )


def _int_arg(name: str, errors: list[str]) -> int | None:
    value = request.args.get(name) or ""
    if not value:
        return None
    number = url_number(value)
    if number is None:
        errors.append(f"{name}: not a number")
    return number


def url_number(text: str) -> int | None:
    """A whole number from a URL: ASCII digits (str.isdigit also takes '²') and no larger
    than an id can be; else None."""
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_ID:
        return None
    return int(text)


def _date_arg(name: str, errors: list[str], end_of_day: bool = False) -> datetime | None:
    value = request.args.get(name) or ""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        if end_of_day and len(value) == 10:
            parsed += timedelta(days=1)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # not a date, or one with no UTC equivalent
        errors.append(f"{name}: not a date (YYYY-MM-DD)")
        return None


# -- launch --------------------------------------------------------------------------------
def _form_values_from(source: Run | JobDefinition) -> dict[str, str]:
    tags = [t.tag for t in source.tags] if isinstance(source, Run) else source.tags
    values = {
        "image": source.image, "command": command_text(source.command),
        "cpu": f"{source.cpu:g}", "memory_mb": str(source.memory_mb), "gpu": str(source.gpu),
        "env": "\n".join(f"{k}={v}" for k, v in source.env.items()),
        "tags": ", ".join(tags),
        "timeout_seconds": str(source.timeout_seconds or ""),
        "max_retries": str(source.max_retries),
        "pool": source.pool,
        **cluster_values(source.cluster),
    }
    if source.notebook:
        if isinstance(source, Run):
            # A definition's edit form leaves the path empty: saved so, it keeps its
            # snapshot rather than reading the home file again.
            values["notebook_path"] = source.notebook.get("path") or ""
        values["parameters"] = "\n".join(
            f"{name}={parameter_text(value)}"
            for name, value in (source.notebook.get("parameters") or {}).items())
    if isinstance(source, JobDefinition):
        values.update(_trigger_values(source))
    return values


def cluster_values(cluster: dict[str, Any] | None) -> dict[str, str]:
    """A run's or definition's cluster as the form's fields show it."""
    if not cluster:
        return {"cluster_kind": ""}
    return {"cluster_kind": str(cluster.get("kind") or ""),
            "cluster_workers": str(cluster.get("workers") or ""),
            "cluster_worker_cpu": f"{cluster['worker_cpu']:g}"
            if isinstance(cluster.get("worker_cpu"), int | float) else "",
            "cluster_worker_memory_mb": str(cluster.get("worker_memory_mb") or "")}


def _trigger_values(definition: JobDefinition) -> dict[str, str]:
    """A definition's triggers as the definition form shows them."""
    schedule = definition.schedule or {}
    after = definition.after or {}
    on_batch = definition.on_batch or {}
    return {
        "cron": schedule.get("cron", ""),
        "timezone": schedule.get("timezone", SCHEDULE_DEFAULTS["timezone"]),
        "concurrency": schedule.get("concurrency", SCHEDULE_DEFAULTS["concurrency"]),
        "missed": schedule.get("missed", SCHEDULE_DEFAULTS["missed"]),
        "paused": "on" if definition.paused else "",
        "after_definition_id": str(after.get("definition_id") or ""),
        "after_on": after.get("on", "succeeded"),
        "on_batch_namespace": on_batch.get("namespace", ""),
        "on_batch_table": on_batch.get("table", ""),
        "on_batch_partition": "\n".join(f"{key}={pattern}" for key, pattern
                                        in (on_batch.get("partition") or {}).items()),
    }


def _parse_trigger_form(form: Any, data: dict[str, Any], errors: dict[str, str]) -> None:
    """The definition form's trigger fields into ``data`` as the API would get them;
    unparseable parts → errors. A trigger whose fields are all empty is none."""
    cron = (form.get("cron") or "").strip()
    if cron:
        data["schedule"] = {"cron": cron, **{
            name: (form.get(name) or "").strip() or default
            for name, default in SCHEDULE_DEFAULTS.items()}}
    data["paused"] = bool(form.get("paused"))
    after = (form.get("after_definition_id") or "").strip()
    if after:
        number = url_number(after)
        if number is None:
            errors["after_definition_id"] = "choose one of your definitions"
        else:
            data["after"] = {"definition_id": number,
                             "on": (form.get("after_on") or "succeeded").strip()}
    namespace = (form.get("on_batch_namespace") or "").strip()
    table = (form.get("on_batch_table") or "").strip()
    partition = partition_lines(form.get("on_batch_partition") or "", "on_batch_partition",
                                errors)
    if namespace or table or partition:
        data["on_batch"] = {"namespace": namespace, "table": table, "partition": partition}


def partition_lines(text: str, field_name: str, errors: dict[str, str]) -> dict[str, str]:
    """``key=pattern`` lines (blank lines skipped) as a partition pattern."""
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, pattern = line.partition("=")
        if not sep or not key.strip():
            errors[field_name] = f"line {number}: write key=pattern, e.g. date=2024-*"
            break
        found[key.strip()] = pattern.strip()
    return found


def _parse_job_form(form: Any, errors: dict[str, str]) -> dict[str, Any]:
    """The form's text fields as the JSON the API would get; unparseable parts → errors."""
    data: dict[str, Any] = {}
    image = (form.get("image") or "").strip()
    if image:
        data["image"] = image
    command = (form.get("command") or "").strip()
    if command.startswith("["):
        try:
            data["command"] = json.loads(command)
        except json.JSONDecodeError:
            errors["command"] = 'a command starting with "[" must be a JSON list, e.g. ' \
                                '["python", "train.py"]'
    elif command:
        data["command"] = command
    for name in ("cpu", "memory_mb", "gpu", "timeout_seconds", "max_retries"):
        value = (form.get(name) or "").strip()
        if value:
            data[name] = value
    env: dict[str, str] = {}
    for number, line in enumerate((form.get("env") or "").splitlines(), start=1):
        if not line.strip():
            continue
        name, sep, value = line.partition("=")
        if not sep:
            errors["env"] = f"line {number}: write NAME=value"
            break
        env[name.strip()] = value
    if env:
        data["env"] = env
    tags = [t for t in (form.get("tags") or "").replace(",", " ").split() if t]
    if tags:
        data["tags"] = tags
    pool = (form.get("pool") or "").strip()
    if pool:
        data["pool"] = pool
    kind = (form.get("cluster_kind") or "").strip()
    if kind:
        cluster = {"kind": kind}
        for name in ("workers", "worker_cpu", "worker_memory_mb"):
            value = (form.get(f"cluster_{name}") or "").strip()
            if value:
                cluster[name] = value
        data["cluster"] = cluster
    return data


def _field_errors(problems: list[dict[str, Any]] | list[FieldProblem],
                  errors: dict[str, str]) -> None:
    for problem in problems:
        field, message = ((problem.field, problem.message) if isinstance(problem, FieldProblem)
                          else (problem["field"], problem["message"]))
        errors.setdefault(form_field_of(field), message)


def form_field_of(field: str) -> str:
    """The form field a problem the service or pydantic names belongs beside."""
    parts = field.split(".")
    for end in range(len(parts), 0, -1):
        found = FORM_FIELD_OF_PROBLEM.get(".".join(parts[:end]))
        if found:
            return found
    return parts[0]


def _kind_arg() -> RunKind:
    """Which launch form: ?kind=notebook, else a command."""
    return RunKind.NOTEBOOK if request.args.get("kind") == RunKind.NOTEBOOK else RunKind.COMMAND


@bp.get("/new")
@page_login_required
def launch_form() -> Any:
    user = _caller()
    values: dict[str, str] = {"cpu": "1", "memory_mb": "1024", "gpu": "0", "max_retries": "0"}
    kind = _kind_arg()
    cloned_notebook: dict[str, Any] | None = None
    # ?definition= from links; ?definition_id= when htmx reloads the form on a change.
    definition_id = request.args.get("definition") or request.args.get("definition_id") or ""
    clone = url_number(request.args.get("clone", ""))
    definition_notebook: dict[str, Any] | None = None
    if url_number(definition_id) is not None:
        with _found():
            definition = service.get_definition(db(), user, int(definition_id))
        values.update(_form_values_from(definition))
        if definition.kind == RunKind.NOTEBOOK:
            definition_notebook = definition.notebook or {}
    elif clone is not None:
        with _found():
            run = service.get_run(db(), user, clone)
        values.update(_form_values_from(run))
        if run.kind == RunKind.NOTEBOOK:
            kind, cloned_notebook = RunKind.NOTEBOOK, {"run_id": run.id, **(run.notebook or {})}
        if run.definition_id:
            definition_id = str(run.definition_id)
    if kind == RunKind.NOTEBOOK:
        definition_id = ""  # definitions hold commands
    return _render_launch(values, {}, definition_id, kind=kind, cloned_notebook=cloned_notebook,
                          definition_notebook=definition_notebook)


def _job_form_choices() -> dict[str, Any]:
    """What the image and pool fields offer the caller. Pools of local processes need no
    image (their runs use Dockyard's own Python environment); when every pool is one, the
    form says so instead of asking for an image."""
    limits = _limits()
    pools = limits.pools.usable_by(_caller())
    imageless = [pool.name for pool in pools if not limits.pools.needs_image(pool.name)]
    return {
        "limits": limits, "pools": pools, "images": usable_images(db(), "jobs"),
        "default_job_image": default_image(db(), "jobs"), "imageless_pools": imageless,
        "only_local": bool(pools) and len(imageless) == len(pools),
        "curated_image": curated_reference(settings()),
    }


def _render_launch(values: dict[str, str], errors: dict[str, str], definition_id: str,
                   status: int = 200, kind: RunKind = RunKind.COMMAND,
                   **notebook_form: Any) -> Any:
    return render_template(
        "jobs/launch.html", values=values, errors=errors, definition_id=definition_id,
        definitions=service.list_definitions(db(), _caller()), kind=kind.value,
        notebook_max_mb=settings().notebook_job_max_mb, **notebook_form,
        **_job_form_choices(),
    ), status


@bp.post("/new")
@page_login_required
def launch() -> Any:
    """Both launch forms post here: the command form as it always did, the notebook form
    (multipart, with ``?kind=notebook``) with its file or home path and parameters."""
    user = _caller()
    kind = _kind_arg()
    errors: dict[str, str] = {}
    data = _parse_job_form(request.form, errors)
    definition_id = (request.form.get("definition_id") or "").strip()
    if definition_id:
        data["definition_id"] = definition_id
    notebook_file = _notebook_form(data, errors) if kind == RunKind.NOTEBOOK else None
    definition_notebook = _definition_notebook(definition_id)
    if definition_notebook is not None:
        # A notebook definition runs its own snapshot: the form sends its parameters only.
        data.pop("command", None)
        try:
            data["parameters"] = parse_parameter_lines(request.form.get("parameters") or "")
        except InvalidJob as exc:
            _field_errors(exc.problems, errors)
    if not errors:
        try:
            body = RunIn.model_validate(data)
            run = service.create_run(write_db(), user, body, _limits(),
                                     notebook_file=notebook_file, artifacts=artifacts(),
                                     homes=homes())
            return redirect(url_for("jobs.run_page", run_id=run.id), code=303)
        except ValidationError as exc:
            _field_errors(validation_detail(exc), errors)
        except InvalidJob as exc:
            _field_errors(exc.problems, errors)
    if kind == RunKind.NOTEBOOK:
        values = {key: request.form.get(key, "") for key in NOTEBOOK_FIELDS}
        return _render_launch(values, errors, "", status=422, kind=kind,
                              chosen_file=notebook_file.name if notebook_file else None)
    values = {key: request.form.get(key, "") for key in (*JOB_FIELDS, "parameters")}
    return _render_launch(values, errors, definition_id, status=422,
                          definition_notebook=definition_notebook)


def _definition_notebook(definition_id: str) -> dict[str, Any] | None:
    """The notebook of the definition chosen on the launch form, when it is a notebook
    definition (an unknown one is the service's to report)."""
    number = url_number(definition_id)
    if number is None:
        return None
    try:
        definition = service.get_definition(db(), _caller(), number)
    except JobNotFound:
        return None
    return (definition.notebook or {}) if definition.kind == RunKind.NOTEBOOK else None


def _notebook_form(data: dict[str, Any], errors: dict[str, str],
                   required: bool = True) -> NotebookFile | None:
    """The notebook form's own fields: the upload (returned) or the home path, and the
    parameters, into ``data`` as the API would get them; unparseable parts → errors.
    ``required``: a notebook must be chosen (not so when a definition keeps its own)."""
    try:
        data["parameters"] = parse_parameter_lines(request.form.get("parameters") or "")
    except InvalidJob as exc:
        _field_errors(exc.problems, errors)
    path = (request.form.get("notebook_path") or "").strip()
    if path:
        data["notebook"] = {"path": path}
    upload = request.files.get("notebook")
    if upload is None or not upload.filename:  # a file input left empty sends no name
        if not path and required:
            errors["notebook"] = "choose a notebook to upload, or give its path in your home"
        return None
    return NotebookFile(name=upload.filename, content=upload.read(), source="upload")


@bp.errorhandler(RequestEntityTooLarge)
def _too_large(exc: RequestEntityTooLarge) -> Any:
    """A notebook upload too large to be read at all: the form again, with the field's
    error, rather than a bare error page. Elsewhere in Jobs, the app's own answer."""
    if request.endpoint != "jobs.launch" or _kind_arg() != RunKind.NOTEBOOK:
        return request_too_large(exc)
    limit = settings().notebook_job_max_mb
    errors = {"notebook": f"the upload is far larger than the {limit} MB a notebook may be "
                          "(DOCKYARD_NOTEBOOK_JOB_MAX_MB), so it was not read; choose a "
                          "smaller notebook (clear its outputs) and fill in the form again"}
    values = {"cpu": "1", "memory_mb": "1024", "gpu": "0", "max_retries": "0"}
    return _render_launch(values, errors, "", status=422, kind=RunKind.NOTEBOOK)


# -- one run -------------------------------------------------------------------------------
def _run_context(run_id: int) -> dict[str, Any]:
    with _found():
        run = service.get_run(db(), _caller(), run_id)
    return {"run": run, "attempts": service.attempts_of(db(), run),
            "events": service.events_of(db(), run), "live": run.status not in FINAL_STATES,
            "fired_by": fired_by(run),
            "cluster": cluster_of_run(db(), run.id) if run.cluster else None}


def fired_by(run: Run) -> dict[str, Any] | None:
    """What started the run, for its page: the trigger record with its times in UTC and
    on the schedule's clocks, and the addresses of what it names; None when started by
    hand."""
    trigger = run.trigger
    if not isinstance(trigger, dict) or not trigger.get("kind"):
        return None
    schedule = (run.definition.schedule if run.definition is not None else None) or {}
    zone = schedule.get("timezone") or "UTC"
    item = (trigger.get("item") or {}) if trigger["kind"] == "backfill" else trigger
    said: dict[str, Any] = {"kind": trigger["kind"], "zone": zone,
                            "backfill_id": trigger.get("backfill_id"),
                            "run_id": trigger.get("run_id"),
                            "definition_id": trigger.get("definition_id")}
    tick = parse_instant(item.get("tick")) if item.get("tick") else None
    if tick is not None:
        said.update(tick=tick, tick_local=in_zone(tick, zone))
    if item.get("namespace") and item.get("table"):
        names = {"namespace": str(item["namespace"]), "name": str(item["table"])}
        said.update(namespace=names["namespace"], table=names["name"],
                    partition=item.get("partition") or "", batch_id=item.get("batch_id"),
                    table_url=url_for("data.table_page", **names))
        if said["partition"]:
            said["partition_url"] = url_for("data.partition_page", **names,
                                            p=said["partition"])
    return said


def _notebook_context(run: Run) -> dict[str, Any]:
    """A notebook run's files, for its part of the run page; an unreachable store is said
    there rather than failing the whole page."""
    if run.kind != RunKind.NOTEBOOK:
        return {}
    try:
        found = artifacts().list(run)
    except ArtifactStoreUnavailable as exc:
        return {"artifacts": [], "has_output": False, "artifacts_problem": str(exc)}
    return {"artifacts": found, "has_output": any(a.name == OUTPUT for a in found)}


@bp.get("/runs/<int:run_id>")
@page_login_required
def run_page(run_id: int) -> Any:
    context = _run_context(run_id)
    return render_template("jobs/run.html", **context, **_notebook_context(context["run"]))


@bp.get("/runs/<int:run_id>/panel")
@page_login_required
def run_panel(run_id: int) -> Any:
    """The status part of the run page, polled by htmx while the run is live."""
    return render_template("jobs/_run_panel.html", **_run_context(run_id))


@bp.get("/runs/<int:run_id>/notebook")
@page_login_required
def run_notebook(run_id: int) -> Any:
    """A notebook run's part of the run page, polled by htmx until its executed notebook
    is there (or the run ended without one): the frame then loads once."""
    context = _run_context(run_id)
    if context["run"].kind != RunKind.NOTEBOOK:
        abort(404, "This run runs a command, not a notebook.")
    return render_template("jobs/_run_notebook.html", **context,
                           **_notebook_context(context["run"]))


@bp.get("/runs/<int:run_id>/notebook.html")
@page_login_required
def notebook_frame(run_id: int) -> Any:
    """The executed notebook as HTML, for the run page's sandboxed frame. Its outputs may
    hold any script; the headers keep every one from running (see NOTEBOOK_FRAME_POLICY)."""
    with _found():
        run = service.get_run(db(), _caller(), run_id)
    response = Response(artifacts().html(run), mimetype="text/html")
    response.headers["Content-Security-Policy"] = NOTEBOOK_FRAME_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "private, no-cache"
    # Framed by the run page only (the app's default is no framing at all).
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response


@bp.get("/runs/<int:run_id>/artifacts/<name>")
@page_login_required
def download_artifact(run_id: int, name: str) -> Any:
    """One of a notebook run's files, as a download (a name the run does not have: 404)."""
    with _found():
        run = service.get_run(db(), _caller(), run_id)
    response = send_file(io.BytesIO(artifacts().read(run, name)),
                         mimetype=MEDIA_TYPES.get(name, "application/octet-stream"),
                         as_attachment=True, download_name=f"run-{run.id}-{name}", max_age=0)
    # Should a browser render the HTML anyway, none of its scripts runs.
    response.headers["Content-Security-Policy"] = NOTEBOOK_FRAME_POLICY
    return response


@bp.get("/runs/<int:run_id>/log-tail")
@page_login_required
def log_tail(run_id: int) -> Any:
    """The log after ?offset=, appended to the page by htmx, with the next poller."""
    with _found():
        run = service.get_run(db(), _caller(), run_id)
    offset = request.args.get("offset", "0")
    chunk = read_log(log_path(settings(), run.id), url_number(offset) or 0)
    done = run.status in FINAL_STATES and chunk.next_offset >= chunk.size
    return render_template("jobs/_log_tail.html", run=run, chunk=chunk, done=done)


@bp.get("/runs/<int:run_id>/log.txt")
@page_login_required
def download_log(run_id: int) -> Any:
    with _found():
        run = service.get_run(db(), _caller(), run_id)
    path = log_path(settings(), run.id)
    if not path.exists():
        return Response("", mimetype="text/plain")
    return send_file(path, mimetype="text/plain", as_attachment=True,
                     download_name=f"run-{run.id}.log", max_age=0)


@bp.post("/runs/<int:run_id>/cancel")
@page_login_required
def cancel(run_id: int) -> Any:
    with _found():
        try:
            service.request_cancel(write_db(), _caller(), run_id)
            flash("Cancel requested; the worker is stopping the run.", "info")
        except JobConflict as exc:
            flash(str(exc), "warning")
    return redirect(url_for("jobs.run_page", run_id=run_id), code=303)


@bp.post("/runs/<int:run_id>/retry")
@page_login_required
def retry(run_id: int) -> Any:
    with _found():
        try:
            attempt = service.retry_run(write_db(), _caller(), run_id, _limits())
        except (JobConflict, InvalidJob) as exc:
            flash(str(exc), "warning")
            return redirect(url_for("jobs.run_page", run_id=run_id), code=303)
    return redirect(url_for("jobs.run_page", run_id=attempt.id), code=303)


# -- definitions ---------------------------------------------------------------------------
@bp.get("/definitions")
@page_login_required
def definitions_page() -> Any:
    return render_template("jobs/definitions.html",
                           definitions=service.list_definitions(db(), _caller()))


@bp.get("/definitions/<int:definition_id>")
@page_login_required
def definition_page(definition_id: int) -> Any:
    with _found():
        definition = service.get_definition(db(), _caller(), definition_id)
    return _render_definition(definition, {}, {})


def _render_definition(definition: JobDefinition, backfill_values: dict[str, str],
                       backfill_errors: dict[str, str], status: int = 200) -> Any:
    history = service.definition_history(db(), definition)
    upstream = _upstream_name(definition)
    return render_template(
        "jobs/definition.html", definition=definition, history=history,
        chart=duration_chart(list(reversed(history))),
        triggers=describe_triggers(definition, upstream), next_fires=_next_fires(definition),
        fires=service.list_fires(db(), _caller(), definition.id, limit=FIRES_SHOWN),
        backfills=_backfill_progress(service.list_backfills(db(), _caller(), definition.id)),
        backfill_values=backfill_values, backfill_errors=backfill_errors,
    ), status


def _upstream_name(definition: JobDefinition) -> str | None:
    """The name of the definition whose runs this one follows, when the caller sees it."""
    upstream_id = (definition.after or {}).get("definition_id")
    if not upstream_id:
        return None
    try:
        return service.get_definition(db(), _caller(), int(upstream_id)).name
    except JobNotFound:
        return None


def _next_fires(definition: JobDefinition) -> list[dict[str, datetime]]:
    """The schedule's next 5 ticks, in UTC and on the schedule's clocks; none while paused."""
    zone = (definition.schedule or {}).get("timezone") or "UTC"
    return [{"utc": tick, "local": in_zone(tick, zone)}
            for tick in service.next_runs(definition)]


def _backfill_progress(backfills: list[Backfill]) -> list[dict[str, Any]]:
    """Each backfill with how far it has come: runs in all, started, active now."""
    return [{"id": b.id, "created_at": b.created_at, "finished_at": b.finished_at,
             "max_parallel": b.max_parallel,
             "items_total": len(b.items), "started": b.next_index,
             "active": service.backfill_active(db(), b)} for b in backfills]


@cache
def zone_choices() -> list[str]:
    """What the time zone field suggests: the common zones, then every other one."""
    others = sorted(available_timezones() - set(COMMON_ZONES))
    return [*COMMON_ZONES, *others]


def _definition_form(definition: JobDefinition | None, values: dict[str, str],
                     errors: dict[str, str], status: int = 200, kind: RunKind | None = None,
                     chosen_file: str | None = None) -> Any:
    if kind is None:
        kind = RunKind(definition.kind) if definition is not None else RunKind.COMMAND
    others = [d for d in service.list_definitions(db(), _caller())
              if definition is None or d.id != definition.id]
    return render_template(
        "jobs/definition_form.html", definition=definition, values=values, errors=errors,
        kind=kind.value, upstream_choices=others, zones=zone_choices(),
        notebook_max_mb=settings().notebook_job_max_mb, chosen_file=chosen_file,
        **_job_form_choices()), status


def _new_definition_values() -> dict[str, str]:
    return {"cpu": "1", "memory_mb": "1024", "gpu": "0", "max_retries": "0",
            **{name: default for name, default in SCHEDULE_DEFAULTS.items()},
            "after_on": "succeeded"}


@bp.get("/definitions/new")
@page_login_required
def new_definition() -> Any:
    return _definition_form(None, _new_definition_values(), {}, kind=_kind_arg())


@bp.get("/definitions/<int:definition_id>/edit")
@page_login_required
def edit_definition(definition_id: int) -> Any:
    with _found():
        definition = service.get_definition(db(), _caller(), definition_id)
    values = _form_values_from(definition)
    values.update(name=definition.name, description=definition.description)
    kind = _kind_arg() if "kind" in request.args else RunKind(definition.kind)
    return _definition_form(definition, values, {}, kind=kind)


@bp.post("/definitions/new")
@page_login_required
def create_definition() -> Any:
    return _save_definition(None)


@bp.post("/definitions/<int:definition_id>/edit")
@page_login_required
def update_definition(definition_id: int) -> Any:
    with _found():
        definition = service.get_definition(db(), _caller(), definition_id)
    return _save_definition(definition)


def _save_definition(definition: JobDefinition | None) -> Any:
    """Both definition forms post here: a command, or (``?kind=notebook``, multipart) a
    notebook whose snapshot is taken now, each with its triggers."""
    user = _caller()
    kind = _kind_arg()
    errors: dict[str, str] = {}
    data = _parse_job_form(request.form, errors)
    data["name"] = (request.form.get("name") or "").strip()
    data["description"] = request.form.get("description") or ""
    _parse_trigger_form(request.form, data, errors)
    notebook_file = None
    if kind == RunKind.NOTEBOOK:
        data.pop("command", None)
        # Saving again without a new file keeps the notebook the definition holds.
        keeps = definition is not None and definition.kind == RunKind.NOTEBOOK
        notebook_file = _notebook_form(data, errors, required=not keeps)
    if not errors:
        try:
            body = DefinitionIn.model_validate(data)
            notebook = {"notebook_file": notebook_file, "artifacts": artifacts(),
                        "homes": homes()}
            if definition is None:
                saved = service.create_definition(write_db(), user, body, _limits(),
                                                  **notebook)
            else:
                saved = service.update_definition(write_db(), user, definition.id, body,
                                                  _limits(), **notebook)
            return redirect(url_for("jobs.definition_page", definition_id=saved.id), code=303)
        except ValidationError as exc:
            _field_errors(validation_detail(exc), errors)
        except (InvalidJob, JobConflict) as exc:
            _field_errors(exc.problems, errors)
            if not exc.problems:
                errors["name"] = str(exc)
    fields = NOTEBOOK_FIELDS if kind == RunKind.NOTEBOOK else JOB_FIELDS
    values = {key: request.form.get(key, "")
              for key in (*fields, *TRIGGER_FIELDS, "name", "description")}
    return _definition_form(definition, values, errors, status=422, kind=kind,
                            chosen_file=notebook_file.name if notebook_file else None)


@bp.post("/definitions/<int:definition_id>/pause")
@page_login_required
def pause_definition(definition_id: int) -> Any:
    with _found():
        service.pause_definition(write_db(), _caller(), definition_id)
    flash("Paused: its triggers fire no more until you resume it.", "info")
    return redirect(url_for("jobs.definition_page", definition_id=definition_id), code=303)


@bp.post("/definitions/<int:definition_id>/resume")
@page_login_required
def resume_definition(definition_id: int) -> Any:
    with _found():
        service.resume_definition(write_db(), _caller(), definition_id)
    flash("Resumed: its triggers fire again (a schedule from its next tick on; ticks, "
          "upstream runs and batches that came while paused are not made up).", "info")
    return redirect(url_for("jobs.definition_page", definition_id=definition_id), code=303)


@bp.post("/definitions/<int:definition_id>/backfills")
@page_login_required
def create_backfill(definition_id: int) -> Any:
    """The backfill form: each existing partition matching a pattern, or each day in a
    range, a few runs at a time."""
    with _found():
        definition = service.get_definition(db(), _caller(), definition_id)
    form = request.form
    errors: dict[str, str] = {}
    body: dict[str, Any] = {}
    partition = partition_lines(form.get("partition") or "", "partition", errors)
    if partition:
        body["partition"] = partition
    for name in ("from", "to", "max_parallel"):
        value = (form.get(name) or "").strip()
        if value:
            body[name] = value
    if not errors:
        try:
            backfill = service.create_backfill(write_db(), _caller(), definition_id,
                                               BackfillIn.model_validate(body), _limits())
            flash(f"Backfill #{backfill.id} started: {len(backfill.items)} runs, at most "
                  f"{backfill.max_parallel} at a time.", "info")
            return redirect(url_for("jobs.definition_page", definition_id=definition_id,
                                    _anchor="backfills"), code=303)
        except ValidationError as exc:
            _field_errors(validation_detail(exc), errors)
        except (InvalidJob, JobConflict) as exc:
            _field_errors(exc.problems, errors)
            if not exc.problems:
                errors["partition"] = str(exc)
    values = {name: form.get(name, "") for name in ("partition", "from", "to", "max_parallel")}
    return _render_definition(definition, values, errors, status=422)


@bp.post("/definitions/<int:definition_id>/delete")
@page_login_required
def delete_definition(definition_id: int) -> Any:
    with _found():
        service.delete_definition(write_db(), _caller(), definition_id)
    flash("Definition deleted; its runs are kept.", "info")
    return redirect(url_for("jobs.definitions_page"), code=303)


# -- the small chart on a definition's page -------------------------------------------------
CHART_BAR = 14
CHART_GAP = 4
CHART_HEIGHT = 80


def duration_chart(runs: list[Run]) -> dict[str, Any]:
    """Bars for recent runs, oldest first: height is the duration, class the outcome.
    Rendered as inline SVG attributes (the CSP allows no inline styles)."""
    durations = []
    for run in runs:
        seconds = None
        if run.started_at is not None and run.finished_at is not None:
            seconds = max(0.0, (run.finished_at - run.started_at).total_seconds())
        durations.append(seconds)
    longest = max((d for d in durations if d is not None), default=0.0) or 1.0
    bars = []
    for index, (run, seconds) in enumerate(zip(runs, durations, strict=True)):
        height = 3 if seconds is None else max(3, round(seconds / longest * (CHART_HEIGHT - 4)))
        bars.append({
            "x": index * (CHART_BAR + CHART_GAP), "y": CHART_HEIGHT - height,
            "height": height, "width": CHART_BAR, "run": run,
            "css": f"dy-bar dy-bar-{run.status.value.lower()}",
            "label": f"#{run.id} {run.status.value}"
                     + (f", {seconds:.1f}s" if seconds is not None else ""),
        })
    return {"bars": bars, "width": max(1, len(runs)) * (CHART_BAR + CHART_GAP),
            "height": CHART_HEIGHT, "longest": longest}
