"""Headers on every response, cookie flags, logout, and logs served as text.

The authorization matrix already checks the headers' presence on every route for every
role; this module checks their content, the answers no route produces (errors, the
address outside the service prefix) and the cookies."""

from __future__ import annotations

from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.test import Client

from dockyard.settings import Settings
from dockyard.web import create_app, mounted_app
from dockyard.web.auth import HubIdentity
from tests.conftest import USERS, TokenTable, auth
from tests.security.conftest import Seeded, log_in_with_cookie

ALICE = auth("tok-alice")


def csp_directives(response: Any) -> dict[str, list[str]]:
    policy = response.headers["Content-Security-Policy"]
    directives: dict[str, list[str]] = {}
    for part in policy.split(";"):
        name, *sources = part.split()
        directives[name] = sources
    return directives


def assert_hardened(response: Any) -> None:
    csp = csp_directives(response)
    # Scripts only from our own origin: no inline script, no eval, no other host.
    assert csp["script-src"] == ["'self'"]
    assert csp["default-src"] == ["'self'"]
    assert csp["style-src"] == ["'self'"]
    assert csp["object-src"] == ["'none'"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["base-uri"] == ["'self'"] and csp["form-action"] == ["'self'"]
    for sources in csp.values():
        assert not {"*", "http:", "https:", "'unsafe-inline'", "'unsafe-eval'"} & set(sources)
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] in ("same-origin", "no-referrer",
                                                   "strict-origin-when-cross-origin")


def test_every_kind_of_answer_is_hardened(seeded: Seeded, tmp_path: Path) -> None:
    app = seeded.app(tmp_path / "copy")
    client = app.test_client()
    session_client = app.test_client()
    log_in_with_cookie(session_client, "tok-alice")
    answers = {
        "page": client.get("/jobs/", headers=ALICE),
        "api": client.get("/api/v1/runs", headers=ALICE),
        "static": client.get("/static/dockyard.js"),
        "login redirect": client.get("/jobs/"),
        "401": client.get("/api/v1/runs"),
        "403": client.get("/images/new", headers=ALICE),
        "404 page": client.get("/no/such/page", headers=ALICE),
        "404 api": client.get("/api/v1/runs/99999", headers=ALICE),
        "405": client.get("/logout"),
        "413": client.post("/api/v1/runs", headers=ALICE, data=b"x" * (2 * 1024 * 1024),
                           content_type="application/json"),
        "csrf": session_client.post("/jobs/new"),
        "log download": client.get(f"/jobs/runs/{seeded.world.live_run}/log.txt",
                                   headers=ALICE),
    }
    expected = {"page": 200, "api": 200, "static": 200, "login redirect": 302, "401": 401,
                "403": 403, "404 page": 404, "404 api": 404, "405": 405, "413": 413,
                "csrf": 400, "log download": 200}
    for name, response in answers.items():
        assert response.status_code == expected[name], name
        assert_hardened(response)
    assert answers["page"].headers["Cache-Control"] == "no-store"
    # The mounted app also answers, with a plain 404, addresses outside its prefix.
    mounted = Client(mounted_app(seeded.settings, TokenTable(dict(USERS))))
    outside = mounted.get("/elsewhere")
    assert outside.status_code == 404
    assert_hardened(outside)
    inside = mounted.get("/services/dockyard/health")
    assert inside.status_code == 200
    assert_hardened(inside)
    app.extensions["dockyard.engine"].dispose()


def test_an_unexpected_error_is_a_hardened_500_without_details(seeded: Seeded,
                                                               tmp_path: Path) -> None:
    app = seeded.app(tmp_path / "copy")
    app.config["TESTING"] = False  # errors go to the handler, as in production
    app.config["PROPAGATE_EXCEPTIONS"] = False

    def explode() -> Any:
        raise RuntimeError("secret detail /srv/internal/path")

    app.add_url_rule("/api/v1/explode", "explode", explode)
    app.add_url_rule("/explode", "explode_page", explode)
    for path in ("/api/v1/explode", "/explode"):
        response = app.test_client().get(path, headers=ALICE)
        assert response.status_code == 500
        assert_hardened(response)
        assert "secret detail" not in response.get_data(as_text=True)
    app.extensions["dockyard.engine"].dispose()


def _cookies(response: Any) -> dict[str, Any]:
    jar: dict[str, Any] = {}
    for header in response.headers.getlist("Set-Cookie"):
        cookie = SimpleCookie()
        cookie.load(header)
        for name, morsel in cookie.items():
            jar[name] = (morsel, header)
    return jar


def _session_cookie_after_login(settings: Settings) -> tuple[Any, str]:
    app = create_app(settings, identity=TokenTable(dict(USERS)))
    response = app.test_client().get("/oauth_callback?code=tok-alice&state=/jobs/")
    assert response.status_code == 302 and response.headers["Location"] == "/jobs/"
    app.extensions["dockyard.engine"].dispose()
    return _cookies(response)["dockyard-session"]


def test_session_cookie_is_httponly_lax_and_secure_over_tls(seeded: Seeded) -> None:
    morsel, header = _session_cookie_after_login(seeded.settings)
    assert morsel["httponly"] and morsel["samesite"] == "Lax"
    assert not morsel["secure"], "plain http: a Secure cookie would never come back"
    over_tls = seeded.settings.model_copy(update={"public_url": "https://dockyard.example.com"})
    morsel, header = _session_cookie_after_login(over_tls)
    assert morsel["httponly"] and morsel["samesite"] == "Lax" and morsel["secure"], header


@pytest.fixture
def hub_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the hub gives a service in its environment, enough for HubOAuth."""
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "s" * 32)
    monkeypatch.setenv("JUPYTERHUB_API_URL", "http://127.0.0.1:9/hub/api")
    monkeypatch.setenv("JUPYTERHUB_CLIENT_ID", "service-dockyard")
    monkeypatch.setenv("JUPYTERHUB_OAUTH_CALLBACK_URL", "/services/dockyard/oauth_callback")
    monkeypatch.setenv("JUPYTERHUB_BASE_URL", "/")
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/services/dockyard/")


@pytest.mark.parametrize("public_url", ["", "https://dockyard.example.com"])
def test_oauth_state_cookie_follows_the_public_url(hub_environment: None, seeded: Seeded,
                                                   public_url: str) -> None:
    settings = seeded.settings.model_copy(update={"public_url": public_url})
    app = create_app(settings, identity=HubIdentity())
    # TLS ends at a proxy in front of the hub: the request reaches us as plain http.
    response = app.test_client().get("/jobs/")
    assert response.status_code == 302
    morsel, header = _cookies(response)["service-dockyard-oauth-state"]
    assert morsel["httponly"] and morsel["samesite"] == "Lax"
    assert bool(morsel["secure"]) == public_url.startswith("https://"), header
    app.extensions["dockyard.engine"].dispose()


def test_logout_is_a_post_with_the_form_token(seeded: Seeded, tmp_path: Path) -> None:
    app = seeded.app(tmp_path / "copy")
    client = app.test_client()
    token = log_in_with_cookie(client, "tok-alice")
    assert client.get("/logout").status_code == 405
    assert client.post("/logout").status_code == 400  # no form token
    assert client.get("/api/v1/user").json["name"] == "alice"  # still logged in
    out = client.post("/logout", data={"csrf_token": token})
    assert out.status_code == 302 and out.headers["Location"] == "/hub/logout"
    assert client.get("/api/v1/user").status_code == 401
    page = client.get("/jobs/")
    assert page.status_code == 302 and "/hub/login" in page.headers["Location"]
    app.extensions["dockyard.engine"].dispose()


def test_logs_are_text_never_html(seeded: Seeded) -> None:
    client = seeded.app().test_client()
    run = seeded.world.live_run
    for path in (f"/jobs/runs/{run}/log.txt", f"/api/v1/runs/{run}/logs?format=text"):
        response = client.get(path, headers=ALICE)
        assert response.status_code == 200
        assert response.mimetype == "text/plain"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Content-Disposition"].startswith("attachment")
    piece = client.get(f"/api/v1/runs/{run}/logs", headers=ALICE)
    assert piece.mimetype == "application/json" and "plain words" in piece.json["text"]


def test_tokens_are_only_taken_from_headers(seeded: Seeded) -> None:
    """A token in a URL ends up in logs, histories and Referer headers: never accepted."""
    client = seeded.app().test_client()
    for query in ("token=tok-alice", "access_token=tok-alice", "_xsrf=x&token=tok-alice"):
        assert client.get(f"/api/v1/user?{query}").status_code == 401, query
        page = client.get(f"/jobs/?{query}")
        assert page.status_code == 302 and "/hub/login" in page.headers["Location"]
    assert client.get("/api/v1/user", headers={"Authorization": "token tok-alice"}).json[
        "name"] == "alice"


def test_pages_never_show_the_sessions_token(seeded: Seeded, tmp_path: Path) -> None:
    from tests.security.test_authz_matrix import EXPECTED, _fill

    app: Flask = seeded.app(tmp_path / "copy")
    client = app.test_client()
    log_in_with_cookie(client, "tok-admin")
    values = seeded.world.values()
    shown = 0
    for key, expect in EXPECTED.items():
        if key.split(" ")[0] != "GET":
            continue
        body = client.get(_fill(expect.path, values)).get_data(as_text=True)
        assert "tok-admin" not in body, key
        shown += 1
    assert shown > 40
    app.extensions["dockyard.engine"].dispose()


@pytest.mark.parametrize("next_url", [
    "//evil.example/", "/\\evil.example/", "\\\\evil.example/", "https://evil.example/",
    "/\t/evil.example/", "/\n/evil.example/", " //evil.example/", "javascript:alert(1)",
])
def test_the_login_never_sends_the_browser_elsewhere(seeded: Seeded, next_url: str) -> None:
    """Browsers read '\\' as '/' and drop tabs and newlines inside URLs: each of these
    would leave the site, and each ends on Dockyard's own start page instead."""
    app = seeded.app()
    response = app.test_client().get("/oauth_callback", query_string={
        "code": "tok-alice", "state": next_url})
    assert response.status_code == 302
    assert response.headers["Location"] == "/", response.headers["Location"]
    app.extensions["dockyard.engine"].dispose()


def test_the_login_returns_to_the_page_asked_for(seeded: Seeded) -> None:
    app = seeded.app()
    response = app.test_client().get("/oauth_callback", query_string={
        "code": "tok-alice", "state": "/services/dockyard/jobs/?status=FAILED"})
    assert response.headers["Location"] == "/services/dockyard/jobs/?status=FAILED"
    app.extensions["dockyard.engine"].dispose()
