"""Who may do what, on every route of the web app: anonymous, the owner of the object,
another user, an admin; by API token and by the browser's cookie session.

The routes come from the app's own URL map: a route added without a line in EXPECTED
fails ``test_every_route_has_an_expectation``. Each request allowed to change something
runs on a fresh copy of the seeded installation, so one role's change never decides
another role's answer; the refused ones share a copy, which must come out unchanged.
For routes without an object of their own, "owner" and "other" are simply two users.

The rules the table spells out: pages send an anonymous visitor to the hub's login and
the API answers 401, for changes too (the CSRF check, test_csrf.py, is for requests a
session cookie authenticates); another user's job objects are 404, never 403; admin-only
actions are 403 for users; data tables are readable by everyone and writable by the
namespace's owner and admins (403 for others, since they can see the table).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from dockyard.models import Base
from tests.conftest import auth
from tests.security.conftest import ROLE_TOKENS, Seeded, log_in_with_cookie
from tests.security.world import SHELL_IMAGE
from tests.support.requirements import docker_answers

#: An anonymous visitor to a page is sent to the hub's login.
LOGIN = "login"
#: On every response, whoever asks and whatever the answer.
HEADERS = ("Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy")


@dataclass(frozen=True)
class Expect:
    path: str  # with {placeholders} from World.values()
    anonymous: int | str
    owner: int
    other: int
    admin: int
    json: dict[str, Any] | None = None
    form: dict[str, str] | None = None

    def codes(self) -> dict[str, int | str]:
        return {"anonymous": self.anonymous, "owner": self.owner, "other": self.other,
                "admin": self.admin}


def _delete_image_status() -> tuple[int, int]:
    # Deleting asks the engine which notebook servers use the image: 503 without one.
    return (204, 303) if docker_answers() is None else (503, 503)


API_DELETE, PAGE_DELETE = _delete_image_status()
DEFINITION = {"name": "nightly-report", "image": SHELL_IMAGE, "command": "true"}
DEFINITION_FORM = {"name": "nightly-report", "image": SHELL_IMAGE, "command": "true",
                   "cpu": "0.5", "memory_mb": "64"}
CLUSTER = {"name": "another", "kind": "ray", "workers": 1, "image": SHELL_IMAGE}
CLUSTER_FORM = {key: str(value) for key, value in CLUSTER.items()}

EXPECTED: dict[str, Expect] = {
    # -- service-wide ---------------------------------------------------------------
    "GET pages.index": Expect("/", LOGIN, 302, 302, 302),
    "GET pages.health": Expect("/health", 200, 200, 200, 200),
    # Process metrics (no user data), for the operator's scraper, like /health.
    "GET pages.metrics": Expect("/metrics", 200, 200, 200, 200),
    "GET pages.oauth_callback": Expect("/oauth_callback", 400, 400, 400, 400),
    "POST pages.logout": Expect("/logout", 302, 302, 302, 302),
    "GET static": Expect("/static/dockyard.js", 200, 200, 200, 200),
    # -- jobs pages -----------------------------------------------------------------
    "GET jobs.runs_page": Expect("/jobs/", LOGIN, 200, 200, 200),
    "GET jobs.launch_form": Expect("/jobs/new?clone={run_id}", LOGIN, 200, 404, 200),
    "POST jobs.launch": Expect("/jobs/new", LOGIN, 303, 303, 303,
                               form={"image": SHELL_IMAGE, "command": "true"}),
    "GET jobs.run_page": Expect("/jobs/runs/{run_id}", LOGIN, 200, 404, 200),
    "GET jobs.run_panel": Expect("/jobs/runs/{run_id}/panel", LOGIN, 200, 404, 200),
    "GET jobs.log_tail": Expect("/jobs/runs/{run_id}/log-tail?offset=0", LOGIN, 200, 404, 200),
    "GET jobs.download_log": Expect("/jobs/runs/{run_id}/log.txt", LOGIN, 200, 404, 200),
    "POST jobs.cancel": Expect("/jobs/runs/{run_id}/cancel", LOGIN, 303, 404, 303),
    "POST jobs.retry": Expect("/jobs/runs/{ended_run}/retry", LOGIN, 303, 404, 303),
    "GET jobs.run_notebook": Expect("/jobs/runs/{notebook_run}/notebook", LOGIN, 200, 404,
                                    200),
    "GET jobs.notebook_frame": Expect("/jobs/runs/{notebook_run}/notebook.html", LOGIN, 200,
                                      404, 200),
    "GET jobs.download_artifact": Expect("/jobs/runs/{notebook_run}/artifacts/input.ipynb",
                                         LOGIN, 200, 404, 200),
    "GET jobs.definitions_page": Expect("/jobs/definitions", LOGIN, 200, 200, 200),
    "GET jobs.definition_page": Expect("/jobs/definitions/{definition_id}", LOGIN, 200, 404,
                                       200),
    "GET jobs.new_definition": Expect("/jobs/definitions/new", LOGIN, 200, 200, 200),
    "POST jobs.create_definition": Expect("/jobs/definitions/new", LOGIN, 303, 303, 303,
                                          form={**DEFINITION_FORM, "name": "another"}),
    "GET jobs.edit_definition": Expect("/jobs/definitions/{definition_id}/edit", LOGIN, 200,
                                       404, 200),
    "POST jobs.update_definition": Expect("/jobs/definitions/{definition_id}/edit", LOGIN, 303,
                                          404, 303, form=DEFINITION_FORM),
    "POST jobs.delete_definition": Expect("/jobs/definitions/{definition_id}/delete", LOGIN, 303,
                                          404, 303),
    "POST jobs.pause_definition": Expect("/jobs/definitions/{definition_id}/pause", LOGIN, 303,
                                         404, 303),
    "POST jobs.resume_definition": Expect("/jobs/definitions/{definition_id}/resume", LOGIN,
                                          303, 404, 303),
    # The seeded definition has no schedule, so a range of days is refused beside the form's
    # fields (422) for those who may see it, and the definition is missing for others.
    "POST jobs.create_backfill": Expect("/jobs/definitions/{definition_id}/backfills", LOGIN,
                                        422, 404, 422,
                                        form={"from": "2024-01-01", "to": "2024-01-02"}),
    # -- jobs API -------------------------------------------------------------------
    "GET api.jobs_list_definitions": Expect("/api/v1/definitions", 401, 200, 200, 200),
    "POST api.jobs_create_definition": Expect("/api/v1/definitions", 401, 201, 201, 201,
                                              json={**DEFINITION, "name": "another"}),
    "GET api.jobs_get_definition": Expect("/api/v1/definitions/{definition_id}", 401, 200, 404,
                                          200),
    "PUT api.jobs_update_definition": Expect("/api/v1/definitions/{definition_id}", 401, 200,
                                             404, 200, json=DEFINITION),
    "DELETE api.jobs_delete_definition": Expect("/api/v1/definitions/{definition_id}", 401,
                                                204, 404, 204),
    "POST api.jobs_pause_definition": Expect("/api/v1/definitions/{definition_id}/pause", 401,
                                             200, 404, 200),
    "POST api.jobs_resume_definition": Expect("/api/v1/definitions/{definition_id}/resume",
                                              401, 200, 404, 200),
    "GET api.jobs_list_fires": Expect("/api/v1/definitions/{definition_id}/fires", 401, 200,
                                      404, 200),
    "GET api.jobs_list_backfills": Expect("/api/v1/definitions/{definition_id}/backfills",
                                          401, 200, 404, 200),
    # As on the page: the seeded definition has no schedule, so a range of days is refused.
    "POST api.jobs_create_backfill": Expect("/api/v1/definitions/{definition_id}/backfills",
                                            401, 422, 404, 422,
                                            json={"from": "2024-01-01", "to": "2024-01-02"}),
    "GET api.jobs_list_pools": Expect("/api/v1/pools", 401, 200, 200, 200),
    "POST api.jobs_create_run": Expect("/api/v1/runs", 401, 201, 201, 201,
                                       json={"image": SHELL_IMAGE, "command": "true"}),
    "GET api.jobs_list_runs": Expect("/api/v1/runs", 401, 200, 200, 200),
    # Asking for another user's runs by owner finds none (test_lists_never_show_others).
    "GET api.jobs_list_runs owner=": Expect("/api/v1/runs?owner=alice", 401, 200, 200, 200),
    "GET api.jobs_get_run": Expect("/api/v1/runs/{run_id}", 401, 200, 404, 200),
    "POST api.jobs_cancel_run": Expect("/api/v1/runs/{run_id}/cancel", 401, 202, 404, 202),
    "POST api.jobs_retry_run": Expect("/api/v1/runs/{ended_run}/retry", 401, 201, 404, 201),
    "GET api.jobs_run_events": Expect("/api/v1/runs/{run_id}/events", 401, 200, 404, 200),
    "GET api.jobs_run_logs": Expect("/api/v1/runs/{run_id}/logs", 401, 200, 404, 200),
    "GET api.jobs_list_artifacts": Expect("/api/v1/runs/{notebook_run}/artifacts", 401, 200,
                                          404, 200),
    "GET api.jobs_get_artifact": Expect("/api/v1/runs/{notebook_run}/artifacts/output.ipynb",
                                        401, 200, 404, 200),
    # Only the run's own job (its run token) sends its executed notebook; not even its owner.
    "PUT api.jobs_put_artifact": Expect("/api/v1/runs/{notebook_run}/artifacts/output.ipynb",
                                        401, 403, 404, 403, json={"cells": []}),
    # -- clusters pages: a user's own (admins: all), others' are 404 ---------------------
    "GET clusters.clusters_page": Expect("/clusters/", LOGIN, 200, 200, 200),
    "GET clusters.clusters_table": Expect("/clusters/list", LOGIN, 200, 200, 200),
    "POST clusters.create_cluster": Expect("/clusters/", LOGIN, 303, 303, 303,
                                           form=CLUSTER_FORM),
    "GET clusters.cluster_page": Expect("/clusters/{cluster_id}", LOGIN, 200, 404, 200),
    "GET clusters.cluster_status": Expect("/clusters/{cluster_id}/status", LOGIN, 200, 404,
                                          200),
    "POST clusters.scale_cluster": Expect("/clusters/{cluster_id}/scale", LOGIN, 303, 404, 303,
                                          form={"workers": "3"}),
    "POST clusters.stop_cluster": Expect("/clusters/{cluster_id}/stop", LOGIN, 303, 404, 303),
    # The dashboard is its owner's alone: 404 for everyone else, admins included (an
    # admin's session must not load a page the owner controls). The seeded head's address
    # answers nothing, so the owner gets 503 (test_cluster_pages.py proxies a real one).
    "GET clusters.dashboard": Expect("/clusters/{cluster_id}/dashboard/", LOGIN, 503, 404,
                                     404),
    "GET clusters.dashboard path": Expect("/clusters/{cluster_id}/dashboard/api/nodes?view=1",
                                          LOGIN, 503, 404, 404),
    # -- clusters API ---------------------------------------------------------------
    "GET api.clusters_list_clusters": Expect("/api/v1/clusters", 401, 200, 200, 200),
    "GET api.clusters_list_clusters owner=": Expect("/api/v1/clusters?owner=alice", 401, 200,
                                                    200, 200),
    "POST api.clusters_create_cluster": Expect("/api/v1/clusters", 401, 201, 201, 201,
                                               json=CLUSTER),
    "GET api.clusters_get_cluster": Expect("/api/v1/clusters/{cluster_id}", 401, 200, 404,
                                           200),
    "PATCH api.clusters_scale_cluster": Expect("/api/v1/clusters/{cluster_id}", 401, 200, 404,
                                               200, json={"workers": 3}),
    "DELETE api.clusters_stop_cluster": Expect("/api/v1/clusters/{cluster_id}", 401, 202, 404,
                                               202),
    # -- images pages (admins manage; users see what they are offered) ----------------
    "GET images.images_page": Expect("/images/", LOGIN, 200, 200, 200),
    "GET images.new_image_page": Expect("/images/new", LOGIN, 403, 403, 200),
    "POST images.create_image_page": Expect("/images/new", LOGIN, 403, 403, 422,
                                            form={"reference": "Not Valid!"}),
    "GET images.image_page": Expect("/images/{image_id}", LOGIN, 200, 200, 200),
    "GET images.image_page hidden": Expect("/images/{hidden_image}", LOGIN, 404, 404, 200),
    "POST images.change_image_page": Expect("/images/{hidden_image}/settings", LOGIN, 403, 403,
                                            303, form={"description": "changed"}),
    "POST images.retire_image_page": Expect("/images/{hidden_image}/retire", LOGIN, 403, 403,
                                            303),
    "POST images.unretire_image_page": Expect("/images/{hidden_image}/unretire", LOGIN, 403,
                                              403, 303),
    "POST images.build_image_page": Expect("/images/{hidden_image}/build", LOGIN, 403, 403, 303,
                                           form={"directory": "test"}),
    "POST images.delete_image_page": Expect("/images/{doomed_image}/delete", LOGIN, 403, 403,
                                            PAGE_DELETE),
    "GET images.build_log_fragment": Expect("/images/{image_id}/log?offset=0", LOGIN, 403, 403,
                                            200),
    "GET images.diff_page": Expect("/images/diff?from={image_id}&to={image_id}", LOGIN, 200,
                                   200, 200),
    "GET images.diff_page hidden": Expect("/images/diff?from={image_id}&to={hidden_image}",
                                          LOGIN, 404, 404, 200),
    # -- images API -----------------------------------------------------------------
    "GET api.images_list_images": Expect("/api/v1/images", 401, 200, 200, 200),
    "POST api.images_create_image": Expect("/api/v1/images", 401, 403, 403, 422,
                                           json={"reference": "Not Valid!"}),
    "GET api.images_diff_images": Expect("/api/v1/images/diff?from={image_id}&to={image_id}",
                                         401, 200, 200, 200),
    "GET api.images_get_image_route": Expect("/api/v1/images/{image_id}", 401, 200, 200, 200),
    "GET api.images_get_image_route hidden": Expect("/api/v1/images/{hidden_image}", 401, 404,
                                                    404, 200),
    "PATCH api.images_patch_image": Expect("/api/v1/images/{hidden_image}", 401, 403, 403, 200,
                                           json={"description": "changed"}),
    "DELETE api.images_delete_image_route": Expect("/api/v1/images/{doomed_image}", 401, 403,
                                                   403, API_DELETE),
    "POST api.images_build_image": Expect("/api/v1/images/{hidden_image}/build", 401, 403, 403,
                                          202, json={"directory": "test"}),
    "GET api.images_build_log": Expect("/api/v1/images/{image_id}/build-log", 401, 403, 403,
                                       200),
    # -- data pages (everyone reads; the namespace's owner and admins write) ------------
    "GET data.tables_page": Expect("/data/", LOGIN, 200, 200, 200),
    "GET data.table_page": Expect("/data/{namespace}/{name}", LOGIN, 200, 200, 200),
    "GET data.partition_page": Expect("/data/{namespace}/{name}/partition?p={partition}", LOGIN,
                                      200, 200, 200),
    "GET data.rollback_confirm": Expect(
        "/data/{namespace}/{name}/rollback?p={partition}&to={older_batch}", LOGIN, 200, 403,
        200),
    "POST data.rollback_submit": Expect("/data/{namespace}/{name}/rollback", LOGIN, 302, 403,
                                        302, form={"p": "{partition}", "to": "{older_batch}"}),
    # -- data API -------------------------------------------------------------------
    "GET api.data_list_namespaces": Expect("/api/v1/namespaces", 401, 200, 200, 200),
    "PUT api.data_put_namespace": Expect("/api/v1/namespaces/bob-ns", 401, 403, 403, 200,
                                         json={"owner": "bob"}),
    "GET api.data_list_tables": Expect("/api/v1/tables", 401, 200, 200, 200),
    "GET api.data_get_table": Expect("/api/v1/tables/{namespace}/{name}", 401, 200, 200, 200),
    "PUT api.data_put_table": Expect("/api/v1/tables/{namespace}/{name}", 401, 200, 403, 200,
                                     json={"description": "changed"}),
    "POST api.data_begin_batch": Expect("/api/v1/tables/{namespace}/{name}/batches", 401, 201,
                                        403, 201, json={"partition": {"date": "20240102"}}),
    "GET api.data_get_batch": Expect("/api/v1/tables/{namespace}/{name}/batches/{batch_id}",
                                     401, 200, 200, 200),
    "POST api.data_commit_batch": Expect(
        "/api/v1/tables/{namespace}/{name}/batches/{pending_batch}/commit", 401, 200, 404, 200,
        json={}),
    "GET api.data_table_history": Expect("/api/v1/tables/{namespace}/{name}/history", 401, 200,
                                         200, 200),
    "GET api.data_list_partitions": Expect("/api/v1/tables/{namespace}/{name}/partitions", 401,
                                           200, 200, 200),
    "GET api.data_preview": Expect("/api/v1/tables/{namespace}/{name}/preview", 401, 200, 200,
                                   200),
    "POST api.data_rollback": Expect("/api/v1/tables/{namespace}/{name}/rollback", 401, 200,
                                     403, 200, json={"partition": {"date": "20240101"}}),
    "POST api.data_resolve_reads": Expect("/api/v1/tables/{namespace}/{name}/reads", 401, 200,
                                          200, 200, json={}),
    # Lineage names the run's batches: the run's owner and admins only.
    "GET api.data_run_lineage": Expect("/api/v1/lineage/runs/{ended_run}", 401, 200, 404, 200),
    # -- lineage graph: data is everyone's, runs and definitions their owner's and admins' --
    "GET lineage.lineage_page": Expect("/lineage?run_id={run_id}", LOGIN, 200, 404, 200),
    "GET lineage.lineage_page table": Expect("/lineage?namespace={namespace}&table={name}",
                                             LOGIN, 200, 200, 200),
    "GET api.lineage_get_lineage": Expect("/api/v1/lineage?definition_id={definition_id}", 401,
                                          200, 404, 200),
    "GET api.lineage_get_lineage table": Expect(
        "/api/v1/lineage?namespace={namespace}&table={name}", 401, 200, 200, 200),
    # -- the rest of the API --------------------------------------------------------
    "GET api.openapi_document": Expect("/api/v1/openapi.json", 200, 200, 200, 200),
    "GET api.users_whoami": Expect("/api/v1/user", 401, 200, 200, 200),
}


def _routes(app: Flask) -> set[str]:
    return {f"{method} {rule.endpoint}" for rule in app.url_map.iter_rules()
            for method in rule.methods - {"HEAD", "OPTIONS"}}


def test_every_route_has_an_expectation(seeded: Seeded) -> None:
    routes = _routes(seeded.app())
    covered = {key.split(" ")[0] + " " + key.split(" ")[1] for key in EXPECTED}
    missing = sorted(routes - covered)
    assert not missing, f"routes without a line in EXPECTED (add one): {missing}"
    stale = sorted(covered - routes)
    assert not stale, f"EXPECTED names routes the app no longer has: {stale}"
    # Each line's path really reaches the route it claims.
    app = seeded.app()
    adapter = app.url_map.bind("localhost")
    for key, expect in EXPECTED.items():
        method, endpoint = key.split(" ")[:2]
        path = expect.path.format(**seeded.world.values()).split("?")[0]
        found, _ = adapter.match(path, method=method)
        assert found == endpoint, (key, found)


def _fill(value: Any, values: dict[str, object]) -> Any:
    if isinstance(value, str):
        return value.format(**values)
    if isinstance(value, dict):
        return {k: _fill(v, values) for k, v in value.items()}
    return value


def _call(client: FlaskClient, method: str, expect: Expect, values: dict[str, object],
          headers: dict[str, str], csrf: str | None) -> Any:
    headers = dict(headers)
    form = _fill(expect.form, values) if expect.form is not None else None
    if csrf is not None:
        headers["X-CSRFToken"] = csrf
        if method != "GET" and expect.json is None:
            form = {**(form or {}), "csrf_token": csrf}
    return client.open(_fill(expect.path, values), method=method,
                       json=_fill(expect.json, values) if expect.json is not None else None,
                       data=form, headers=headers)


def _check(response: Any, expected: int | str) -> str | None:
    missing = [name for name in HEADERS if name not in response.headers]
    if missing:
        return f"{response.status_code} without the headers {missing}"
    if expected == LOGIN:
        location = response.headers.get("Location", "")
        if response.status_code == 302 and "/hub/login" in location:
            return None
        return f"{response.status_code} {location}"
    if response.status_code == expected:
        return None
    return f"{response.status_code} {response.get_data(as_text=True)[:200]!r}"


def fingerprint(app: Flask) -> list[Any]:
    """Every row of every table, to show that a refused request changed nothing."""
    rows: list[Any] = []
    with app.extensions["dockyard.engine"].connect() as connection:
        for table in Base.metadata.sorted_tables:
            rows.append((table.name, connection.execute(
                select(table).order_by(*table.primary_key.columns)).all()))
    return rows


def _attempts(expect: Expect) -> list[tuple[str, str, int | str]]:
    """(role, way, expected) for every credential of every role."""
    found = []
    for role, expected in expect.codes().items():
        for way in (["none"] if role == "anonymous" else ["token", "cookie"]):
            found.append((role, way, expected))
    return found


def _refused(expected: int | str) -> bool:
    return expected == LOGIN or int(expected) >= 400


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_route_answers_each_role(key: str, seeded: Seeded, tmp_path: Path) -> None:
    method = key.split(" ")[0]
    expect = EXPECTED[key]
    values = seeded.world.values()
    changes = method != "GET"
    # Refusals share one copy, which must come out unchanged; each request that is
    # allowed to change something gets a fresh copy of its own.
    shared = seeded.app(tmp_path / "shared") if changes else seeded.app()
    before = fingerprint(shared) if changes else None
    wrong: list[str] = []
    for role, way, expected in _attempts(expect):
        own = changes and not _refused(expected)
        app = seeded.app(tmp_path / f"{role}-{way}") if own else shared
        client = app.test_client()
        csrf = None
        headers: dict[str, str] = {}
        if way == "token":
            headers = auth(ROLE_TOKENS[role])
        elif way == "cookie":
            csrf = log_in_with_cookie(client, ROLE_TOKENS[role])
        response = _call(client, method, expect, values, headers, csrf)
        problem = _check(response, expected)
        if problem:
            wrong.append(f"{role} by {way}: expected {expected}, got {problem}")
        if own:
            app.extensions["dockyard.engine"].dispose()
    if changes:
        assert fingerprint(shared) == before, f"{key}: a refused request changed the database"
    shared.extensions["dockyard.engine"].dispose()
    assert not wrong, f"{key} {expect.path}:\n" + "\n".join(wrong)


def test_lists_never_show_another_users_objects(seeded: Seeded) -> None:
    client = seeded.app().test_client()
    for path, key in (("/api/v1/runs", "runs"), ("/api/v1/runs?owner=alice", "runs"),
                      ("/api/v1/definitions", "definitions"), ("/api/v1/clusters", "clusters"),
                      ("/api/v1/clusters?owner=alice", "clusters")):
        assert client.get(path, headers=auth("tok-alice")).json[key], path
        assert client.get(path, headers=auth("tok-bob")).json[key] == [], path
    for path in ("/jobs/", "/jobs/definitions"):
        page = client.get(path, headers=auth("tok-bob")).get_data(as_text=True)
        assert "nightly-report" not in page and "plain words" not in page, path
    assert "spark://head:7077" not in client.get(
        "/clusters/", headers=auth("tok-bob")).get_data(as_text=True)
    # Users are offered the enabled images only.
    listed = client.get("/api/v1/images", headers=auth("tok-bob")).json["images"]
    assert [image["reference"] for image in listed] == [SHELL_IMAGE]
