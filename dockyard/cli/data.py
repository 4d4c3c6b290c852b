"""`dockyard data …` commands: look at the catalog, clean up abandoned batches."""

from __future__ import annotations

import re
import sys
from datetime import timedelta

import click

from dockyard.cli.root import main, settings_for_command

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks", "": "hours"}


def parse_duration(text: str) -> timedelta:
    """'90m', '36h', '7d', '2w' (a bare number means hours)."""
    match = _DURATION.match(text)
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration; write e.g. 90m, 36h, 7d or 2w")
    value, unit = float(match.group(1)), match.group(2)
    return timedelta(**{_UNITS[unit]: value})


class Duration(click.ParamType):
    name = "duration"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> timedelta:
        if isinstance(value, timedelta):
            return value
        try:
            return parse_duration(str(value))
        except click.BadParameter as exc:
            self.fail(exc.message, param, ctx)


def _catalog():  # noqa: ANN202 - the import stays out of `dockyard --help`
    from dockyard.data import Catalog

    return Catalog.from_settings(settings_for_command())


@main.group()
def data() -> None:
    """The data catalog: tables, history and cleanup."""


@data.command("tables")
@click.option("--namespace", default=None, help="Only this namespace.")
def tables(namespace: str | None) -> None:
    """List tables with their partitions, rows and size."""
    from dockyard.data import Actor

    rows = _catalog().list_tables(Actor("dockyard", admin=True), namespace)
    if not rows:
        click.echo("No tables.")
        return
    for t in rows:
        keys = ",".join(t.partition_keys) or "-"
        click.echo(f"{t.namespace}.{t.name}\tkeys={keys}\tpartitions={t.partitions}\t"
                   f"rows={t.rows}\tbytes={t.bytes}\towner={t.owner}")


@data.command("history")
@click.argument("namespace")
@click.argument("table")
@click.option("--partition", default=None, help="key=value/key=value (default: all).")
@click.option("--limit", default=50, show_default=True, help="The last N entries.")
def history(namespace: str, table: str, partition: str | None, limit: int) -> None:
    """Commits and rollbacks of a table, oldest first."""
    from dockyard.data import Actor, CatalogError

    try:
        entries = _catalog().history(Actor("dockyard", admin=True), namespace, table, partition,
                                     limit=limit)
    except CatalogError as exc:
        click.echo(f"dockyard: {exc}", err=True)
        sys.exit(1)
    for h in entries:
        run = f"run={h.run_id}" if h.run_id else "run=-"
        click.echo(f"{h.at.isoformat()}\t{h.partition or '(unpartitioned)'}\t{h.action}\t"
                   f"{h.batch_id}\t{h.actor}\t{run}\trows={h.rows}")


@data.command("gc")
@click.option("--older-than", "older_than", type=Duration(), default=None,
              help="Only batches begun longer ago than this (e.g. 36h, 7d). "
                   "Default: DOCKYARD_DATA_PENDING_EXPIRY_HOURS.")
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
def gc(older_than: timedelta | None, dry_run: bool) -> None:
    """Remove abandoned batches: begun, never committed, referenced by no pointer.

    A batch that any partition pointer ever referenced is never touched, however old.
    """
    report = _catalog().collect_garbage(older_than, dry_run=dry_run)
    for batch in report.abandoned:
        state = "would remove" if dry_run else (
            "removed" if batch.batch_id in report.removed else "kept")
        click.echo(f"{state}\t{batch.namespace}.{batch.table}\t"
                   f"{batch.partition or '(unpartitioned)'}\t{batch.batch_id}\t"
                   f"{batch.created_by}\t{batch.created_at.isoformat()}\t{batch.location}")
    for batch_id, reason in report.failed.items():
        click.echo(f"failed\t{batch_id}\t{reason}", err=True)
    if dry_run:
        click.echo(f"{len(report.abandoned)} abandoned batches found; nothing removed (dry run).")
    else:
        click.echo(f"{len(report.removed)} abandoned batches removed.")
    if report.failed:
        sys.exit(1)
