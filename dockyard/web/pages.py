"""Service-wide routes: landing page, OAuth callback, logout, health and metrics."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, redirect, request, session, url_for
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from dockyard.web.auth import page_login_required
from dockyard.web.context import db
from dockyard.web.errors import ApiError

bp = Blueprint("pages", __name__)


@bp.get("/")
@page_login_required
def index() -> Any:
    return redirect(url_for("jobs.runs_page"))


@bp.get("/oauth_callback")
def oauth_callback() -> Any:
    code = request.args.get("code")
    if not code:
        raise ApiError(
            400,
            "Login incomplete",
            "The hub did not send a login code; open Dockyard again to restart the login.",
        )
    try:
        token, next_url = current_app.extensions["dockyard.identity"].finish_login(
            code, request.args.get("state")
        )
    except PermissionError as exc:
        raise ApiError(403, "Login refused", str(exc)) from None
    session.clear()
    session["token"] = token
    session.permanent = True
    # Only a path on this site: an absolute next_url would be an open redirect. Browsers
    # read "\" as "/" and drop tabs and newlines, so "/\t/evil.example" is one too.
    if (not next_url.startswith("/") or next_url.startswith("//")
            or any(c in next_url for c in "\\\t\r\n")):
        next_url = url_for("pages.index")
    return redirect(next_url)


@bp.post("/logout")
def logout() -> Any:
    session.clear()
    return redirect("/hub/logout")


@bp.get("/health")
def health() -> Any:
    """Liveness and database reachability, for load balancers and compose."""
    db().execute(text("SELECT 1"))
    return {"status": "ok"}


@bp.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)
