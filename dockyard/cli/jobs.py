"""`dockyard jobs …`: submit runs (commands and notebooks), list, follow and cancel them;
job definitions with their triggers (create, pause, resume, backfill), through the REST
API.

These are client commands: they talk to a running Dockyard at ``DOCKYARD_URL`` with the
token in ``DOCKYARD_TOKEN`` (inside a job both are already set), like any API client.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import IO, Any

import click
import requests

from dockyard.cli.root import main

FINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}
CLUSTER_KINDS = ("ray", "spark")


class Api:
    def __init__(self, url: str, token: str) -> None:
        base = url.rstrip("/")
        self.base = base if base.endswith("/api/v1") else base + "/api/v1"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {token}"

    @property
    def pages(self) -> str:
        """Dockyard's web pages: the address the API lives under."""
        return self.base.removesuffix("/api/v1")

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.session.request(method, self.base + path, timeout=30, **kwargs)
        except requests.RequestException as exc:
            raise click.ClickException(f"cannot reach Dockyard at {self.base}: {exc}") from None
        if response.status_code >= 400:
            raise Refused.of(response)
        return response.json() if response.content else None


class Refused(click.ClickException):
    """Dockyard said no. Field problems are printed one ``field: message`` a line and
    exit 2, as a usage error does: the command line needs changing, not the service."""

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []
        if self.problems:
            self.exit_code = 2

    @classmethod
    def of(cls, response: requests.Response) -> Refused:
        try:
            body = response.json()
        except ValueError:
            return cls(f"HTTP {response.status_code}: {response.text[:200]}")
        detail = body.get("detail") if isinstance(body, dict) else None
        if isinstance(detail, list) and detail and all(isinstance(d, dict) for d in detail):
            problems = [(str(d.get("field")), str(d.get("message"))) for d in detail]
            return cls("; ".join(f"{f}: {m}" for f, m in problems), problems)
        if not isinstance(body, dict):
            return cls(str(body))
        return cls(f"{body.get('error', response.status_code)}: {detail}" if detail
                   else str(body))

    def show(self, file: IO[Any] | None = None) -> None:
        if not self.problems:
            super().show(file)
            return
        for field, message in self.problems:
            click.echo(f"{field}: {message}", err=True)


def cluster_options(command: Any) -> Any:
    """The options that give a run a Spark or Ray cluster."""
    for option in reversed((
        click.option("--cluster", metavar="KIND[:WORKERS]", help="Run on a cluster of its "
                     "own, started for the run and removed after: ray or spark, and the "
                     "number of workers (default 2), e.g. ray:3."),
        click.option("--cluster-cpu", type=float, help="CPUs of each cluster worker."),
        click.option("--cluster-memory", type=int, help="Memory of each cluster worker, "
                     "in MB."),
    )):
        command = option(command)
    return command


@main.group()
@click.option("--url", envvar="DOCKYARD_URL", show_envvar=True,
              help="Dockyard's address, e.g. http://127.0.0.1:8000/services/dockyard/")
@click.option("--token", envvar="DOCKYARD_TOKEN", show_envvar=True,
              help="A JupyterHub API token (from /hub/token) or a run's token.")
@click.pass_context
def jobs(ctx: click.Context, url: str | None, token: str | None) -> None:
    """Batch jobs: submit runs, list them, read their logs, cancel them."""
    if ctx.resilient_parsing or "--help" in sys.argv or "-h" in sys.argv:
        return
    if not url or not token:
        raise click.UsageError("set DOCKYARD_URL and DOCKYARD_TOKEN (or --url and --token)")
    ctx.obj = Api(url, token)


@jobs.command()
@click.argument("command", nargs=-1)
@click.option("--definition", "definition_id", type=int, help="Start from this definition.")
@click.option("--image", help="Image from the catalog (enabled for jobs).")
@click.option("--shell", "shell_command", help="A shell command, run by the container's sh.")
@click.option("--cpu", type=float)
@click.option("--memory", "memory_mb", type=int, help="Memory limit in MB.")
@click.option("--gpu", type=int)
@click.option("-e", "--env", "env", multiple=True, metavar="NAME=VALUE")
@click.option("-t", "--tag", "tags", multiple=True)
@click.option("--timeout", "timeout_seconds", type=int, help="Seconds before the run is stopped.")
@click.option("--retries", "max_retries", type=int, help="Automatic retries after a failure.")
@click.option("--pool", help="Job pool to run in (default: 'default'; GET /pools lists yours).")
@cluster_options
@click.option("--follow", is_flag=True, help="Print the log until the run ends; exit with "
              "its exit code.")
@click.pass_obj
def submit(api: Api, command: tuple[str, ...], shell_command: str | None, env: tuple[str, ...],
           tags: tuple[str, ...], follow: bool, **fields: Any) -> None:
    """Queue a run. COMMAND (after --) runs as given, without a shell:

    \b
        dockyard jobs submit --image dockyard/notebook:latest -- python train.py --epochs 3
        dockyard jobs submit --definition 4 --env DAY=20240101 --follow
        dockyard jobs submit --cluster ray:3 --cluster-cpu 2 -- python tune.py
    """
    if command and shell_command:
        raise click.UsageError("give either COMMAND or --shell, not both")
    body = _job_body(fields, command=command, shell_command=shell_command, env=env, tags=tags)
    run = api.call("POST", "/runs", json=body)
    click.echo(f"Run {run['id']} queued ({run['image'] or 'no image: a local process'}).")
    if follow:
        sys.exit(_follow(api, run["id"]))


@jobs.command("submit-notebook")
@click.argument("notebook", required=False,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--home-path", metavar="PATH", help="A notebook in your home instead of a local "
              "file, e.g. work/etl.ipynb (as JupyterLab's file browser shows it).")
@click.option("-p", "--parameter", "parameters", multiple=True, metavar="NAME=VALUE",
              help="A parameter for the notebook's 'parameters' cell, typed as papermill's -p: "
              "int, float, true/false, null, else text. Repeat for several.")
@click.option("--image", help="Image from the catalog with papermill and the notebook's kernel.")
@click.option("--pool", help="Job pool to run in (default: 'default').")
@click.option("--cpu", type=float)
@click.option("--memory", "memory_mb", type=int, help="Memory limit in MB.")
@click.option("--timeout", "timeout_seconds", type=int, help="Seconds before the run is stopped.")
@click.option("--retries", "max_retries", type=int, help="Automatic retries after a failure "
              "(each runs the same snapshot).")
@cluster_options
@click.option("-t", "--tag", "tags", multiple=True)
@click.option("-e", "--env", "env", multiple=True, metavar="NAME=VALUE")
@click.option("--wait", is_flag=True, help="Print the log until the run ends; exit non-zero "
              "unless it succeeded.")
@click.pass_obj
def submit_notebook(api: Api, notebook: Path | None, home_path: str | None,
                    parameters: tuple[str, ...], env: tuple[str, ...], tags: tuple[str, ...],
                    wait: bool, **fields: Any) -> None:
    """Run a notebook as a job: Dockyard keeps a snapshot of it, runs it with papermill and
    keeps the executed copy (output.ipynb, output.html) with the run.

    \b
        dockyard jobs submit-notebook etl.ipynb -p alpha=0.5 -p day=2024-01-01 \\
            --image dockyard/notebook:latest --wait
        dockyard jobs submit-notebook --home-path work/etl.ipynb --image dockyard/notebook
    """
    if (notebook is None) == (home_path is None):
        raise click.UsageError("give a notebook file or --home-path, one of the two")
    body = _job_body(fields, parameters=parameters, env=env, tags=tags)
    if home_path is not None:
        run = api.call("POST", "/runs", json={**body, "notebook": {"path": home_path}})
    else:
        assert notebook is not None
        # multipart: the file as a part, the JSON fields as text (objects and lists as JSON).
        form = {name: json.dumps(value) if isinstance(value, dict | list) else str(value)
                for name, value in body.items()}
        with notebook.open("rb") as content:
            run = api.call("POST", "/runs", data=form, files={
                "notebook": (notebook.name, content, "application/x-ipynb+json")})
    name = (run.get("notebook") or {}).get("name") or (notebook.name if notebook else home_path)
    click.echo(f"Run {run['id']} queued: notebook {name} in "
               f"{run['image'] or 'a local process'}.")
    click.echo(f"{api.pages}/jobs/runs/{run['id']}")
    if wait:
        sys.exit(_follow(api, run["id"]))


def _job_body(fields: dict[str, Any], *, command: tuple[str, ...] = (),
              shell_command: str | None = None, parameters: tuple[str, ...] = (),
              env: tuple[str, ...] = (), tags: tuple[str, ...] = ()) -> dict[str, Any]:
    """A run's or definition's fields as the API takes them: the options given, an argv
    COMMAND or a --shell string, notebook parameters, environment pairs and tags."""
    cluster = _cluster_size(fields.pop("cluster", None), fields.pop("cluster_cpu", None),
                            fields.pop("cluster_memory", None))
    body: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
    if cluster is not None:
        body["cluster"] = cluster
    if command:
        body["command"] = list(command)
    elif shell_command:
        body["command"] = shell_command
    if parameters:
        body["parameters"] = _notebook_parameters(parameters)
    if env:
        body["env"] = _env_pairs(env)
    if tags:
        body["tags"] = list(tags)
    return body


def _cluster_size(text: str | None, cpu: float | None,
                  memory_mb: int | None) -> dict[str, Any] | None:
    """``--cluster ray:3`` (kind, then workers) with ``--cluster-cpu`` and
    ``--cluster-memory`` as the API's ``cluster``; the service checks the limits."""
    if text is None:
        if cpu is not None or memory_mb is not None:
            raise Refused("cluster: --cluster-cpu and --cluster-memory go with --cluster",
                          [("cluster", "--cluster-cpu and --cluster-memory go with --cluster "
                            "KIND[:WORKERS]")])
        return None
    kind, sep, workers = text.partition(":")
    problems = []
    if kind not in CLUSTER_KINDS:
        problems.append(("cluster.kind", f"--cluster {text!r}: the kind is ray or spark, "
                         "e.g. ray:3"))
    if sep and not (workers.isascii() and workers.isdigit()):
        problems.append(("cluster.workers", f"--cluster {text!r}: after ':' the number of "
                         "workers, e.g. ray:3"))
    if problems:
        raise Refused("; ".join(f"{f}: {m}" for f, m in problems), problems)
    size: dict[str, Any] = {"kind": kind}
    if sep:
        size["workers"] = int(workers)
    if cpu is not None:
        size["worker_cpu"] = cpu
    if memory_mb is not None:
        size["worker_memory_mb"] = memory_mb
    return size


def _notebook_parameters(items: tuple[str, ...]) -> dict[str, Any]:
    """``-p NAME=VALUE`` options as parameters, each typed as the Jobs page types a line."""
    from dockyard.jobs.notebooks import parse_parameter_lines
    from dockyard.jobs.schemas import InvalidJob

    parameters: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for item in items:
        if "\n" in item or "\r" in item:
            problems.append(("parameters", f"-p {item.splitlines()[0][:60]!r}…: a value is "
                             "one line"))
            continue
        try:
            parsed = parse_parameter_lines(item)
        except InvalidJob as exc:
            problems += [(p.field, p.message) for p in exc.problems]
            continue
        if not parsed:  # blank, or what a file of lines would take for a comment
            problems.append(("parameters", f"-p {item!r}: write NAME=VALUE"))
        parameters.update(parsed)
    if problems:
        raise Refused("; ".join(f"{f}: {m}" for f, m in problems), problems)
    return parameters


def _env_pairs(items: tuple[str, ...]) -> dict[str, str]:
    pairs = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise click.UsageError(f"--env {item!r}: write NAME=VALUE")
        pairs[name] = value
    return pairs


@jobs.command("list")
@click.option("--status", multiple=True, type=click.Choice(sorted(FINAL | {"QUEUED", "PENDING",
                                                                           "RUNNING"})))
@click.option("--tag")
@click.option("--kind", type=click.Choice(["command", "notebook"]))
@click.option("--definition", type=int)
@click.option("--owner", help="Admins: someone else's runs.")
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@click.pass_obj
def list_runs(api: Api, status: tuple[str, ...], tag: str | None, kind: str | None,
              definition: int | None, owner: str | None, limit: int, as_json: bool) -> None:
    """Your most recent runs."""
    params: dict[str, Any] = {"limit": limit, "status": list(status)}
    for key, value in (("tag", tag), ("kind", kind), ("definition", definition),
                       ("owner", owner)):
        if value is not None:
            params[key] = value
    page = api.call("GET", "/runs", params=params)
    if as_json:
        click.echo(json.dumps(page, indent=2))
        return
    click.echo(f"{'RUN':>6}  {'STATUS':<10} {'TRY':>3}  {'EXIT':>4}  {'QUEUED':<19}  "
               "IMAGE / REASON")
    for run in page["runs"]:
        exit_code = "" if run["exit_code"] is None else str(run["exit_code"])
        queued = run["queued_at"][:19].replace("T", " ")
        click.echo(f"{run['id']:>6}  {run['status']:<10} {run['attempt']:>3}  {exit_code:>4}  "
                   f"{queued:<19}  {run['image'] or '(local)'}  {run['reason']}".rstrip())


@jobs.command()
@click.argument("run_id", type=int)
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the run ends.")
@click.pass_obj
def logs(api: Api, run_id: int, follow: bool) -> None:
    """Print a run's log."""
    if follow:
        sys.exit(_follow(api, run_id))
    offset = 0
    while True:
        chunk = api.call("GET", f"/runs/{run_id}/logs", params={"offset": offset})
        click.echo(chunk["text"], nl=False)
        if chunk["next_offset"] == offset or chunk["next_offset"] >= chunk["size"]:
            return
        offset = chunk["next_offset"]


@jobs.command()
@click.argument("run_id", type=int)
@click.pass_obj
def cancel(api: Api, run_id: int) -> None:
    """Cancel a run (the worker stops it)."""
    run = api.call("POST", f"/runs/{run_id}/cancel")
    click.echo(f"Cancel of run {run['id']} requested (now {run['status']}).")


def _follow(api: Api, run_id: int) -> int:
    offset = 0
    while True:
        chunk = api.call("GET", f"/runs/{run_id}/logs", params={"offset": offset})
        click.echo(chunk["text"], nl=False)
        offset = chunk["next_offset"]
        if chunk["complete"]:
            run = api.call("GET", f"/runs/{run_id}")
            click.echo(f"Run {run_id} {run['status']}"
                       + (f": {run['reason']}" if run["reason"] else ""), err=True)
            code = run["exit_code"]
            return code if isinstance(code, int) and 0 <= code < 256 and code != 0 else (
                0 if run["status"] == "SUCCEEDED" else 1)
        if not chunk["text"]:
            time.sleep(1)


# -- definitions and their triggers ---------------------------------------------------------
AFTER_OUTCOMES = ("succeeded", "failed", "finished")


@jobs.group()
def definitions() -> None:
    """Job definitions: named recipes for runs, and what starts them by themselves
    (a schedule, another definition's runs, new data)."""


@definitions.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@click.pass_obj
def list_definitions(api: Api, as_json: bool) -> None:
    """Your job definitions (admins: everyone's), with their triggers."""
    found = api.call("GET", "/definitions")["definitions"]
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    click.echo(f"{'ID':>6}  {'NAME':<24} {'KIND':<8} {'NEXT RUN (UTC)':<19}  TRIGGERS")
    for definition in found:
        next_runs = definition.get("next_runs") or []
        upcoming = next_runs[0][:19].replace("T", " ") if next_runs else (
            "paused" if definition.get("paused") else "")
        said = "; ".join(_trigger_words(definition)) or "launched by hand"
        click.echo(f"{definition['id']:>6}  {definition['name']:<24} "
                   f"{definition.get('kind', 'command'):<8} {upcoming:<19}  {said}")


@definitions.command("show")
@click.argument("definition_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@click.pass_obj
def show_definition(api: Api, definition_id: int, as_json: bool) -> None:
    """One definition: what it runs, its triggers and next fire times, recent fires and
    backfills."""
    definition = api.call("GET", f"/definitions/{definition_id}")
    fires = api.call("GET", f"/definitions/{definition_id}/fires",
                     params={"limit": 10})["fires"]
    backfills = _backfill_list(api.call("GET", f"/definitions/{definition_id}/backfills"))
    if as_json:
        click.echo(json.dumps({**definition, "fires": fires, "backfills": backfills},
                              indent=2))
        return
    click.echo(f"#{definition['id']} {definition['name']} (by {definition['owner']})")
    if definition.get("description"):
        click.echo(definition["description"])
    if definition.get("kind") == "notebook" and definition.get("notebook"):
        notebook = definition["notebook"]
        click.echo(f"notebook: {notebook.get('name')}"
                   + (f" ({notebook['path']} in your home)" if notebook.get("path") else ""))
        for name, value in (notebook.get("parameters") or {}).items():
            click.echo(f"  -p {name}={value}")
    else:
        command = definition["command"]
        click.echo(f"command:  {command if isinstance(command, str) else json.dumps(command)}")
    click.echo(f"image:    {definition['image'] or '(none: a local process)'}")
    said = _trigger_words(definition)
    click.echo("triggers: " + ("; ".join(said) if said else "none (launched by hand)"))
    if definition.get("paused"):
        click.echo("paused:   no trigger fires until it is resumed")
    for when in definition.get("next_runs") or []:
        click.echo(f"  next:   {when}")
    if fires:
        click.echo("recent fires:")
        for fire in fires:
            run = f"run {fire['run_id']}" if fire.get("run_id") else "no run"
            click.echo(f"  {fire['at'][:19].replace('T', ' ')}  {fire['key']:<40} "
                       f"{run:<12} {fire['outcome']}")
    for backfill in backfills:
        state = "finished" if backfill.get("finished_at") else "running"
        click.echo(f"backfill {backfill['id']}: {backfill['started']} of "
                   f"{backfill['items_total']} started, {backfill['active']} active, {state}")
    click.echo(f"{api.pages}/jobs/definitions/{definition['id']}")


def _backfill_list(answer: Any) -> list[dict[str, Any]]:
    return answer["backfills"] if isinstance(answer, dict) else list(answer or [])


def _trigger_words(definition: dict[str, Any]) -> list[str]:
    from dockyard.jobs.trigger_words import describe_after, describe_on_batch, describe_schedule

    said = []
    if definition.get("schedule"):
        said.append(describe_schedule(definition["schedule"]))
    if definition.get("after"):
        said.append(describe_after(definition["after"]))
    if definition.get("on_batch"):
        said.append(describe_on_batch(definition["on_batch"]))
    return said


@definitions.command("create")
@click.argument("name")
@click.argument("command", nargs=-1)
@click.option("--command", "shell_command", metavar="TEXT",
              help="A shell command, run by the container's sh (or give COMMAND after --, "
              "run as is).")
@click.option("--notebook", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Make it a notebook definition: this local notebook, kept as a snapshot.")
@click.option("--home-path", metavar="PATH", help="A notebook definition from a notebook in "
              "your home, e.g. work/etl.ipynb (snapshot taken now).")
@click.option("-p", "--parameter", "parameters", multiple=True, metavar="NAME=VALUE",
              help="A notebook definition's parameter (typed as papermill's -p). Repeat.")
@click.option("--description", default="")
@click.option("--image", help="Image from the catalog (enabled for jobs).")
@click.option("--pool", help="Job pool its runs go to (default: 'default').")
@click.option("--cpu", type=float)
@click.option("--memory", "memory_mb", type=int, help="Memory limit in MB.")
@click.option("--timeout", "timeout_seconds", type=int, help="Seconds before a run is stopped.")
@click.option("--retries", "max_retries", type=int, help="Automatic retries after a failure.")
@click.option("-e", "--env", "env", multiple=True, metavar="NAME=VALUE")
@click.option("-t", "--tag", "tags", multiple=True)
@click.option("--cron", help="Run on a schedule, e.g. '0 6 * * MON-FRI'.")
@click.option("--timezone", help="The schedule's IANA time zone (default UTC).")
@click.option("--concurrency", type=click.Choice(["allow", "forbid", "replace"]),
              help="A tick while a run is still active: allow, forbid (skip), replace.")
@click.option("--missed", type=click.Choice(["skip", "run_once"]),
              help="Ticks missed while Dockyard was down: skip, or run once.")
@click.option("--paused", is_flag=True, help="Save the schedule paused.")
@click.option("--after", metavar="ID[:succeeded|failed|finished]",
              help="Run after each run of definition ID ends (succeeded unless said).")
@click.option("--on-batch", metavar="NAMESPACE/TABLE",
              help="Run on each new batch committed to this table.")
@click.option("--partition", "partitions", multiple=True, metavar="KEY=PATTERN",
              help="With --on-batch: only partitions whose KEY matches PATTERN. Repeat.")
@cluster_options
@click.pass_obj
def create_definition(api: Api, name: str, command: tuple[str, ...], shell_command: str | None,
                      notebook: Path | None, home_path: str | None,
                      parameters: tuple[str, ...], env: tuple[str, ...],
                      tags: tuple[str, ...], cron: str | None, timezone: str | None,
                      concurrency: str | None, missed: str | None, paused: bool,
                      after: str | None, on_batch: str | None, partitions: tuple[str, ...],
                      **fields: Any) -> None:
    """Create a definition, with its triggers:

    \b
        dockyard jobs definitions create nightly --image dockyard/notebook:latest \\
            --command 'python report.py' --cron '0 6 * * MON-FRI' --timezone Europe/Berlin
        dockyard jobs definitions create load --notebook load.ipynb -p day=today \\
            --on-batch sales/orders --partition 'date=2024-*'
        dockyard jobs definitions create publish --after 7:succeeded -- python publish.py
    """
    sources = [given for given in (command or None, shell_command, notebook, home_path)
               if given]
    if len(sources) != 1:
        raise click.UsageError("give one of COMMAND (after --), --command, --notebook or "
                               "--home-path")
    if parameters and not (notebook or home_path):
        raise click.UsageError("-p is for notebook definitions (--notebook or --home-path)")
    if partitions and not on_batch:
        raise click.UsageError("--partition goes with --on-batch NAMESPACE/TABLE")
    body = _job_body(fields, command=command, shell_command=shell_command,
                     parameters=parameters, env=env, tags=tags)
    body["name"] = name
    if cron is not None:
        body["schedule"] = {"cron": cron, **{key: value for key, value in (
            ("timezone", timezone), ("concurrency", concurrency), ("missed", missed))
            if value is not None}}
    elif timezone or concurrency or missed:
        raise click.UsageError("--timezone, --concurrency and --missed go with --cron")
    if paused:
        body["paused"] = True
    if after is not None:
        body["after"] = _after_option(after)
    if on_batch is not None:
        body["on_batch"] = _on_batch_option(on_batch, partitions)
    if home_path is not None:
        body["notebook"] = {"path": home_path}
    if notebook is not None:
        form = {key: json.dumps(value) if isinstance(value, dict | list | bool) else str(value)
                for key, value in body.items()}
        with notebook.open("rb") as content:
            definition = api.call("POST", "/definitions", data=form, files={
                "notebook": (notebook.name, content, "application/x-ipynb+json")})
    else:
        definition = api.call("POST", "/definitions", json=body)
    click.echo(f"Definition {definition['id']} {definition['name']} created.")
    for said in _trigger_words(definition):
        click.echo(f"  runs {said}")
    for when in (definition.get("next_runs") or [])[:1]:
        click.echo(f"  first run at {when}")
    click.echo(f"{api.pages}/jobs/definitions/{definition['id']}")


def _after_option(text: str) -> dict[str, Any]:
    """``--after 7`` or ``--after 7:failed``."""
    number, _, outcome = text.partition(":")
    if not (number.isascii() and number.isdigit()):
        raise click.UsageError(f"--after {text!r}: give a definition id, e.g. 7 or "
                               "7:succeeded")
    outcome = outcome or "succeeded"
    if outcome not in AFTER_OUTCOMES:
        raise click.UsageError(f"--after {text!r}: after ':' one of "
                               + ", ".join(AFTER_OUTCOMES))
    return {"definition_id": int(number), "on": outcome}


def _on_batch_option(text: str, partitions: tuple[str, ...]) -> dict[str, Any]:
    namespace, sep, table = text.partition("/")
    if not sep or not namespace or not table or "/" in table:
        raise click.UsageError(f"--on-batch {text!r}: write NAMESPACE/TABLE, e.g. sales/orders")
    return {"namespace": namespace, "table": table,
            "partition": _partition_patterns(partitions, "--partition")}


def _partition_patterns(items: tuple[str, ...], option: str) -> dict[str, str]:
    patterns = {}
    for item in items:
        key, sep, pattern = item.partition("=")
        if not sep or not key:
            raise click.UsageError(f"{option} {item!r}: write KEY=PATTERN, e.g. date=2024-*")
        patterns[key] = pattern
    return patterns


@definitions.command("pause")
@click.argument("definition_id", type=int)
@click.pass_obj
def pause_definition(api: Api, definition_id: int) -> None:
    """Stop a definition's triggers from firing until it is resumed."""
    definition = api.call("POST", f"/definitions/{definition_id}/pause")
    click.echo(f"Definition {definition['id']} {definition['name']} paused.")


@definitions.command("resume")
@click.argument("definition_id", type=int)
@click.pass_obj
def resume_definition(api: Api, definition_id: int) -> None:
    """Let a paused definition's triggers fire again (a schedule from its next tick on)."""
    definition = api.call("POST", f"/definitions/{definition_id}/resume")
    next_runs = definition.get("next_runs") or []
    click.echo(f"Definition {definition['id']} {definition['name']} resumed"
               + (f"; next run at {next_runs[0]}." if next_runs else "."))


@definitions.command("backfill")
@click.argument("definition_id", type=int)
@click.option("--partition", "partitions", multiple=True, metavar="KEY=PATTERN",
              help="Each existing partition of the on-batch table whose KEY matches "
              "PATTERN (repeat; none given with no dates: every partition).")
@click.option("--from", "from_day", metavar="YYYY-MM-DD",
              help="A scheduled definition: each day from this one …")
@click.option("--to", "to_day", metavar="YYYY-MM-DD", help="… to this one, included.")
@click.option("--max-parallel", type=int, help="Runs active at once (default 2, at most 20).")
@click.pass_obj
def backfill(api: Api, definition_id: int, partitions: tuple[str, ...], from_day: str | None,
             to_day: str | None, max_parallel: int | None) -> None:
    """Run a definition for the past: each existing partition that matches, or each day
    of a range, a few at a time.

    \b
        dockyard jobs definitions backfill 4 --partition 'date=2024-01-*' --max-parallel 4
        dockyard jobs definitions backfill 5 --from 2024-01-01 --to 2024-01-31
    """
    body: dict[str, Any] = {}
    if partitions or not (from_day or to_day):
        body["partition"] = _partition_patterns(partitions, "--partition")
    for key, value in (("from", from_day), ("to", to_day), ("max_parallel", max_parallel)):
        if value is not None:
            body[key] = value
    started = api.call("POST", f"/definitions/{definition_id}/backfills", json=body)
    click.echo(f"Backfill {started['id']} of definition {definition_id}: "
               f"{started['items_total']} runs, at most "
               f"{max_parallel if max_parallel is not None else 2} at a time.")
    click.echo(f"{api.pages}/jobs/definitions/{definition_id}#backfills")
