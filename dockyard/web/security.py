"""Protections applied to every response and every state-changing request."""

from __future__ import annotations

from flask import Flask, Response, request, session
from flask_wtf.csrf import CSRFProtect

from dockyard.settings import Settings
from dockyard.web.auth import bearer_token

csrf = CSRFProtect()

# Only our own vendored assets; no inline script, no framing.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


#: Routes that take image build uploads (Dockerfile and context archive): their bodies may
#: reach DOCKYARD_IMAGE_UPLOAD_MAX_MB; every other request DOCKYARD_REQUEST_MAX_KB.
UPLOAD_ENDPOINTS = frozenset({
    "api.images_create_image", "api.images_build_image",
    "images.create_image_page", "images.build_image_page",
})


#: Routes that take a notebook, with the setting that bounds them: a notebook run's
#: submission (as multipart/form-data: JSON bodies keep DOCKYARD_REQUEST_MAX_KB), and the
#: executed notebook its job sends back. A notebook a little over its limit still arrives
#: whole, so that the answer can name the field instead of a bare 413.
NOTEBOOK_ENDPOINTS = {
    "api.jobs_create_run": "DOCKYARD_NOTEBOOK_JOB_MAX_MB",
    "jobs.launch": "DOCKYARD_NOTEBOOK_JOB_MAX_MB",
    "jobs.create_definition": "DOCKYARD_NOTEBOOK_JOB_MAX_MB",
    "jobs.update_definition": "DOCKYARD_NOTEBOOK_JOB_MAX_MB",
    "api.jobs_put_artifact": "DOCKYARD_NOTEBOOK_OUTPUT_MAX_MB",
}


def notebook_setting(endpoint: str | None, mimetype: str) -> str | None:
    """The setting that bounds this request's body when it carries a notebook."""
    setting = NOTEBOOK_ENDPOINTS.get(endpoint or "")
    if setting == "DOCKYARD_NOTEBOOK_JOB_MAX_MB" and mimetype != "multipart/form-data":
        return None
    return setting


def body_limit(settings: Settings, endpoint: str | None, mimetype: str) -> int:
    """The largest request body (bytes) ``endpoint`` accepts (image uploads aside)."""
    limit = settings.request_max_kb * 1024
    setting = notebook_setting(endpoint, mimetype)
    if setting == "DOCKYARD_NOTEBOOK_JOB_MAX_MB":
        limit = max(limit, (2 * settings.notebook_job_max_mb + 1) * 1024 * 1024)
    elif setting == "DOCKYARD_NOTEBOOK_OUTPUT_MAX_MB":
        limit = max(limit, (settings.notebook_output_max_mb + 1) * 1024 * 1024)
    return limit


def init_security(app: Flask) -> None:
    @app.before_request
    def _limit_body() -> None:
        # Before the CSRF check below, which is the first to read a form body.
        if request.endpoint not in UPLOAD_ENDPOINTS:
            request.max_content_length = body_limit(app.extensions["dockyard.settings"],
                                                    request.endpoint, request.mimetype)

    # CSRF is checked by hand below: cookie-authenticated requests need the token,
    # token-authenticated API calls (no cookie involved) are exempt.
    app.config.setdefault("WTF_CSRF_CHECK_DEFAULT", False)
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)
    app.config.setdefault("WTF_CSRF_HEADERS", ["X-CSRFToken", "X-XSRF-Token"])
    csrf.init_app(app)

    @app.before_request
    def _check_csrf() -> None:
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return
        if bearer_token() is not None:
            return
        # Only a request that the session cookie authenticates can be forged by another
        # site. Without a login in the session the view itself answers: 401 from the
        # API, the hub's login for pages.
        if not session.get("token"):
            return
        csrf.protect()

    @app.after_request
    def _security_headers(response: Response) -> Response:
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("X-Frame-Options", "DENY")
        if response.mimetype == "text/html":
            response.headers.setdefault("Cache-Control", "no-store")
        return response
