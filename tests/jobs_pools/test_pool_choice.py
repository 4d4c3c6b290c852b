"""Choosing a pool: the API lists and checks the pools a user may use (422 with the list
for an unknown or forbidden one), definitions and retries carry the pool, the launch
form offers the user's pools, the run page says where the run went, and the worker
fails runs of a pool that is no longer configured instead of leaving them stuck."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from dockyard.models import RunState
from dockyard.settings import Settings
from dockyard.worker.loop import Worker
from spawner.jobs.base import JobStartError
from tests.conftest import auth, client_for
from tests.jobs.conftest import SHELL_IMAGE, RunsDb
from tests.jobs.test_jobs_api import set_run
from tests.jobs_pools.conftest import pool_settings

ALICE, BOB, ADMIN = auth("tok-alice"), auth("tok-bob"), auth("tok-admin")
POOLS = {
    "swarm": {"backend": "swarm", "description": "the team swarm"},
    "ecs-fargate": {"backend": "ecs", "cluster": "batch", "subnets": ["subnet-1"],
                    "execution_role_arn": "arn:aws:iam::1:role/exec", "log_group": "/jobs",
                    "region": "eu-west-1", "users": ["alice"],
                    "description": "Fargate, pay per second"},
}
CSRF = re.compile(r'name="csrf-token" content="([^"]+)"')


@pytest.fixture
def pooled(catalog: Settings) -> Settings:
    return pool_settings(catalog, POOLS, job_backend="local")


@pytest.fixture
def api(pooled: Settings) -> FlaskClient:
    return client_for(pooled)


def run_body(**fields: Any) -> dict[str, Any]:
    return {"image": SHELL_IMAGE, "command": "echo hi", "memory_mb": 64, "cpu": 0.25, **fields}


def test_pools_a_user_may_use(api: FlaskClient) -> None:
    alice = api.get("/api/v1/pools", headers=ALICE).json["pools"]
    assert [(p["name"], p["backend"]) for p in alice] == [
        ("default", "local"), ("swarm", "swarm"), ("ecs-fargate", "ecs")]
    assert alice[2]["description"] == "Fargate, pay per second"
    bob = api.get("/api/v1/pools", headers=BOB).json["pools"]
    assert [p["name"] for p in bob] == ["default", "swarm"]
    assert [p["name"] for p in api.get("/api/v1/pools", headers=ADMIN).json["pools"]] == [
        "default", "swarm", "ecs-fargate"]
    assert api.get("/api/v1/pools").status_code == 401
    spec = api.get("/api/v1/openapi.json").json
    assert "get" in spec["paths"]["/api/v1/pools"]
    # Nothing of the pools' AWS set-up is shown to users.
    assert "arn:aws" not in str(alice) and "subnet" not in str(alice)


def test_a_run_names_its_pool(api: FlaskClient) -> None:
    plain = api.post("/api/v1/runs", json=run_body(), headers=ALICE)
    assert plain.status_code == 201 and plain.json["pool"] == "default"
    assert plain.json["node"] is None and plain.json["engine_handle"] is None
    swarm = api.post("/api/v1/runs", json=run_body(pool="swarm"), headers=BOB)
    assert swarm.status_code == 201 and swarm.json["pool"] == "swarm"
    ecs = api.post("/api/v1/runs", json=run_body(pool="ecs-fargate"), headers=ALICE)
    assert ecs.status_code == 201 and ecs.json["pool"] == "ecs-fargate"


@pytest.mark.parametrize(("headers", "pool", "message"), [
    (BOB, "gpu", "unknown pool 'gpu'; choose one of: default, swarm"),
    (ALICE, "gpu", "unknown pool 'gpu'; choose one of: default, swarm, ecs-fargate"),
    (BOB, "ecs-fargate", "you may not use pool 'ecs-fargate'; your pools: default, swarm"),
])
def test_a_pool_you_may_not_use_is_a_422_with_your_pools(api: FlaskClient, headers: dict,
                                                          pool: str, message: str) -> None:
    response = api.post("/api/v1/runs", json=run_body(pool=pool), headers=headers)
    assert response.status_code == 422
    assert {"field": "pool", "message": message} in response.json["detail"]
    assert api.get("/api/v1/runs", headers=headers).json["runs"] == []


@pytest.mark.parametrize("pool", ["", "x" * 65, 3, None])
def test_malformed_pools_are_422(api: FlaskClient, pool: Any) -> None:
    response = api.post("/api/v1/runs", json=run_body(pool=pool), headers=ALICE)
    if pool is None:  # null means "the default", as if not given
        assert response.status_code == 201 and response.json["pool"] == "default"
    else:
        assert response.status_code == 422
        assert response.json["detail"][0]["field"] == "pool"


def test_definitions_carry_the_pool_and_runs_may_override_it(api: FlaskClient) -> None:
    definition = api.post("/api/v1/definitions", json={
        "name": "nightly", "image": SHELL_IMAGE, "command": "echo hi", "pool": "swarm"},
        headers=ALICE)
    assert definition.status_code == 201 and definition.json["pool"] == "swarm"
    from_definition = api.post("/api/v1/runs", json={"definition_id": definition.json["id"]},
                               headers=ALICE).json
    assert from_definition["pool"] == "swarm"
    overridden = api.post("/api/v1/runs", json={"definition_id": definition.json["id"],
                                                "pool": "ecs-fargate"}, headers=ALICE).json
    assert overridden["pool"] == "ecs-fargate"
    bad = api.post("/api/v1/definitions", json={
        "name": "gpu-job", "image": SHELL_IMAGE, "command": "true", "pool": "gpu"},
        headers=ALICE)
    assert bad.status_code == 422 and bad.json["detail"][0]["field"] == "pool"


def test_a_retry_goes_to_the_same_pool(api: FlaskClient, pooled: Settings) -> None:
    run = api.post("/api/v1/runs", json=run_body(pool="swarm"), headers=ALICE).json
    set_run(pooled, run["id"], status=RunState.FAILED)
    retried = api.post(f"/api/v1/runs/{run['id']}/retry", headers=ALICE)
    assert retried.status_code == 201 and retried.json["pool"] == "swarm"


# -- pages -------------------------------------------------------------------------------------
def browser(client: FlaskClient, token: str) -> str:
    with client.session_transaction() as session:
        session["token"] = token
    page = client.get("/jobs/")
    match = CSRF.search(page.data.decode())
    assert match
    return match.group(1)


def pool_options(html: str) -> list[str]:
    select = re.search(r'<select[^>]*id="pool".*?</select>', html, re.S)
    assert select, "no pool choice on the page"
    return re.findall(r'<option value="([^"]+)"', select.group(0))


def test_the_launch_form_offers_the_users_pools(api: FlaskClient) -> None:
    browser(api, "tok-bob")
    assert pool_options(api.get("/jobs/new").data.decode()) == ["default", "swarm"]
    browser(api, "tok-alice")
    html = api.get("/jobs/new").data.decode()
    assert pool_options(html) == ["default", "swarm", "ecs-fargate"]
    assert "ecs-fargate (ecs) — Fargate, pay per second" in html


def test_with_only_the_default_pool_the_form_asks_nothing(catalog: Settings) -> None:
    plain = client_for(catalog)
    browser(plain, "tok-alice")
    assert 'id="pool"' not in plain.get("/jobs/new").data.decode()


def test_launching_into_a_pool_from_the_form(api: FlaskClient, pooled: Settings) -> None:
    csrf = browser(api, "tok-alice")
    form = {"csrf_token": csrf, "image": SHELL_IMAGE, "command": "echo hi", "cpu": "0.5",
            "memory_mb": "64", "gpu": "0", "max_retries": "0"}
    refused = api.post("/jobs/new", data={**form, "pool": "gpu"})
    assert refused.status_code == 422
    assert "unknown pool &#39;gpu&#39;" in refused.data.decode()
    launched = api.post("/jobs/new", data={**form, "pool": "ecs-fargate"})
    assert launched.status_code == 303
    run_id = int(launched.headers["Location"].rsplit("/", 1)[1])
    runs = RunsDb(pooled.db_url)
    try:
        assert runs.run(run_id).pool == "ecs-fargate"
    finally:
        runs.close()
    # "Clone into form" keeps the pool chosen.
    clone = api.get(f"/jobs/new?clone={run_id}").data.decode()
    assert re.search(r'<option value="ecs-fargate" selected', clone)


def test_the_run_page_says_where_it_ran(api: FlaskClient, pooled: Settings) -> None:
    run = api.post("/api/v1/runs", json=run_body(pool="ecs-fargate"), headers=ALICE).json
    arn = "arn:aws:ecs:eu-west-1:123456789012:task/batch/0123456789abcdef"
    set_run(pooled, run["id"], status=RunState.RUNNING, backend="ecs", engine_handle=arn,
            node="Fargate, eu-west-1a")
    browser(api, "tok-alice")
    html = api.get(f"/jobs/runs/{run['id']}").data.decode()
    assert 'id="run-pool">ecs-fargate · on <span id="run-node">Fargate, eu-west-1a</span>' in html
    assert f'id="run-handle">{arn}</code>' in html
    shown = api.get(f"/api/v1/runs/{run['id']}", headers=ALICE).json
    assert (shown["node"], shown["engine_handle"]) == ("Fargate, eu-west-1a", arn)


# -- the worker and pools that went away ----------------------------------------------------------
@pytest.fixture
def local_worker(catalog: Settings) -> Iterator[tuple[Worker, threading.Event]]:
    settings = catalog.model_copy(update=dict(
        job_backend="local", worker_name="pools-worker", worker_poll_seconds=0.1,
        job_dockyard_url="http://127.0.0.1:9/services/dockyard/"))
    worker = Worker(settings)
    stop = threading.Event()
    yield worker, stop
    stop.set()
    worker.wake.set()
    worker.close()


def test_runs_of_a_pool_no_longer_configured_fail_with_the_reason(
        api: FlaskClient, pooled: Settings, local_worker: tuple[Worker, threading.Event]) -> None:
    queued = api.post("/api/v1/runs", json=run_body(pool="swarm"), headers=ALICE).json["id"]
    running = api.post("/api/v1/runs", json=run_body(pool="swarm"), headers=ALICE).json["id"]
    set_run(pooled, running, status=RunState.RUNNING, worker="pools-worker", backend="swarm",
            engine_handle="svc-gone")
    worker, stop = local_worker
    assert worker.pools.names == ["default"]  # this worker's settings have no swarm pool
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    runs = RunsDb(pooled.db_url)
    try:
        failed = runs.wait_for(queued, RunState.FAILED, timeout=20)
        assert failed.reason == ("could not start: no job pool named 'swarm' is configured "
                                 "(pools: default)")
        orphan = runs.wait_for(running, RunState.FAILED, timeout=20)
        assert orphan.reason == ("its pool 'swarm' is no longer configured; its job may still "
                                 "be on that engine")
        # The default pool keeps working meanwhile.
        fine = api.post("/api/v1/runs", json=run_body(command="echo fine"),
                        headers=ALICE).json["id"]
        assert runs.wait_for(fine, RunState.SUCCEEDED, RunState.FAILED,
                             timeout=30).status == RunState.SUCCEEDED
    finally:
        runs.close()
        stop.set()
        worker.wake.set()
        thread.join(30)


def test_the_worker_builds_one_backend_per_pool(settings: Settings,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.requirements import require_docker

    require_docker()
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    from dockyard.worker.backends import JobPools
    from spawner.jobs.docker import DockerJobBackend
    from spawner.jobs.ecs import EcsJobBackend
    from spawner.jobs.local import LocalJobBackend
    from spawner.jobs.swarm import SwarmJobBackend

    configured = pool_settings(settings, {
        "local-docker": {"backend": "docker", "network": "jobs-net",
                         "dockyard_url": "http://10.0.0.5:10101/services/dockyard/"},
        "swarm": {"backend": "swarm", "image_prefix": "registry.internal:5000"},
        "ecs-fargate": {k: v for k, v in POOLS["ecs-fargate"].items() if k != "region"},
    }, job_backend="local", public_url="https://dockyard.example.com",
        hub_connect_ip="172.17.0.1")
    pools = JobPools.from_settings(configured, namespace="jp")
    try:
        assert pools.names == ["default", "local-docker", "swarm", "ecs-fargate"]
        assert isinstance(pools.default.backend, LocalJobBackend)
        docker_pool = pools.get("local-docker")
        assert isinstance(docker_pool.backend, DockerJobBackend)
        assert docker_pool.backend.network == "jobs-net"
        assert docker_pool.extra_env["DOCKYARD_URL"] == "http://10.0.0.5:10101/services/dockyard/"
        swarm = pools.get("swarm")
        assert isinstance(swarm.backend, SwarmJobBackend) and swarm.backend.poll_seconds == 0.5
        assert swarm.image_for(SHELL_IMAGE) == f"registry.internal:5000/{SHELL_IMAGE}"
        ecs = pools.get("ecs-fargate")
        assert isinstance(ecs.backend, EcsJobBackend)
        # Jobs on AWS reach Dockyard at its public URL; the region came from the AWS chain.
        assert ecs.dockyard_url == "https://dockyard.example.com/services/dockyard/"
        assert ecs.backend.ecs.meta.region_name == "eu-west-1"  # type: ignore[attr-defined]
        with pytest.raises(JobStartError, match="no job pool named 'gpu' is configured"):
            pools.get("gpu")
    finally:
        pools.close()
