"""The cluster pages as a browser session sees them: the list and create form (bad input
comes back beside its field, as typed), a cluster's page with its live part, snippet,
scale and stop; the Launch form's cluster fields and the run page's cluster; and the
dashboard proxy, for the owner only, against a real HTTP server standing in for the head."""

from __future__ import annotations

import html
from datetime import timedelta

import pytest
from flask.testing import FlaskClient

from dockyard.models import ClusterState, utcnow
from dockyard.settings import Settings
from tests.clusters.web_support import (
    ALICE,
    ENGINES_IMAGE,
    PLAIN_IMAGE,
    add_engine_images,
    browser,
    cluster_row,
    create,
    dashboard_server,
    running,
    set_cluster,
)


@pytest.fixture
def pages(client: FlaskClient, migrated: Settings) -> FlaskClient:
    add_engine_images(migrated)
    return client


def text(response: object) -> str:
    return html.unescape(response.data.decode())  # type: ignore[attr-defined]


def start(client: FlaskClient, csrf: str, **fields: str) -> object:
    form = {"csrf_token": csrf, "name": "big-join", "kind": "spark", "workers": "2",
            "worker_cpu": "1", "worker_memory_mb": "1024", "image": ENGINES_IMAGE,
            "pool": "default", **fields}
    return client.post("/clusters/", data=form)


def test_the_nav_bar_links_to_clusters(pages: FlaskClient) -> None:
    browser(pages)
    page = pages.get("/jobs/").data.decode()
    assert 'id="dockyard-nav-clusters"' in page and "Clusters</a>" in page
    assert 'class="nav-link active" id="dockyard-nav-clusters"' in \
        pages.get("/clusters/").data.decode()


def test_create_form_starts_a_cluster_and_shows_its_page(pages: FlaskClient) -> None:
    csrf = browser(pages)
    form = pages.get("/clusters/").data.decode()
    assert f'value="{ENGINES_IMAGE}"' in form and 'name="worker_memory_mb"' in form
    made = start(pages, csrf)
    assert made.status_code == 303
    page = pages.get(made.headers["Location"])
    assert page.status_code == 200
    body = text(page)
    assert "big-join" in body and 'data-status="queued"' in body
    assert 'import dockyard_data\nspark = dockyard_data.cluster("big-join").spark()' in body
    # The status part polls while the cluster settles.
    assert 'id="cluster-status" hx-get=' in body
    listed = text(pages.get("/clusters/"))
    assert "big-join" in listed and 'id="live-clusters" hx-get=' in listed


@pytest.mark.parametrize(("fields", "field", "words"), [
    ({"name": "Big Join!"}, "name", "pattern"),
    ({"kind": "dask"}, "kind", "'ray' or 'spark'"),
    ({"workers": "lots"}, "workers", "valid integer"),
    ({"workers": "99"}, "workers", "at most 8"),
    ({"worker_cpu": "-1"}, "worker_cpu", "greater than or equal to 0.01"),
    ({"worker_memory_mb": "12"}, "worker_memory_mb", "512"),
    ({"image": PLAIN_IMAGE}, "kind", "has no Spark"),
    ({"pool": "elsewhere"}, "pool", "unknown pool"),
    ({"name": "run-3"}, "name", "kept for the clusters of runs"),
])
def test_create_form_refuses_bad_input_beside_the_field_keeping_what_was_typed(
        pages: FlaskClient, fields: dict[str, str], field: str, words: str) -> None:
    csrf = browser(pages)
    refused = start(pages, csrf, **fields)
    assert refused.status_code == 422
    body = text(refused)
    assert f'id="error-{field}"' in body, body[-3000:]
    error = body.split(f'id="error-{field}">', 1)[1].split("</div>", 1)[0]
    assert words in error, error
    for name, value in fields.items():
        if name not in ("kind", "image", "pool"):
            assert f'value="{value}"' in body, name
        else:
            assert f'value="{value}" selected' in body, name
    assert pages.get("/api/v1/clusters?state=all", headers=ALICE).json["clusters"] == []


def test_a_taken_name_is_said_beside_the_name(pages: FlaskClient) -> None:
    csrf = browser(pages)
    assert start(pages, csrf, workers="1").status_code == 303
    again = start(pages, csrf, workers="1")
    assert again.status_code == 422
    assert "you already have a live cluster named" in text(again).split('id="error-name">')[1]


def test_the_create_form_needs_the_csrf_token(pages: FlaskClient) -> None:
    browser(pages)
    assert pages.post("/clusters/", data={"name": "x", "kind": "ray"}).status_code == 400


def test_scale_and_stop_from_the_page(pages: FlaskClient, migrated: Settings) -> None:
    csrf = browser(pages)
    cluster_id = int(start(pages, csrf, kind="ray").headers["Location"].rsplit("/", 1)[1])
    running(migrated, cluster_id, "http://127.0.0.1:9")
    page = text(pages.get(f"/clusters/{cluster_id}"))
    assert "ray://head:10001" in page
    assert 'dockyard_data.cluster("big-join").ray()' in page
    assert f'href="/clusters/{cluster_id}/dashboard/"' in page
    scaled = pages.post(f"/clusters/{cluster_id}/scale", data={"csrf_token": csrf,
                                                              "workers": "3"})
    assert scaled.status_code == 303
    assert cluster_row(migrated, cluster_id).workers == 3
    for typed, words in (("many", "valid integer"), ("0", "greater than or equal to 1"),
                         ("50", "at most 8"), ("", "Field required")):
        refused = pages.post(f"/clusters/{cluster_id}/scale",
                             data={"csrf_token": csrf, "workers": typed})
        assert refused.status_code == 422, typed
        body = text(refused)
        assert words in body.split('id="error-workers">')[1].split("</div>")[0], typed
        assert f'name="workers" inputmode="numeric" value="{typed}"' in body
    stopped = pages.post(f"/clusters/{cluster_id}/stop", data={"csrf_token": csrf})
    assert stopped.status_code == 303
    assert cluster_row(migrated, cluster_id).stop_requested
    assert "Stop requested" in text(pages.get(f"/clusters/{cluster_id}"))


def test_the_status_part_and_polling_is_not_use(pages: FlaskClient, migrated: Settings) -> None:
    cluster = create(pages).json
    long_ago = utcnow() - timedelta(hours=2)
    set_cluster(migrated, cluster["id"], last_activity_at=long_ago)
    browser(pages)
    part = pages.get(f"/clusters/{cluster['id']}/status")
    assert part.status_code == 200 and 'data-status="queued"' in part.data.decode()
    assert cluster_row(migrated, cluster["id"]).last_activity_at == long_ago
    # Opening the page is use.
    pages.get(f"/clusters/{cluster['id']}")
    assert cluster_row(migrated, cluster["id"]).last_activity_at > long_ago
    set_cluster(migrated, cluster["id"], status=ClusterState.FAILED, reason="no room",
                ended_at=utcnow())
    ended = pages.get(f"/clusters/{cluster['id']}/status").data.decode()
    assert "hx-get" not in ended.split(">", 1)[0] and "no room" in ended
    assert "stop-cluster" not in ended


def test_another_users_cluster_pages_are_not_found(pages: FlaskClient) -> None:
    cluster = create(pages).json
    csrf = browser(pages, "tok-bob")
    for path in ("", "/status", "/dashboard/"):
        assert pages.get(f"/clusters/{cluster['id']}{path}").status_code == 404, path
    for path in ("/scale", "/stop"):
        assert pages.post(f"/clusters/{cluster['id']}{path}",
                          data={"csrf_token": csrf, "workers": "1"}).status_code == 404
    listed = pages.get("/clusters/").data.decode()
    assert 'data-cluster="{}"'.format(cluster["id"]) not in listed
    browser(pages, "tok-admin")
    assert pages.get(f"/clusters/{cluster['id']}").status_code == 200


def test_an_admin_sees_another_users_cluster_without_its_dashboard(
        pages: FlaskClient, migrated: Settings) -> None:
    cluster = create(pages).json
    running(migrated, cluster["id"], "http://127.0.0.1:9")
    dashboard = f'href="/clusters/{cluster["id"]}/dashboard/"'
    browser(pages)
    assert dashboard in pages.get(f"/clusters/{cluster['id']}").data.decode()
    browser(pages, "tok-admin")
    page = pages.get(f"/clusters/{cluster['id']}")
    assert page.status_code == 200 and "ray://head:10001" in page.data.decode()
    assert dashboard not in page.data.decode()
    assert dashboard not in pages.get(f"/clusters/{cluster['id']}/status").data.decode()
    assert pages.get(f"/clusters/{cluster['id']}/dashboard/").status_code == 404


def test_launch_form_has_cluster_fields_and_keeps_them(pages: FlaskClient) -> None:
    csrf = browser(pages)
    form = pages.get("/jobs/new").data.decode()
    assert 'name="cluster_kind"' in form and 'name="cluster_workers"' in form
    base = {"csrf_token": csrf, "image": ENGINES_IMAGE, "command": "python job.py", "cpu": "1",
            "memory_mb": "256", "gpu": "0", "max_retries": "0"}
    refused = pages.post("/jobs/new", data={**base, "cluster_kind": "ray",
                                            "cluster_workers": "x",
                                            "cluster_worker_memory_mb": "4096"})
    assert refused.status_code == 422
    body = text(refused)
    assert "valid integer" in body.split('id="error-cluster_workers">')[1]
    assert 'value="x"' in body and 'value="4096"' in body
    assert '<option value="ray" selected>' in body
    refused = pages.post("/jobs/new", data={**base, "image": PLAIN_IMAGE,
                                            "cluster_kind": "spark"})
    assert refused.status_code == 422
    assert "has no Spark" in text(refused).split('id="error-cluster_kind">')[1]
    made = pages.post("/jobs/new", data={**base, "cluster_kind": "spark",
                                         "cluster_workers": "3", "cluster_worker_cpu": "0.5"})
    assert made.status_code == 303, text(made)[-2000:]
    run_page = text(pages.get(made.headers["Location"]))
    assert "Spark, 3 workers × 0.5 CPU · 2048 MB" in run_page
    run_id = made.headers["Location"].rsplit("/", 1)[1]
    clone = pages.get(f"/jobs/new?clone={run_id}").data.decode()
    assert '<option value="spark" selected>' in clone and 'value="3"' in clone
    # None chosen: the run has no cluster.
    alone = pages.post("/jobs/new", data={**base, "cluster_kind": "", "cluster_workers": "3"})
    assert alone.status_code == 303
    run = pages.get(f"/api/v1/runs/{alone.headers['Location'].rsplit('/', 1)[1]}",
                    headers=ALICE).json
    assert run["cluster"] is None


# -- the dashboard -------------------------------------------------------------------------
def test_dashboard_is_proxied_for_the_owner(pages: FlaskClient, migrated: Settings) -> None:
    cluster = create(pages).json
    with dashboard_server() as head:
        running(migrated, cluster["id"], head.url)
        set_cluster(migrated, cluster["id"], last_activity_at=utcnow() - timedelta(hours=1))
        before = cluster_row(migrated, cluster["id"]).last_activity_at
        browser(pages)
        answer = pages.get(f"/clusters/{cluster['id']}/dashboard/nodes?view=summary&x=1")
        assert answer.status_code == 200
        assert answer.data.decode() == \
            "<html><body>dashboard GET /nodes?view=summary&x=1</body></html>"
        assert head.requests[-1]["cookie"] is None  # Dockyard's session stays here
        assert head.requests[-1]["authorization"] is None
        assert answer.headers["X-Dashboard"] == "ray"
        assert "Set-Cookie" not in answer.headers and "Keep-Alive" not in answer.headers
        # The dashboard's own scripts, styles and data requests run on this origin (no
        # sandbox); other sites may not frame it, nor is its content type sniffed.
        policy = answer.headers["Content-Security-Policy"]
        assert "sandbox" not in policy and "default-src *" not in policy
        assert "frame-ancestors 'self'" in policy and "object-src 'none'" in policy
        assert answer.headers["X-Frame-Options"] == "SAMEORIGIN"
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert cluster_row(migrated, cluster["id"]).last_activity_at > before
        root = pages.get(f"/clusters/{cluster['id']}/dashboard/")
        assert root.data.decode().endswith("GET /</body></html>")
        odd = pages.get(f"/clusters/{cluster['id']}/dashboard/a%20b%3Fc/d%40e")
        assert odd.status_code == 200
        assert head.requests[-1]["path"] == "/a%20b%3Fc/d@e"
        # Dot segments are resolved before the head is asked: a path on the head it stays.
        pages.get(f"/clusters/{cluster['id']}/dashboard/a/%2e%2e/%2e%2e/%2e%2e/etc")
        assert head.requests[-1]["path"] == "/etc"
        head_only = pages.head(f"/clusters/{cluster['id']}/dashboard/cluster")
        assert head_only.status_code == 200 and head_only.data == b""
        assert head.requests[-1]["method"] == "HEAD"

        inside = pages.get(f"/clusters/{cluster['id']}/dashboard/jump-inside")
        assert inside.status_code == 302
        assert inside.headers["Location"].endswith(
            f"/clusters/{cluster['id']}/dashboard/static/app.js?v=1")
        absolute = pages.get(f"/clusters/{cluster['id']}/dashboard/jump-absolute")
        assert absolute.headers["Location"].endswith(f"/clusters/{cluster['id']}/dashboard/"
                                                     "cluster")
        away = pages.get(f"/clusters/{cluster['id']}/dashboard/jump-away")
        assert away.status_code == 503 and "example.invalid" not in away.headers.get(
            "Location", "")
        assert not any("steal" in r["path"] for r in head.requests)

        # Owner only: an admin's session never loads a page the owner controls.
        asked = len(head.requests)
        for token in ("tok-bob", "tok-admin"):
            browser(pages, token)
            for path in ("", "nodes", "jump-inside"):
                refused = pages.get(f"/clusters/{cluster['id']}/dashboard/{path}")
                assert refused.status_code == 404, (token, path)
                assert "Location" not in refused.headers
        assert len(head.requests) == asked  # the head was not even asked


def test_dashboard_is_unavailable_unless_running_and_answering(pages: FlaskClient,
                                                                migrated: Settings) -> None:
    cluster = create(pages).json
    browser(pages)
    queued = pages.get(f"/clusters/{cluster['id']}/dashboard/")
    assert queued.status_code == 503 and "is queued" in text(queued)
    with dashboard_server() as head:
        url = head.url
    # The server has gone: nothing answers at its address.
    running(migrated, cluster["id"], url)
    silent = pages.get(f"/clusters/{cluster['id']}/dashboard/")
    assert silent.status_code == 503 and "does not answer" in text(silent)
    anonymous = pages.application.test_client()
    assert anonymous.get(f"/clusters/{cluster['id']}/dashboard/").status_code == 302
