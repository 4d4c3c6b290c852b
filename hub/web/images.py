"""Image catalog pages (admins manage; users see what they may choose)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template
from sqlalchemy import select

from hub.models import Image
from hub.web.auth import page_login_required, require_admin
from hub.web.context import db

bp = Blueprint("images", __name__, url_prefix="/images")


@bp.get("/")
@page_login_required
def images_page() -> Any:
    require_admin()
    images = db().scalars(select(Image).order_by(Image.reference)).all()
    return render_template("images/list.html", images=images)
