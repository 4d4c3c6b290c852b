"""A real Dockyard (JupyterHub + proxy + web service + worker): login, single sign-on
into the Dockyard pages, and API authentication with JupyterHub tokens."""

from __future__ import annotations

import http.client
import time

import requests

from tests.support.hubproc import RunningHub


def test_admin_logs_in_through_the_real_form(running_hub: RunningHub) -> None:
    session = running_hub.login()
    home = session.get(running_hub.url + "/hub/home", timeout=10)
    assert home.status_code == 200
    assert "/hub/login" not in home.url
    # The hub's home page links to Dockyard's areas.
    for link in ('id="dockyard-jobs"', 'id="dockyard-data"', 'id="dockyard-images"'):
        assert link in home.text


def test_wrong_password_shows_the_login_page_with_an_error(running_hub: RunningHub) -> None:
    session = requests.Session()
    response = running_hub.post_login(session, "admin", "not-the-password")
    assert response.status_code in (200, 403)
    assert 'id="password_input"' in response.text
    assert "Invalid username or password" in response.text


def test_login_without_xsrf_token_is_refused(running_hub: RunningHub) -> None:
    response = requests.post(
        running_hub.url + "/hub/login",
        data={"username": "admin", "password": running_hub.admin_password},
        timeout=10,
        allow_redirects=False,
    )
    assert response.status_code == 403


def test_logged_in_user_reaches_jobs_through_oauth(running_hub: RunningHub) -> None:
    session = running_hub.login()
    response = session.get(running_hub.service("jobs/"), timeout=30)
    assert response.status_code == 200
    assert response.url.rstrip("/").endswith("/services/dockyard/jobs")
    # The redirect dance went through the hub's OAuth endpoints and came back.
    hops = [r.url for r in response.history]
    assert any("/hub/api/oauth2/authorize" in hop for hop in hops)
    assert any("/services/dockyard/oauth_callback" in hop for hop in hops)
    assert 'id="dy-user">admin' in response.text


def test_anonymous_page_request_is_sent_to_login(running_hub: RunningHub) -> None:
    response = requests.get(running_hub.service("jobs/"), timeout=30)
    assert response.url.startswith(running_hub.url + "/hub/login")


def test_api_needs_a_token(running_hub: RunningHub) -> None:
    response = requests.get(running_hub.service("api/v1/user"), timeout=10)
    assert response.status_code == 401
    assert response.json()["error"] == "Unauthorized"


def test_api_accepts_a_users_jupyterhub_token(running_hub: RunningHub) -> None:
    session = running_hub.create_user("carol")
    token = running_hub.hub_token(session, "carol")
    response = requests.get(
        running_hub.service("api/v1/user"), headers={"Authorization": f"token {token}"}, timeout=10
    )
    assert response.status_code == 200
    assert response.json()["name"] == "carol"
    assert response.json()["admin"] is False
    # A user is not an admin in Dockyard either: the image list is read-only for them.
    bearer = {"Authorization": f"Bearer {token}"}
    assert requests.get(running_hub.service("images/"), headers=bearer, timeout=10).ok
    new_image = requests.get(running_hub.service("images/new"), headers=bearer, timeout=10)
    assert new_image.status_code == 403


def test_signup_needs_admin_approval(running_hub: RunningHub) -> None:
    anon = requests.Session()
    anon.get(running_hub.url + "/hub/signup", timeout=10)
    anon.post(
        running_hub.url + "/hub/signup",
        data={
            "username": "dave",
            "signup_password": "dave-pass-2024!",
            "signup_password_confirmation": "dave-pass-2024!",
            "_xsrf": anon.cookies.get("_xsrf", ""),
        },
        timeout=10,
    ).raise_for_status()
    refused = running_hub.post_login(requests.Session(), "dave", "dave-pass-2024!")
    assert "/hub/login" in refused.url
    # Approval is a POST with the hub's XSRF token: a plain link (GET) changes nothing.
    admin = running_hub.login()
    assert admin.get(running_hub.url + "/hub/authorize/dave", timeout=10).status_code == 405
    still_refused = running_hub.post_login(requests.Session(), "dave", "dave-pass-2024!")
    assert "/hub/login" in still_refused.url
    no_token = admin.post(running_hub.url + "/hub/authorize/dave", timeout=10)
    assert no_token.status_code == 403
    page = admin.get(running_hub.url + "/hub/authorize", timeout=10)
    assert 'id="signup-dave"' in page.text
    running_hub.approve("dave")
    running_hub.login("dave", "dave-pass-2024!")  # raises if login fails


def test_the_web_service_keeps_idle_connections_longer_than_the_proxy(
        running_hub: RunningHub) -> None:
    """The proxy reuses idle connections to the web service; had the service closed one
    first (gunicorn's default: after 2 s), the next request sent on it would fail and the
    user would see a 503. Node's agent drops idle sockets after 5 s, so 6 s idle must not
    break the connection."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", int(running_hub.env["DOCKYARD_WEB_PORT"]), timeout=10)
    try:
        sockets = []
        for pause in (0, 6):
            time.sleep(pause)
            connection.request("GET", "/services/dockyard/health")
            response = connection.getresponse()  # RemoteDisconnected had we closed it
            assert response.status == 200
            response.read()
            sockets.append(connection.sock)
        assert sockets[0] is not None and sockets[1] is sockets[0], "not kept open"
    finally:
        connection.close()
