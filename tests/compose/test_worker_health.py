"""The worker's /health and /metrics listener."""

from __future__ import annotations

import time

import pytest
import requests
from sqlalchemy.orm import Session

from dockyard.db import make_engine
from dockyard.models import Run, RunState
from dockyard.settings import Settings
from dockyard.worker.health import start_health_server
from tests.support.ports import free_ports


@pytest.fixture
def listener(migrated: Settings):
    (port,) = free_ports(1)
    settings = migrated.model_copy(update={"worker_health_port": port})
    engine = make_engine(settings.db_url)
    server = start_health_server(settings, engine)
    yield server, f"http://127.0.0.1:{port}", engine
    server.stop()
    engine.dispose()


def test_health_follows_the_loop(listener) -> None:
    server, url, _engine = listener
    response = requests.get(url + "/health", timeout=5)
    assert response.status_code == 200
    assert response.json()["status"] == "ok"

    # A loop that stopped coming round is reported, with how long it has been.
    server.health.last_beat = time.monotonic() - 3600
    stuck = requests.get(url + "/health", timeout=5)
    assert stuck.status_code == 503
    assert stuck.json()["status"] == "stuck" and "3600 s" in stuck.json()["detail"]

    server.beat()
    assert requests.get(url + "/health", timeout=5).status_code == 200


def test_health_reports_an_unreachable_database(listener) -> None:
    server, url, _engine = listener
    server.health.engine = make_engine("sqlite:////nonexistent-dir/dockyard.sqlite")
    response = requests.get(url + "/health", timeout=5)
    assert response.status_code == 503
    assert response.json()["status"] == "database unreachable"


def test_metrics_count_runs_by_status(listener) -> None:
    _server, url, engine = listener
    with Session(engine) as session:
        for status in (RunState.QUEUED, RunState.QUEUED, RunState.SUCCEEDED):
            session.add(Run(owner="ada", image="dockyard/test", command=["true"], cpu=1.0,
                            memory_mb=256, status=status))
        session.commit()
    body = requests.get(url + "/metrics", timeout=5).text
    assert 'dockyard_runs{state="QUEUED"} 2.0' in body
    assert 'dockyard_runs{state="SUCCEEDED"} 1.0' in body
    assert "dockyard_worker_last_loop_timestamp_seconds" in body
    assert "process_cpu_seconds_total" in body or "python_info" in body


def test_other_paths_are_404_json(listener) -> None:
    _server, url, _engine = listener
    response = requests.get(url + "/admin", timeout=5)
    assert response.status_code == 404
    assert response.json()["error"] == "Not found"


def test_port_zero_means_no_listener(migrated: Settings) -> None:
    server = start_health_server(migrated, make_engine(migrated.db_url))
    assert server.port == 0
    server.beat()
    server.stop()
