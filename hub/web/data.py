"""Data catalog pages: namespaces, tables, partitions and their history."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template
from sqlalchemy import select

from hub.models import DataTable
from hub.web.auth import page_login_required
from hub.web.context import db

bp = Blueprint("data", __name__, url_prefix="/data")


@bp.get("/")
@page_login_required
def tables_page() -> Any:
    tables = db().scalars(select(DataTable).order_by(DataTable.namespace, DataTable.name)).all()
    return render_template("data/tables.html", tables=tables)
