"""Who may do what, for every image route: anonymous, a user (alice), an admin.

Anonymous callers get 401 from the API and the login redirect from pages, for changes
too; users may
read the enabled images and nothing else (403 for every admin action, 404 for images
they are not offered); admins pass. The routes are taken from the app itself, so a new
image route without a line here fails the completeness check."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from dockyard.models import Image, ImageStatus
from tests.conftest import auth
from tests.support.requirements import docker_answers

ENABLED, HIDDEN, DOOMED = 1, 2, 3


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    alice: int
    admin: int
    json: dict[str, Any] | None = None


def _cases() -> list[Case]:
    delete_status = 204 if docker_answers() is None else 503
    return [
        # -- API ---------------------------------------------------------------------
        Case("GET", "/api/v1/images", 200, 200),
        Case("POST", "/api/v1/images", 403, 422, {"reference": "Not Valid!"}),
        Case("GET", f"/api/v1/images/diff?from={ENABLED}&to={ENABLED}", 200, 200),
        Case("GET", f"/api/v1/images/diff?from={ENABLED}&to={HIDDEN}", 404, 200),
        Case("GET", f"/api/v1/images/{ENABLED}", 200, 200),
        Case("GET", f"/api/v1/images/{HIDDEN}", 404, 200),
        Case("PATCH", f"/api/v1/images/{HIDDEN}", 403, 200, {"description": "changed"}),
        Case("DELETE", f"/api/v1/images/{DOOMED}", 403, delete_status),
        Case("POST", f"/api/v1/images/{HIDDEN}/build", 403, 422, {"directory": "no-such"}),
        Case("GET", f"/api/v1/images/{HIDDEN}/build-log", 403, 200),
        Case("GET", f"/api/v1/images/{ENABLED}/build-log?offset=0", 403, 200),
        # -- pages -------------------------------------------------------------------
        Case("GET", "/images/", 200, 200),
        Case("GET", "/images/new", 403, 200),
        Case("POST", "/images/new", 403, 422),
        Case("GET", "/images/diff", 200, 200),
        Case("GET", f"/images/diff?from={ENABLED}&to={HIDDEN}", 404, 200),
        Case("GET", f"/images/{ENABLED}", 200, 200),
        Case("GET", f"/images/{HIDDEN}", 404, 200),
        Case("POST", f"/images/{HIDDEN}/settings", 403, 303),
        Case("POST", f"/images/{HIDDEN}/retire", 403, 303),
        Case("POST", f"/images/{HIDDEN}/unretire", 403, 303),
        Case("POST", f"/images/{HIDDEN}/build", 403, 422),
        Case("POST", f"/images/{DOOMED}/delete", 403, 303 if delete_status == 204 else 503),
        Case("GET", f"/images/{HIDDEN}/log?offset=0", 403, 200),
    ]


CASES = _cases()


@pytest.fixture
def seeded(app: Flask) -> Iterator[FlaskClient]:
    with app.extensions["dockyard.sessions"]() as session:
        session.add_all(
            [
                Image(id=ENABLED, reference="team/enabled:1", status=ImageStatus.READY,
                      for_jobs=True, created_by="admin"),
                Image(id=HIDDEN, reference="team/hidden:1", status=ImageStatus.READY,
                      created_by="admin"),
                Image(id=DOOMED, reference="team/doomed:1", status=ImageStatus.READY,
                      created_by="admin"),
            ]
        )
        session.commit()
    yield app.test_client()


def _call(client: FlaskClient, case: Case, headers: dict[str, str]) -> Any:
    return client.open(case.path, method=case.method, json=case.json, headers=headers)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.method} {c.path}")
def test_anonymous_callers_are_sent_to_log_in(seeded: FlaskClient, case: Case) -> None:
    response = _call(seeded, case, {})
    # With neither a token nor a session there is nothing to forge: changes are refused
    # like reads (the CSRF check guards requests a session cookie authenticates).
    if case.path.startswith("/api/"):
        assert response.status_code == 401
        assert response.json["error"]
    else:
        assert response.status_code == 302
        assert "/hub/login" in response.headers["Location"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.method} {c.path}")
def test_users_read_and_never_manage(seeded: FlaskClient, case: Case) -> None:
    response = _call(seeded, case, auth("tok-alice"))
    assert response.status_code == case.alice, response.get_data(as_text=True)[:300]
    if case.alice == 403:
        text = response.get_data(as_text=True)
        assert "Only Dockyard admins" in text


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.method} {c.path}")
def test_admins_manage(seeded: FlaskClient, case: Case) -> None:
    response = _call(seeded, case, auth("tok-admin"))
    assert response.status_code == case.admin, response.get_data(as_text=True)[:300]


def test_every_image_route_is_in_the_matrix(app: Flask) -> None:
    covered = {
        (case.method, _rule_of(app, case.method, case.path.split("?")[0])) for case in CASES
    }
    routes = {
        (method, rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith(("/images", "/api/v1/images"))
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert len(routes) >= 19
    assert routes - covered == set()


def _rule_of(app: Flask, method: str, path: str) -> str:
    adapter = app.url_map.bind("localhost")
    rule, _ = adapter.match(path, method=method, return_rule=True)
    return rule.rule


def test_users_cannot_post_image_forms_from_a_page_session_either(
    seeded: FlaskClient,
) -> None:
    with seeded.session_transaction() as session:
        session["token"] = "tok-alice"
    page = seeded.get("/images/")
    token = page.get_data(as_text=True).split('name="csrf-token" content="')[1].split('"')[0]
    assert seeded.post(f"/images/{HIDDEN}/retire").status_code == 400  # no form token
    refused = seeded.post(f"/images/{HIDDEN}/retire", data={"csrf_token": token})
    assert refused.status_code == 403
    listed = seeded.get("/api/v1/images/2", headers=auth("tok-admin")).json
    assert listed["status"] == "ready"


def test_the_openapi_document_describes_every_image_route(client: FlaskClient) -> None:
    paths = client.get("/api/v1/openapi.json").json["paths"]
    expected = {
        "/api/v1/images": {"get", "post"},
        "/api/v1/images/diff": {"get"},
        "/api/v1/images/{image_id}": {"get", "patch", "delete"},
        "/api/v1/images/{image_id}/build": {"post"},
        "/api/v1/images/{image_id}/build-log": {"get"},
    }
    for path, methods in expected.items():
        assert set(paths[path]) == methods, path
    create = paths["/api/v1/images"]["post"]
    assert "requestBody" in create and "403" in create["responses"]
    query = {p["name"] for p in paths["/api/v1/images/diff"]["get"]["parameters"]}
    assert query == {"from", "to"}
