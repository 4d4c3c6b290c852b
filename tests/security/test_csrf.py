"""CSRF: every route that changes something, taken from the app's URL map, refuses a
request authenticated by the session cookie unless it carries that session's token; a
request authenticated by a token (no cookie involved) needs none. GET requests change
nothing (but the time a cluster was last used), which is what makes them safe without a
token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from dockyard.models import Cluster
from tests.conftest import auth
from tests.security.conftest import ROLE_TOKENS, Seeded, log_in_with_cookie
from tests.security.test_authz_matrix import EXPECTED, Expect, _fill, fingerprint

SAFE = {"GET", "HEAD", "OPTIONS"}


def _changing_routes(app: Flask) -> list[str]:
    return sorted(f"{method} {rule.endpoint}" for rule in app.url_map.iter_rules()
                  for method in rule.methods - SAFE)


#: Routes only a run's own job may use (its run token, never a cookie): the CSRF check
#: still refuses a cookie request first, and with the right token the owner gets the 403.
RUN_TOKEN_ONLY = {"/api/v1/runs/{notebook_run}/artifacts/output.ipynb"}


def _allowed_role(expect: Expect) -> str:
    """A role the route would let through, so that only the CSRF check can refuse."""
    for role in ("owner", "admin"):
        if expect.codes()[role] not in (401, 403, 404):
            return role
    if expect.path in RUN_TOKEN_ONLY:
        return "owner"
    raise AssertionError(f"{expect.path}: no role may use it")


def _send(app: Flask, key: str, values: dict[str, object], role: str, *,
          token: str | None, extra: dict[str, str] | None = None) -> Any:
    method = key.split(" ")[0]
    expect = EXPECTED[key]
    client = app.test_client()
    good = log_in_with_cookie(client, ROLE_TOKENS[role])
    headers = dict(extra or {})
    form = _fill(expect.form, values) if expect.form is not None else None
    if token == "good":
        token = good
    if token is not None:
        if expect.json is not None:
            headers["X-CSRFToken"] = token
        else:
            form = {**(form or {}), "csrf_token": token}
    return client.open(_fill(expect.path, values), method=method, headers=headers, data=form,
                       json=_fill(expect.json, values) if expect.json is not None else None)


def _unauthenticated(response: Any) -> bool:
    """401 from the API; the hub's login for pages."""
    location = response.headers.get("Location", "")
    return response.status_code == 401 or (response.status_code == 302
                                           and "/hub/login" in location)


def _another_sessions_token(app: Flask, role: str) -> str:
    return log_in_with_cookie(app.test_client(), ROLE_TOKENS[role])


def test_every_changing_route_is_known(seeded: Seeded) -> None:
    routes = _changing_routes(seeded.app())
    assert len(routes) >= 30
    assert [key for key in routes if key not in EXPECTED] == []


CHANGING = sorted(key for key in EXPECTED if key.split(" ")[0] not in SAFE)


@pytest.mark.parametrize("key", CHANGING)
def test_cookie_requests_need_their_sessions_token(key: str, seeded: Seeded,
                                                   tmp_path: Path) -> None:
    values = seeded.world.values()
    role = _allowed_role(EXPECTED[key])
    app = seeded.app(tmp_path / "copy")
    before = fingerprint(app)
    attempts = {
        "no token": _send(app, key, values, role, token=None),
        "a made-up token": _send(app, key, values, role, token="IjEyMyI.forged.token"),
        "another session's token": _send(app, key, values, role,
                                         token=_another_sessions_token(app, role)),
        # A made-up Authorization header does not turn off the check and fall back to
        # the cookie: the bad token is refused as such.
        "a bogus bearer token": _send(app, key, values, role, token=None,
                                      extra=auth("not-a-token")),
    }
    wrong = {}
    for what, response in attempts.items():
        text = response.get_data(as_text=True)
        if what == "a bogus bearer token":
            refused = _unauthenticated(response) or key == "POST pages.logout"
        else:
            refused = response.status_code == 400 and "form token" in text
        if not refused:
            wrong[what] = (response.status_code, text[:200])
    assert not wrong, f"{key}: {wrong}"
    assert fingerprint(app) == before, f"{key}: a refused request changed the database"
    # With its own token the same request passes (the matrix checks each role's answer).
    allowed = _send(app, key, values, role, token="good")
    assert allowed.status_code == EXPECTED[key].codes()[role], allowed.get_data(as_text=True)
    app.extensions["dockyard.engine"].dispose()


def test_token_requests_need_no_csrf_token(seeded: Seeded, tmp_path: Path) -> None:
    app = seeded.app(tmp_path / "copy")
    client = app.test_client()
    made = client.post("/api/v1/runs", json={"image": "debian:bookworm-slim",
                                             "command": "true"}, headers=auth("tok-alice"))
    assert made.status_code == 201
    app.extensions["dockyard.engine"].dispose()


def _but_cluster_use(rows: list[Any]) -> list[Any]:
    """Every row but a cluster's last use: its owner reading it (API, page, dashboard) is
    use, which the cluster's idle timeout counts from."""
    skip = list(Cluster.__table__.columns.keys()).index("last_activity_at")
    return [(name, [tuple(v for i, v in enumerate(row) if i != skip) for row in found])
            if name == Cluster.__tablename__ else (name, found) for name, found in rows]


def test_gets_change_nothing(seeded: Seeded, tmp_path: Path) -> None:
    app = seeded.app(tmp_path / "copy")
    before = _but_cluster_use(fingerprint(app))
    values = seeded.world.values()
    for key, expect in EXPECTED.items():
        if key.split(" ")[0] != "GET":
            continue
        for role in ("owner", "admin"):
            client = app.test_client()
            log_in_with_cookie(client, ROLE_TOKENS[role])
            client.get(_fill(expect.path, values))
    assert _but_cluster_use(fingerprint(app)) == before
    app.extensions["dockyard.engine"].dispose()


def test_scripts_may_send_the_token_in_either_header(seeded: Seeded, tmp_path: Path) -> None:
    """htmx sends X-CSRFToken (static/dockyard.js); X-XSRF-Token works too, for fetch."""
    app = seeded.app(tmp_path / "copy")
    for header in ("X-CSRFToken", "X-XSRF-Token"):
        client = app.test_client()
        token = log_in_with_cookie(client, "tok-alice")
        made = client.post("/api/v1/runs", headers={header: token},
                           json={"image": "debian:bookworm-slim", "command": "true"})
        assert made.status_code == 201, (header, made.json)
    app.extensions["dockyard.engine"].dispose()
