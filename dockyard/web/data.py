"""Data catalog pages: namespaces, tables, partitions, their history, preview, rollback."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, redirect, render_template, request, url_for

from dockyard.data import names
from dockyard.data.service import Actor, HistoryView
from dockyard.errors import DockyardError
from dockyard.web.auth import current_user, page_login_required
from dockyard.web.context import catalog

bp = Blueprint("data", __name__, url_prefix="/data")

HISTORY_ON_TABLE_PAGE = 20
PREVIEW_ROWS = 20


def _actor() -> Actor:
    user = current_user()
    assert user is not None  # page_login_required ran first
    return Actor(user.name, user.admin, user.run_id)


def run_url(run_id: int | None) -> str | None:
    """The run's page (the jobs area serves it under /jobs/runs/<id>)."""
    if run_id is None:
        return None
    return f"{request.script_root}/jobs/runs/{run_id}"


@bp.app_template_global("run_lineage")
def run_lineage(run_id: int) -> Any:
    """For the run page: the batches a run wrote and read (data/_run_lineage.html)."""
    return catalog().run_lineage(run_id)


@bp.app_template_filter("filesize")
def filesize(value: int | None) -> str:
    if value is None:
        return "–"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(value)


@bp.get("/")
@page_login_required
def tables_page() -> Any:
    who = _actor()
    namespace = request.args.get("namespace") or None
    return render_template(
        "data/tables.html",
        namespaces=catalog().namespaces(who),
        tables=catalog().list_tables(who, namespace),
        namespace=namespace,
        # Admins see what crashed writers left behind, and how to clean it up.
        abandoned=catalog().abandoned_batches() if who.admin else [],
        expiry_hours=catalog().pending_expiry.total_seconds() / 3600,
    )


@bp.get("/<namespace>/<name>")
@page_login_required
def table_page(namespace: str, name: str) -> Any:
    who = _actor()
    table = catalog().table(who, namespace, name)
    return render_template(
        "data/table.html",
        table=table,
        partitions=catalog().partitions(who, namespace, name),
        history=list(reversed(catalog().history(who, namespace, name,
                                                limit=HISTORY_ON_TABLE_PAGE))),
        run_url=run_url,
    )


@bp.get("/<namespace>/<name>/partition")
@page_login_required
def partition_page(namespace: str, name: str) -> Any:
    """One partition: its current batch, its history timeline and a preview."""
    who = _actor()
    partition = request.args.get("p", "")
    chosen = request.args.get("batch") or None
    table = catalog().table(who, namespace, name)
    history = catalog().history(who, namespace, name, partition)
    if not history:
        abort(404, f"{namespace}.{name} has no committed partition {partition or ''}".rstrip())
    current = next((p for p in catalog().partitions(who, namespace, name)
                    if p.partition == history[-1].partition), None)
    preview = preview_error = None
    try:
        preview = catalog().preview(who, namespace, name, partition=partition,
                                    batch_id=chosen, limit=PREVIEW_ROWS)
    except DockyardError as exc:
        preview_error = str(exc)
    return render_template(
        "data/partition.html",
        table=table,
        partition=history[-1].partition,
        current=current,
        timeline=_timeline(history),
        preview=preview,
        preview_error=preview_error,
        run_url=run_url,
        rolled_back=request.args.get("rolled_back"),
    )


@bp.get("/<namespace>/<name>/rollback")
@page_login_required
def rollback_confirm(namespace: str, name: str) -> Any:
    """The confirmation step: what the partition points at now and what it will."""
    who = _actor()
    partition = request.args.get("p", "")
    target_id = request.args.get("to", "")
    table = catalog().table(who, namespace, name)
    if not table.can_write:
        abort(403, f"Only the owner of {namespace} ({table.owner}) and admins may roll back.")
    history = catalog().history(who, namespace, name, partition)
    current = next((p for p in catalog().partitions(who, namespace, name)
                    if history and p.partition == history[-1].partition), None)
    target = next((h for h in reversed(history)
                   if h.batch_id == target_id and h.action == "commit"), None)
    if current is None or target is None:
        abort(404, "That batch is not in this partition's history.")
    return render_template("data/rollback_confirm.html", table=table, partition=current.partition,
                           current=current, target=target, run_url=run_url)


@bp.post("/<namespace>/<name>/rollback")
@page_login_required
def rollback_submit(namespace: str, name: str) -> Any:
    who = _actor()
    table = catalog().table(who, namespace, name)
    values = names.parse_canonical(table.partition_keys, request.form.get("p", ""))
    entry = catalog().rollback(who, namespace, name, values,
                               to_batch=request.form.get("to") or None)
    return redirect(url_for("data.partition_page", namespace=namespace, name=name,
                            p=entry.partition, rolled_back=entry.batch_id))


def _timeline(history: list[HistoryView]) -> list[dict[str, Any]]:
    """Newest first; each entry knows whether its batch is the current one."""
    current = history[-1].batch_id if history else None
    entries = []
    for entry in reversed(history):
        entries.append({"entry": entry, "is_current": entry.batch_id == current})
    return entries
