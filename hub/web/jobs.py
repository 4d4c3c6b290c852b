"""Job pages: the runs list, the launch form, a run, definitions."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template
from sqlalchemy import select

from hub.models import Run
from hub.web.auth import current_user, page_login_required
from hub.web.context import db

bp = Blueprint("jobs", __name__, url_prefix="/jobs")


@bp.get("/")
@page_login_required
def runs_page() -> Any:
    user = current_user()
    assert user is not None
    query = select(Run).order_by(Run.id.desc()).limit(50)
    if not user.admin:
        query = query.where(Run.owner == user.name)
    runs = db().scalars(query).all()
    return render_template("jobs/runs.html", runs=runs)
