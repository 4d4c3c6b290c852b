"""Cluster pages: the list with the create form, a cluster (live status, address, how to
connect from a notebook, scale, stop) and its dashboard, proxied from the head with the
user's login. Parse, call, render; the rules live in dockyard.clusters.service."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import requests
from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from pydantic import ValidationError

from dockyard.clusters import service
from dockyard.clusters.schemas import ClusterIn, ClusterScaleIn
from dockyard.clusters.service import HOSTING_BACKENDS, ClusterLimits, InvalidCluster
from dockyard.errors import BadRequest, Conflict, NotFound, Unavailable
from dockyard.images.catalog import default_image, usable_images
from dockyard.jobs.schemas import JobLimits
from dockyard.models import Cluster, ClusterKind, ClusterState, utcnow
from dockyard.web.auth import User, current_user, page_login_required
from dockyard.web.context import db, settings, write_db
from dockyard.web.errors import validation_detail

bp = Blueprint("clusters", __name__, url_prefix="/clusters")

CREATE_FIELDS = ("name", "kind", "workers", "worker_cpu", "worker_memory_mb", "image", "pool")
NEW_CLUSTER = {"kind": "ray", "workers": "2", "worker_cpu": "1", "worker_memory_mb": "2048"}
STATUS_BADGES = {
    "queued": "text-bg-secondary", "starting": "text-bg-info", "running": "text-bg-primary",
    "stopping": "text-bg-warning", "stopped": "text-bg-dark", "failed": "text-bg-danger",
}
ENDED_SHOWN = 20
#: Still changing by itself: its page polls the status part.
SETTLING = frozenset({"queued", "starting", "stopping"})

#: What a proxied dashboard page may do. No sandbox: the Spark master UI and the Ray
#: dashboard (a single-page app) need their own scripts, styles and data requests on this
#: origin. The dashboard is the owner's own code, shown in the owner's own session - the
#: trust JupyterHub gives a user's single-user server on the hub's origin - and nobody else
#: reaches it: another user, admins included, gets 404 (an admin's session must never load
#: a page the cluster's owner controls). What stays: no framing by other sites, no plugins,
#: no scripts, styles or data requests to other origins.
DASHBOARD_POLICY = ("default-src 'self' 'unsafe-inline' 'unsafe-eval' data: blob:; "
                    "object-src 'none'; frame-ancestors 'self'; base-uri 'self'; "
                    "form-action 'self'")
#: Headers of one connection, not of the answer (RFC 9110 7.6.1), and those a dashboard
#: must not set on Dockyard's origin (cookies, its own security policy, CORS, workers).
DROPPED_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "trailers", "transfer-encoding", "upgrade", "proxy-connection",
    "set-cookie", "content-security-policy", "content-security-policy-report-only",
    "x-frame-options", "strict-transport-security", "service-worker-allowed",
    "access-control-allow-origin", "access-control-allow-credentials",
    "access-control-allow-headers", "access-control-allow-methods",
    "access-control-expose-headers", "clear-site-data", "location",
})
DASHBOARD_TIMEOUT = (5, 60)
CHUNK = 64 * 1024

#: How often opening a dashboard's pages and assets counts as use of the cluster.
DASHBOARD_TOUCH_INTERVAL = timedelta(seconds=30)


def _caller() -> User:
    user = current_user()
    assert user is not None
    return user


def _limits() -> ClusterLimits:
    return ClusterLimits.from_settings(settings())


@contextmanager
def _found() -> Iterator[None]:
    try:
        yield
    except NotFound:
        abort(404, "Nothing here, or it belongs to someone else.")


def status_value(cluster: Cluster) -> str:
    return ClusterState(cluster.status).value


@bp.app_context_processor
def _cluster_helpers() -> dict[str, Any]:
    return {"cluster_badges": STATUS_BADGES, "cluster_status": status_value,
            "connect_snippet": connect_snippet}


def connect_snippet(cluster: Cluster) -> str:
    """What a notebook runs to use the cluster (the data client finds its address)."""
    if cluster.kind == ClusterKind.SPARK:
        return (f'import dockyard_data\nspark = dockyard_data.cluster("{cluster.name}")'
                ".spark()")
    return f'import dockyard_data\ndockyard_data.cluster("{cluster.name}").ray()'


# -- the list and the create form ----------------------------------------------------------
def _form_choices() -> dict[str, Any]:
    job_limits = JobLimits.from_settings(settings())
    limits = _limits()
    pools = [pool for pool in job_limits.pools.usable_by(_caller())
             if limits.pool_backends.get(pool.name) in HOSTING_BACKENDS]
    return {"images": usable_images(db(), "jobs"),
            "default_job_image": default_image(db(), "jobs"), "pools": pools, "limits": limits}


def _render_list(values: dict[str, str], errors: dict[str, str], status: int = 200) -> Any:
    user = _caller()
    live = service.list_clusters(db(), user, state="live")  # newest first
    ended = service.list_clusters(db(), user, state="ended")[:ENDED_SHOWN]
    return render_template("clusters/list.html", live=live, ended=ended, values=values,
                           errors=errors,
                           polling=any(status_value(c) in SETTLING for c in live),
                           **_form_choices()), status


@bp.get("/")
@page_login_required
def clusters_page() -> Any:
    return _render_list(dict(NEW_CLUSTER), {})


@bp.get("/list")
@page_login_required
def clusters_table() -> Any:
    """The list of live clusters, polled by htmx while one of them is settling."""
    live = service.list_clusters(db(), _caller(), state="live")
    return render_template("clusters/_table.html", live=live,
                           polling=any(status_value(c) in SETTLING for c in live))


@bp.post("/")
@page_login_required
def create_cluster() -> Any:
    form = request.form
    values = {name: (form.get(name) or "").strip() for name in CREATE_FIELDS}
    data: dict[str, Any] = {name: value for name, value in values.items() if value}
    errors: dict[str, str] = {}
    try:
        body = ClusterIn.model_validate(data)
        cluster = service.create_cluster(write_db(), _caller(), body, _limits())
        flash(f"Cluster {cluster.name} queued: the worker is starting it.", "info")
        return redirect(url_for("clusters.cluster_page", cluster_id=cluster.id), code=303)
    except ValidationError as exc:
        field_errors(validation_detail(exc), errors)
    except InvalidCluster as exc:
        field_errors(exc.detail, errors)
    except Conflict as exc:
        field_errors(exc.detail, errors)
    return _render_list(values, errors, status=422)


def field_errors(problems: Any, errors: dict[str, str]) -> None:
    """Field problems beside the form's fields: ``cluster.workers`` (as the service names
    a run's cluster) is the form's ``workers``; a problem of no field goes to ``name``."""
    if not isinstance(problems, list):
        errors.setdefault("name", str(problems))
        return
    for problem in problems:
        field = str(problem.get("field") or "name") if isinstance(problem, dict) else "name"
        message = problem.get("message") if isinstance(problem, dict) else str(problem)
        parts = [part for part in field.split(".") if part not in ("cluster", "body")]
        errors.setdefault(parts[0] if parts else "name", str(message))


# -- one cluster ---------------------------------------------------------------------------
def _cluster(cluster_id: int) -> Cluster:
    with _found():
        return service.get_cluster(db(), _caller(), cluster_id)


def _render_cluster(cluster: Cluster, values: dict[str, str], errors: dict[str, str],
                    status: int = 200) -> Any:
    return render_template("clusters/cluster.html", cluster=cluster, values=values,
                           errors=errors, limits=_limits(), **_status_context(cluster)), status


def _status_context(cluster: Cluster) -> dict[str, Any]:
    state = status_value(cluster)
    return {"state": state, "live": state not in ("stopped", "failed"),
            "polling": state in SETTLING or state == "running",
            # Only its owner may open the dashboard: an admin's page has no link to it.
            "dashboard": state == "running" and bool(cluster.dashboard_url)
            and cluster.owner == _caller().name}


@bp.get("/<int:cluster_id>")
@page_login_required
def cluster_page(cluster_id: int) -> Any:
    cluster = _cluster(cluster_id)
    if cluster.owner == _caller().name:
        service.touch(write_db(), cluster.id)
    return _render_cluster(cluster, {"workers": str(cluster.workers)}, {})


@bp.get("/<int:cluster_id>/status")
@page_login_required
def cluster_status(cluster_id: int) -> Any:
    """The status part of a cluster's page, polled by htmx while it lives. Polling is
    not use: an open tab does not keep an idle cluster alive."""
    cluster = _cluster(cluster_id)
    return render_template("clusters/_status.html", cluster=cluster, **_status_context(cluster))


@bp.post("/<int:cluster_id>/scale")
@page_login_required
def scale_cluster(cluster_id: int) -> Any:
    cluster = _cluster(cluster_id)
    workers = (request.form.get("workers") or "").strip()
    errors: dict[str, str] = {}
    try:
        body = ClusterScaleIn.model_validate({"workers": workers} if workers else {})
        service.scale_cluster(write_db(), _caller(), cluster.id, body, _limits())
        flash(f"Scaling to {body.workers} workers.", "info")
        return redirect(url_for("clusters.cluster_page", cluster_id=cluster.id), code=303)
    except ValidationError as exc:
        field_errors(validation_detail(exc), errors)
    except InvalidCluster as exc:
        field_errors(exc.detail, errors)
    except Conflict as exc:
        field_errors(exc.detail, errors)
    # The form has one field: every problem is said beside it.
    errors = {"workers": next(iter(errors.values()))} if errors else errors
    return _render_cluster(cluster, {"workers": workers}, errors, status=422)


@bp.post("/<int:cluster_id>/stop")
@page_login_required
def stop_cluster(cluster_id: int) -> Any:
    with _found():
        try:
            service.request_stop(write_db(), _caller(), cluster_id)
            flash("Stop requested: the worker removes its containers and network.", "info")
        except Conflict as exc:
            flash(str(exc.detail), "warning")
    return redirect(url_for("clusters.cluster_page", cluster_id=cluster_id), code=303)


# -- the dashboard, through Dockyard -------------------------------------------------------
@bp.get("/<int:cluster_id>/dashboard/")
@bp.get("/<int:cluster_id>/dashboard/<path:path>")
@page_login_required
def dashboard(cluster_id: int, path: str = "") -> Any:
    """The head's dashboard (Spark master UI, Ray dashboard), streamed from the head with
    the user's login: its owner only (DASHBOARD_POLICY says why not admins). Redirects
    are passed on only within the dashboard; nothing else is followed or reached."""
    cluster = _cluster(cluster_id)
    if cluster.owner != _caller().name:
        abort(404, "Nothing here, or it belongs to someone else.")
    base = cluster.dashboard_url
    if status_value(cluster) != "running" or not base:
        raise Unavailable(f"Cluster {cluster.name} is {status_value(cluster)}: its dashboard "
                          "is there only while it runs.")
    # A dashboard asks for its assets and polls: one write per half minute is enough to
    # keep the idle timeout away.
    if utcnow() - cluster.last_activity_at >= DASHBOARD_TOUCH_INTERVAL:
        service.touch(write_db(), cluster.id)
    # The path arrives decoded: quoted again, it can only name a path on the head.
    target = base.rstrip("/") + "/" + quote(path, safe="/-._~!$&'()*+,;=:@")
    if request.query_string:
        target += "?" + request.query_string.decode("latin-1")
    try:
        upstream = requests.request(
            request.method, target, stream=True, allow_redirects=False,
            timeout=DASHBOARD_TIMEOUT,
            headers={name: value for name, value in request.headers.items()
                     if name.lower() in ("accept", "accept-encoding", "accept-language",
                                         "if-none-match", "if-modified-since", "range")})
    except requests.exceptions.InvalidURL:
        raise BadRequest("That address cannot be asked of the dashboard.") from None
    except requests.RequestException:
        raise Unavailable(f"The head of cluster {cluster.name} does not answer; it may be "
                          "starting or overloaded. Try again in a moment.") from None
    except ValueError:  # the standard library refuses a URL with control characters
        raise BadRequest("That address cannot be asked of the dashboard.") from None
    headers = [(name, value) for name, value in upstream.headers.items()
               if name.lower() not in DROPPED_HEADERS]
    location = upstream.headers.get("Location")
    if location is not None:
        inside = _dashboard_location(location, target, base, cluster.id)
        if inside is None:
            upstream.close()
            raise Unavailable(f"The dashboard of cluster {cluster.name} sent the browser "
                              "elsewhere; Dockyard does not follow it there.")
        headers.append(("Location", inside))
    body = upstream.raw.stream(CHUNK, decode_content=False) if request.method != "HEAD" \
        else iter(())
    response = Response(body, status=upstream.status_code, headers=headers,
                        direct_passthrough=True)
    response.call_on_close(upstream.close)
    response.headers["Content-Security-Policy"] = DASHBOARD_POLICY
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers.setdefault("Cache-Control", "private, no-cache")
    return response


def _dashboard_location(location: str, target: str, base: str, cluster_id: int) -> str | None:
    """Where a dashboard's redirect leads, as a path under its proxy; None when it leads
    out of the dashboard."""
    resolved = urlsplit(urljoin(target, location))
    home = urlsplit(base)
    if (resolved.scheme, resolved.netloc) != (home.scheme, home.netloc):
        return None
    root = home.path.rstrip("/")
    if not (resolved.path == root or resolved.path.startswith(root + "/")):
        return None
    rest = resolved.path[len(root):].lstrip("/")
    proxied = url_for("clusters.dashboard", cluster_id=cluster_id, path=rest) if rest \
        else url_for("clusters.dashboard", cluster_id=cluster_id)
    return proxied + (f"?{resolved.query}" if resolved.query else "")
