"""Dockyard's web service: the pages and the REST API, served behind JupyterHub."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from flask import Flask
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import IntegerConverter, Map

from dockyard import __version__
from dockyard.containers import NotebookHomes
from dockyard.data import Catalog
from dockyard.db import make_engine, make_session_factory, write_sessions
from dockyard.jobs.artifacts import ArtifactStore
from dockyard.models import MAX_ID
from dockyard.settings import Settings
from dockyard.web.auth import HubIdentity, Identity, current_user
from dockyard.web.context import close_db
from dockyard.web.errors import init_errors
from dockyard.web.security import CONTENT_SECURITY_POLICY, init_security

DEFAULT_PREFIX = "/services/dockyard/"


def service_prefix() -> str:
    """Where the hub mounts us: JupyterHub tells a service through its environment."""
    return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", DEFAULT_PREFIX).rstrip("/")


def create_app(settings: Settings, identity: Identity | None = None) -> Flask:
    """Build the Flask app. ``identity`` defaults to the hub's OAuth (HubIdentity)."""
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=_session_secret(settings),
        SESSION_COOKIE_NAME="dockyard-session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.base_url.startswith("https://"),
        PERMANENT_SESSION_LIFETIME=timedelta(hours=12),
        # Raised only when admins allow larger image build uploads (DOCKYARD_IMAGE_UPLOAD_MAX_MB).
        MAX_CONTENT_LENGTH=max(16, settings.image_upload_max_mb) * 1024 * 1024,
        JSON_SORT_KEYS=False,
    )
    engine = make_engine(settings.db_url)
    app.extensions["dockyard.settings"] = settings
    app.extensions["dockyard.engine"] = engine
    app.extensions["dockyard.sessions"] = make_session_factory(engine)
    app.extensions["dockyard.write_sessions"] = write_sessions(engine)
    app.extensions["dockyard.catalog"] = Catalog.from_settings(
        settings, engine, sessions=app.extensions["dockyard.sessions"],
        writes=app.extensions["dockyard.write_sessions"])
    app.extensions["dockyard.artifacts"] = ArtifactStore.from_settings(settings)
    app.extensions["dockyard.homes"] = NotebookHomes(settings)
    app.extensions["dockyard.identity"] = identity or HubIdentity()
    from dockyard.jobs.tokens import run_token_lookup

    app.extensions["dockyard.run_tokens"] = run_token_lookup(app.extensions["dockyard.sessions"])
    app.teardown_appcontext(close_db)

    # Before any route is added: ids in paths are bounded to what the database can hold.
    app.url_map.converters["int"] = DatabaseIdConverter
    init_security(app)
    init_errors(app)

    from dockyard.web import clusters, data, images, jobs, lineage, pages
    from dockyard.web.api import api

    # Importing the API modules registers their routes on the ``api`` blueprint.
    from dockyard.web.api import clusters as _clusters_api  # noqa: F401
    from dockyard.web.api import data as _data_api  # noqa: F401
    from dockyard.web.api import images as _images_api  # noqa: F401
    from dockyard.web.api import jobs as _jobs_api  # noqa: F401
    from dockyard.web.api import lineage as _lineage_api  # noqa: F401

    for blueprint in (pages.bp, jobs.bp, clusters.bp, images.bp, data.bp, lineage.bp, api):
        app.register_blueprint(blueprint)

    @app.context_processor
    def _template_globals() -> dict[str, Any]:
        return {"user": current_user(), "hub_prefix": "/hub/", "version": __version__}

    return app


class DatabaseIdConverter(IntegerConverter):
    """``<int:…>`` in routes: a number beyond a 64-bit integer names nothing (404), rather
    than reaching the database, which cannot even compare it."""

    def __init__(self, map: Map, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max", MAX_ID)
        super().__init__(map, *args, **kwargs)


def _session_secret(settings: Settings) -> bytes:
    """A key for Dockyard's session cookie, made once and kept under HOME (mode 600)."""
    path = settings.home / "dockyard_session_secret"
    if not path.exists():
        settings.home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(32))
    return path.read_bytes()


def mounted_app(settings: Settings, identity: Identity | None = None) -> Any:
    """The app as the proxy sees it: under the service prefix, behind one proxy hop."""
    app = create_app(settings, identity)
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)  # type: ignore[method-assign]
    return DispatcherMiddleware(_not_here, {service_prefix(): app})


def _not_here(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("404 Not Found", [
        ("Content-Type", "text/plain"), ("X-Content-Type-Options", "nosniff"),
        ("Content-Security-Policy", CONTENT_SECURITY_POLICY), ("Referrer-Policy", "same-origin"),
    ])
    return [b"Dockyard is served under " + service_prefix().encode() + b"/\n"]
