"""The web app on its own (tokens from a table instead of the hub): JSON errors,
authentication, CSRF, security headers, health, metrics and the OpenAPI document."""

from __future__ import annotations

from flask.testing import FlaskClient

from tests.conftest import auth


def test_api_without_token_is_401_json(client: FlaskClient) -> None:
    response = client.get("/api/v1/user")
    assert response.status_code == 401
    assert response.is_json
    assert set(response.json) == {"error", "detail"}
    assert "token" in response.json["detail"]


def test_api_with_unknown_token_is_401(client: FlaskClient) -> None:
    assert client.get("/api/v1/user", headers=auth("forged")).status_code == 401


def test_api_with_token_knows_the_user(client: FlaskClient) -> None:
    response = client.get("/api/v1/user", headers={"Authorization": "Bearer tok-alice"})
    assert response.status_code == 200
    assert response.json == {"name": "alice", "admin": False, "run_id": None}


def test_unknown_api_route_is_404_json(client: FlaskClient) -> None:
    response = client.get("/api/v1/no-such-thing", headers=auth("tok-alice"))
    assert response.status_code == 404
    assert response.json["error"] == "Not Found"


def test_page_without_session_goes_to_login(client: FlaskClient) -> None:
    response = client.get("/jobs/")
    assert response.status_code == 302
    assert "/hub/login" in response.headers["Location"]


def test_admin_page_is_403_for_users(client: FlaskClient) -> None:
    response = client.get("/images/new", headers=auth("tok-alice"))
    assert response.status_code == 403
    assert b"Only Dockyard admins" in response.data
    assert client.get("/images/new", headers=auth("tok-admin")).status_code == 200


def test_every_response_carries_security_headers(client: FlaskClient) -> None:
    for path in ("/health", "/api/v1/user", "/jobs/", "/api/v1/openapi.json"):
        response = client.get(path, headers=auth("tok-alice"))
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"]


def test_cookie_session_post_needs_csrf_token(client: FlaskClient) -> None:
    # A logged-in browser session (token kept in the session cookie) ...
    with client.session_transaction() as session:
        session["token"] = "tok-alice"
    page = client.get("/jobs/")
    assert page.status_code == 200
    # ... cannot post without the form token,
    refused = client.post("/logout")
    assert refused.status_code == 400
    assert b"form token" in refused.data
    # ... and can with it.
    token = page.data.split(b'name="csrf-token" content="')[1].split(b'"')[0].decode()
    accepted = client.post("/logout", data={"csrf_token": token})
    assert accepted.status_code == 302


def test_session_cookie_is_httponly_and_lax(client: FlaskClient) -> None:
    with client.session_transaction() as session:
        session["token"] = "tok-alice"
    response = client.get("/jobs/")
    cookie = response.headers.get("Set-Cookie", "")
    if cookie:  # Flask re-sends it only when the session changed
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert client.application.config["SESSION_COOKIE_HTTPONLY"] is True
    assert client.application.config["SESSION_COOKIE_SAMESITE"] == "Lax"


def test_health_and_metrics(client: FlaskClient) -> None:
    assert client.get("/health").json == {"status": "ok"}
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert b"python_info" in metrics.data


def test_openapi_document_lists_routes(client: FlaskClient) -> None:
    spec = client.get("/api/v1/openapi.json").json
    assert spec["openapi"].startswith("3.")
    assert "/api/v1/user" in spec["paths"]
    assert "401" in spec["paths"]["/api/v1/user"]["get"]["responses"]


def test_html_errors_are_friendly_pages(client: FlaskClient) -> None:
    response = client.get("/jobs/nothing-here", headers=auth("tok-alice"))
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert b"Back to the hub" in response.data
