"""The clusters API: create (and what it refuses, by field), list with its filters and
pages, read (which counts as use), scale, stop; another user's cluster is 404; a run's
JSON shows its cluster; the OpenAPI document describes the routes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from flask.testing import FlaskClient

from dockyard.models import ClusterState, utcnow
from dockyard.settings import Settings
from tests.clusters.web_support import (
    ADMIN,
    ALICE,
    BOB,
    ENGINES_IMAGE,
    PLAIN_IMAGE,
    add_engine_images,
    cluster_row,
    create,
    running,
    set_cluster,
)


@pytest.fixture
def api(client: FlaskClient, migrated: Settings) -> FlaskClient:
    add_engine_images(migrated)
    return client


def problems(response: object) -> dict[str, str]:
    body = response.json  # type: ignore[attr-defined]
    assert isinstance(body["detail"], list), body
    return {p["field"]: p["message"] for p in body["detail"]}


def test_create_queues_a_cluster_and_shows_it(api: FlaskClient) -> None:
    made = create(api, workers=3, worker_cpu=0.5, worker_memory_mb=1024)
    assert made.status_code == 201, made.json
    cluster = made.json
    assert {key: cluster[key] for key in ("name", "owner", "kind", "image", "pool", "status",
                                          "workers", "worker_cpu", "worker_memory_mb",
                                          "run_id", "dashboard")} == {
        "name": "big-join", "owner": "alice", "kind": "ray", "image": ENGINES_IMAGE,
        "pool": "default", "status": "queued", "workers": 3, "worker_cpu": 0.5,
        "worker_memory_mb": 1024, "run_id": None, "dashboard": None}
    assert cluster["idle_timeout_seconds"] == 3600
    assert api.get(f"/api/v1/clusters/{cluster['id']}", headers=ALICE).json["name"] == \
        "big-join"


@pytest.mark.parametrize(("fields", "field", "words"), [
    ({"kind": "dask"}, "kind", "'ray' or 'spark'"),
    ({"name": "Big Join"}, "name", "pattern"),
    ({"name": "run-7"}, "name", "kept for the clusters of runs"),
    ({"workers": 0}, "workers", "greater than or equal to 1"),
    ({"workers": 9}, "workers", "at most 8"),
    ({"worker_cpu": 0}, "worker_cpu", "greater than or equal to 0.01"),
    # Docker would round it to 0, which means no limit at all.
    ({"worker_cpu": 1e-300}, "worker_cpu", "greater than or equal to 0.01"),
    ({"worker_cpu": 1000}, "worker_cpu", "CPUs per worker"),
    ({"worker_memory_mb": 100}, "worker_memory_mb", "512"),
    ({"image": PLAIN_IMAGE}, "kind", "has no Ray"),
    ({"image": "nowhere/else:1"}, "image", "nowhere/else:1"),
    ({"pool": "gpu"}, "pool", "unknown pool"),
    # PostgreSQL cannot store NUL: refused here rather than failing there.
    ({"image": "team/engines:1\x00"}, "image", "control character"),
    ({"pool": "default\x00"}, "pool", "control character"),
    ({"pool": "de\nfault"}, "pool", "control character"),
    ({"surprise": 1}, "surprise", "Extra inputs"),
])
def test_create_refuses_bad_input_naming_the_field(api: FlaskClient, fields: dict,
                                                   field: str, words: str) -> None:
    refused = create(api, **fields)
    assert refused.status_code == 422, refused.json
    found = problems(refused)
    assert field in found, found
    assert words in found[field], found
    assert api.get("/api/v1/clusters?state=all", headers=ALICE).json["clusters"] == []


def test_a_pool_that_cannot_host_clusters_is_refused(tmp_path, monkeypatch) -> None:
    from tests.conftest import client_for

    for var in [v for v in __import__("os").environ if v.startswith("DOCKYARD_")]:
        monkeypatch.delenv(var)
    home = tmp_path / "home"
    home.mkdir()
    settings = Settings(home=home, job_pools={"laptop": {"backend": "local"}})
    from dockyard.migrate import upgrade

    upgrade(settings.db_url)
    add_engine_images(settings)
    client = client_for(settings)
    refused = create(client, pool="laptop")
    assert refused.status_code == 422
    assert "cannot host a cluster" in problems(refused)["pool"]


def test_a_second_live_cluster_of_the_same_name_is_a_conflict(api: FlaskClient) -> None:
    first = create(api, workers=1).json
    again = create(api, workers=1)
    assert again.status_code == 409
    assert problems(again)["name"].startswith("you already have a live cluster")
    # Once the first has ended, the name is free again.
    assert api.delete(f"/api/v1/clusters/{first['id']}", headers=ALICE).status_code == 202
    assert create(api, workers=1).status_code == 201


def test_workers_count_over_all_of_a_users_clusters(api: FlaskClient) -> None:
    assert create(api, name="one", workers=5).status_code == 201
    refused = create(api, name="two", workers=4)
    assert refused.status_code == 422
    assert "has 5 in use; ask for 3 or fewer" in problems(refused)["workers"]
    # Another user has their own allowance.
    assert create(api, BOB, name="two", workers=4).status_code == 201


def test_another_users_cluster_is_not_found(api: FlaskClient) -> None:
    cluster = create(api).json
    path = f"/api/v1/clusters/{cluster['id']}"
    assert api.get(path, headers=BOB).status_code == 404
    assert api.patch(path, json={"workers": 1}, headers=BOB).status_code == 404
    assert api.delete(path, headers=BOB).status_code == 404
    assert api.get("/api/v1/clusters", headers=BOB).json["clusters"] == []
    assert api.get("/api/v1/clusters?owner=alice", headers=BOB).json["clusters"] == []
    # Admins see and act on everyone's.
    assert api.get(path, headers=ADMIN).status_code == 200
    listed = api.get("/api/v1/clusters?owner=alice", headers=ADMIN).json["clusters"]
    assert [c["id"] for c in listed] == [cluster["id"]]
    assert api.get("/api/v1/clusters/987654", headers=ALICE).status_code == 404
    # Beyond any id the database holds: not found, never a database error.
    for beyond in (2**31, 2**63, 10**30):
        assert api.get(f"/api/v1/clusters/{beyond}", headers=ALICE).status_code == 404


def test_filters_and_pages(api: FlaskClient, migrated: Settings) -> None:
    ids = [create(api, name=f"c{n}", workers=1).json["id"] for n in range(5)]
    assert api.delete(f"/api/v1/clusters/{ids[0]}", headers=ALICE).status_code == 202
    live = api.get("/api/v1/clusters", headers=ALICE).json
    assert [c["id"] for c in live["clusters"]] == ids[:0:-1] and live["next_cursor"] is None
    ended = api.get("/api/v1/clusters?state=ended", headers=ALICE).json["clusters"]
    assert [(c["id"], c["status"]) for c in ended] == [(ids[0], "stopped")]
    everything = api.get("/api/v1/clusters?state=all", headers=ALICE).json["clusters"]
    assert len(everything) == 5
    named = api.get("/api/v1/clusters?name=c3", headers=ALICE).json["clusters"]
    assert [c["id"] for c in named] == [ids[3]]

    seen, cursor = [], None
    while True:
        page = api.get("/api/v1/clusters", query_string={"state": "all", "limit": 2,
                                                         **({"cursor": cursor} if cursor
                                                            else {})},
                       headers=ALICE).json
        assert len(page["clusters"]) <= 2
        seen += [c["id"] for c in page["clusters"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]

    far = api.get(f"/api/v1/clusters?state=all&cursor={10**19}", headers=ALICE).json
    assert [c["id"] for c in far["clusters"]] == ids[::-1]
    for query, field in (("state=gone", "state"), ("limit=0", "limit"), ("limit=100000", "limit"),
                         ("cursor=abc", "cursor"), ("colour=red", "colour"),
                         ("name=C%00", "name"), ("name=" + "a" * 64, "name"),
                         ("owner=al%00ice", "owner")):
        refused = api.get(f"/api/v1/clusters?{query}", headers=ALICE)
        assert refused.status_code == 422, query
        assert field in problems(refused), (query, refused.json)


def test_reading_counts_as_use_for_the_owner_only(api: FlaskClient,
                                                  migrated: Settings) -> None:
    cluster = create(api).json
    long_ago = utcnow() - timedelta(hours=5)
    set_cluster(migrated, cluster["id"], last_activity_at=long_ago)
    api.get(f"/api/v1/clusters/{cluster['id']}", headers=ADMIN)
    assert cluster_row(migrated, cluster["id"]).last_activity_at == long_ago
    api.get(f"/api/v1/clusters/{cluster['id']}", headers=ALICE)
    assert cluster_row(migrated, cluster["id"]).last_activity_at > long_ago


def test_scale_and_stop(api: FlaskClient, migrated: Settings) -> None:
    cluster = create(api, workers=2).json
    path = f"/api/v1/clusters/{cluster['id']}"
    running(migrated, cluster["id"], "http://127.0.0.1:9")
    shown = api.get(path, headers=ALICE).json
    assert (shown["status"], shown["address"], shown["dashboard"]) == (
        "running", "ray://head:10001",
        f"/services/dockyard/clusters/{cluster['id']}/dashboard")
    scaled = api.patch(path, json={"workers": 4}, headers=ALICE)
    assert scaled.status_code == 200 and scaled.json["workers"] == 4
    for body, field in (({"workers": 0}, "workers"), ({"workers": 40}, "workers"),
                        ({}, "workers"), ({"workers": 2, "kind": "spark"}, "kind")):
        refused = api.patch(path, json=body, headers=ALICE)
        assert refused.status_code == 422, body
        assert field in problems(refused), (body, refused.json)
    # An admin sees it, but not its dashboard: that is the owner's alone.
    assert api.get(path, headers=ADMIN).json["dashboard"] is None
    stopped = api.delete(path, headers=ALICE)
    assert stopped.status_code == 202
    assert cluster_row(migrated, cluster["id"]).stop_requested
    refused = api.patch(path, json={"workers": 1}, headers=ALICE)
    assert refused.status_code == 409


def test_a_queued_cluster_stops_at_once_and_stopping_twice_is_a_conflict(
        api: FlaskClient) -> None:
    cluster = create(api).json
    path = f"/api/v1/clusters/{cluster['id']}"
    assert api.delete(path, headers=ALICE).json["status"] == "stopped"
    assert api.delete(path, headers=ALICE).status_code == 409


def test_a_runs_json_shows_its_cluster(api: FlaskClient, migrated: Settings) -> None:
    made = api.post("/api/v1/runs", headers=ALICE, json={
        "image": ENGINES_IMAGE, "command": "python -c 'import ray'",
        "cluster": {"kind": "ray", "workers": 2}})
    assert made.status_code == 201, made.json
    run = made.json
    assert run["cluster"] == {"kind": "ray", "workers": 2, "worker_cpu": 1.0,
                              "worker_memory_mb": 2048}
    assert run["cluster_id"] is None  # the worker makes the cluster when it starts the run
    plain = api.post("/api/v1/runs", headers=ALICE, json={"image": ENGINES_IMAGE,
                                                           "command": "true"}).json
    assert (plain["cluster"], plain["cluster_id"]) == (None, None)

    from dockyard.db import make_engine, make_session_factory
    from dockyard.models import Run

    engine = make_engine(migrated.db_url)
    try:
        with make_session_factory(engine)() as session:
            from dockyard.clusters.service import cluster_for_run

            row = cluster_for_run(session.get(Run, run["id"]))
            session.add(row)
            session.commit()
            cluster_id = row.id
    finally:
        engine.dispose()
    shown = api.get(f"/api/v1/runs/{run['id']}", headers=ALICE).json
    assert shown["cluster_id"] == cluster_id
    listed = api.get("/api/v1/runs", headers=ALICE).json["runs"]
    assert {r["id"]: r["cluster_id"] for r in listed} == {run["id"]: cluster_id,
                                                           plain["id"]: None}
    # A filter with NUL is a 422, not a database error.
    for query in ("tag=a%00b", "image=x%00", "owner=al%00ice"):
        refused = api.get(f"/api/v1/runs?{query}", headers=ALICE)
        assert refused.status_code == 422, (query, refused.json)
    cluster = api.get(f"/api/v1/clusters/{cluster_id}", headers=ALICE).json
    assert (cluster["name"], cluster["run_id"]) == (f"run-{run['id']}", run["id"])
    # A run's cluster ends with its run: it is neither scaled nor stopped by hand.
    assert api.patch(f"/api/v1/clusters/{cluster_id}", json={"workers": 1},
                     headers=ALICE).status_code == 409
    assert api.delete(f"/api/v1/clusters/{cluster_id}", headers=ALICE).status_code == 409


def test_a_run_asking_for_a_cluster_the_image_cannot_run_is_refused(api: FlaskClient) -> None:
    refused = api.post("/api/v1/runs", headers=ALICE, json={
        "image": PLAIN_IMAGE, "command": "true", "cluster": {"kind": "spark", "workers": 1}})
    assert refused.status_code == 422
    assert "has no Spark" in problems(refused)["cluster.kind"]


def test_openapi_describes_the_cluster_routes(api: FlaskClient) -> None:
    document = api.get("/api/v1/openapi.json").json
    paths = {path.removeprefix("/api/v1"): item for path, item in document["paths"].items()}
    assert set(paths["/clusters"]) == {"get", "post"}
    assert set(paths["/clusters/{cluster_id}"]) == {"get", "patch", "delete"}
    assert paths["/clusters/{cluster_id}"]["delete"]["responses"].keys() >= {"202"}
    names = {p["name"] for p in paths["/clusters"]["get"]["parameters"]}
    assert names >= {"state", "name", "owner", "cursor", "limit"}
    schemas = document["components"]["schemas"]
    assert {"ClusterIn", "ClusterOut", "ClusterScaleIn"} <= set(schemas)
    assert "cluster_id" in schemas["RunOut"]["properties"]


def test_states_are_shown_as_the_api_names_them(api: FlaskClient, migrated: Settings) -> None:
    cluster = create(api).json
    set_cluster(migrated, cluster["id"], status=ClusterState.FAILED,
                reason="the Ray cluster did not become ready in 300 s", ended_at=utcnow())
    shown = api.get(f"/api/v1/clusters/{cluster['id']}", headers=ALICE).json
    assert (shown["status"], shown["reason"]) == (
        "failed", "the Ray cluster did not become ready in 300 s")
