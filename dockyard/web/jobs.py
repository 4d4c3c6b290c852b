"""Job pages: the runs list, the launch form (a command or a notebook), a run (with a
notebook run's files and executed notebook), definitions. Parse, call, render; the rules
live in dockyard.jobs.service."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)
from pydantic import ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from dockyard.images.catalog import default_image, usable_images
from dockyard.images.curated import curated_reference
from dockyard.jobs import service
from dockyard.jobs.artifacts import MEDIA_TYPES, OUTPUT, ArtifactStoreUnavailable
from dockyard.jobs.notebooks import NotebookFile, parse_parameter_lines
from dockyard.jobs.run_logs import log_path, read_log
from dockyard.jobs.schemas import DefinitionIn, FieldProblem, JobLimits, RunIn
from dockyard.jobs.service import InvalidJob, JobConflict, JobNotFound, RunFilters
from dockyard.models import FINAL_STATES, MAX_ID, JobDefinition, Run, RunKind, RunState, utcnow
from dockyard.web.auth import User, current_user, page_login_required
from dockyard.web.context import artifacts, db, homes, settings, write_db
from dockyard.web.errors import validation_detail

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
JOB_FIELDS = ("image", "command", "cpu", "memory_mb", "gpu", "env", "tags", "timeout_seconds",
              "max_retries", "pool")
#: The notebook form: the job fields but the command (Dockyard's own), and the notebook's.
NOTEBOOK_FIELDS = (*(name for name in JOB_FIELDS if name != "command"), "notebook_path",
                   "parameters")
#: Where a problem the service names goes on the form, when not under its first part.
FORM_FIELD_OF_PROBLEM = {"notebook.path": "notebook_path"}
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
            "command_text": command_text, "parameter_text": parameter_text}


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
    }
    if isinstance(source, Run) and source.notebook:
        values["notebook_path"] = source.notebook.get("path") or ""
        values["parameters"] = "\n".join(
            f"{name}={parameter_text(value)}"
            for name, value in (source.notebook.get("parameters") or {}).items())
    return values


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
    return data


def _field_errors(problems: list[dict[str, Any]] | list[FieldProblem],
                  errors: dict[str, str]) -> None:
    for problem in problems:
        field, message = ((problem.field, problem.message) if isinstance(problem, FieldProblem)
                          else (problem["field"], problem["message"]))
        errors.setdefault(FORM_FIELD_OF_PROBLEM.get(field) or field.split(".")[0], message)


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
    if url_number(definition_id) is not None:
        with _found():
            values.update(_form_values_from(service.get_definition(db(), user, int(definition_id))))
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
    return _render_launch(values, {}, definition_id, kind=kind, cloned_notebook=cloned_notebook)


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
    values = {key: request.form.get(key, "") for key in JOB_FIELDS}
    return _render_launch(values, errors, definition_id, status=422)


def _notebook_form(data: dict[str, Any], errors: dict[str, str]) -> NotebookFile | None:
    """The notebook form's own fields: the upload (returned) or the home path, and the
    parameters, into ``data`` as the API would get them; unparseable parts → errors."""
    try:
        data["parameters"] = parse_parameter_lines(request.form.get("parameters") or "")
    except InvalidJob as exc:
        _field_errors(exc.problems, errors)
    path = (request.form.get("notebook_path") or "").strip()
    if path:
        data["notebook"] = {"path": path}
    upload = request.files.get("notebook")
    if upload is None or not upload.filename:  # a file input left empty sends no name
        if not path:
            errors["notebook"] = "choose a notebook to upload, or give its path in your home"
        return None
    return NotebookFile(name=upload.filename, content=upload.read(), source="upload")


@bp.errorhandler(RequestEntityTooLarge)
def _too_large(exc: RequestEntityTooLarge) -> Any:
    """A notebook upload too large to be read at all: the form again, with the field's
    error, rather than a bare error page. Elsewhere in Jobs, the app's own answer."""
    if request.endpoint != "jobs.launch" or _kind_arg() != RunKind.NOTEBOOK:
        app_handler = current_app.error_handler_spec[None][413].get(RequestEntityTooLarge)
        return app_handler(exc) if app_handler is not None else exc
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
            "events": service.events_of(db(), run), "live": run.status not in FINAL_STATES}


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
    history = service.definition_history(db(), definition)
    return render_template("jobs/definition.html", definition=definition, history=history,
                           chart=duration_chart(list(reversed(history))))


def _definition_form(definition: JobDefinition | None, values: dict[str, str],
                     errors: dict[str, str], status: int = 200) -> Any:
    return render_template("jobs/definition_form.html", definition=definition, values=values,
                           errors=errors, **_job_form_choices()), status


@bp.get("/definitions/new")
@page_login_required
def new_definition() -> Any:
    return _definition_form(None, {"cpu": "1", "memory_mb": "1024", "gpu": "0",
                                   "max_retries": "0"}, {})


@bp.get("/definitions/<int:definition_id>/edit")
@page_login_required
def edit_definition(definition_id: int) -> Any:
    with _found():
        definition = service.get_definition(db(), _caller(), definition_id)
    values = _form_values_from(definition)
    values.update(name=definition.name, description=definition.description)
    return _definition_form(definition, values, {})


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
    user = _caller()
    errors: dict[str, str] = {}
    data = _parse_job_form(request.form, errors)
    data["name"] = (request.form.get("name") or "").strip()
    data["description"] = request.form.get("description") or ""
    if not errors:
        try:
            body = DefinitionIn.model_validate(data)
            if definition is None:
                saved = service.create_definition(write_db(), user, body, _limits())
            else:
                saved = service.update_definition(write_db(), user, definition.id, body, _limits())
            return redirect(url_for("jobs.definition_page", definition_id=saved.id), code=303)
        except ValidationError as exc:
            _field_errors(validation_detail(exc), errors)
        except (InvalidJob, JobConflict) as exc:
            _field_errors(exc.problems, errors)
            if not exc.problems:
                errors["name"] = str(exc)
    values = {key: request.form.get(key, "") for key in (*JOB_FIELDS, "name", "description")}
    return _definition_form(definition, values, errors, status=422)


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
