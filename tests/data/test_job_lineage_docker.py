"""A job on the real Docker engine stores a table with the data client, with nothing
configured by hand: the container finds Dockyard's URL, its run-scoped token and the
mounted data root in its environment, and the batch records the run that wrote it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from dockyard.models import ImageStatus
from tests.jobs.conftest import add_images
from tests.support.hubproc import RunningHub, start_hub
from tests.support.requirements import require_image

IMAGE = "dockyard/test:latest"
STORE = (
    "import pandas as pd; from dockyard_data import store_dataframe, load_dataframe; "
    "store_dataframe(pd.DataFrame({'x': [1, 2, 3]}), 'lineage-lab', 'numbers', "
    "partition={'day': '20240301'}); "
    "print('rows', len(load_dataframe('lineage-lab', 'numbers')))"
)


@pytest.fixture
def docker_jobs_hub(tmp_path: Path) -> Iterator[RunningHub]:
    require_image(IMAGE)
    hub = start_hub(tmp_path / "home", DOCKYARD_JOB_BACKEND="docker",
                    DOCKYARD_JOB_NAMESPACE=f"lin{tmp_path.name[-6:].replace('_', '')}")
    try:
        add_images(str(hub.env.get("DOCKYARD_DATABASE_URL")
                       or f"sqlite:///{tmp_path / 'home' / 'dockyard.sqlite'}"),
                   (IMAGE, True, ImageStatus.READY))
        yield hub
    finally:
        hub.stop()


@pytest.mark.docker
def test_job_on_docker_stores_a_table_and_lineage_is_recorded(
    docker_jobs_hub: RunningHub,
) -> None:
    hub = docker_jobs_hub
    session = hub.create_user("lena")
    headers = {"Authorization": f"token {hub.hub_token(session, 'lena')}"}
    submitted = requests.post(hub.service("api/v1/runs"), headers=headers, timeout=30,
                              json={"image": IMAGE, "command": ["python", "-c", STORE],
                                    "memory_mb": 1024})
    assert submitted.status_code == 201, submitted.text
    run_id = submitted.json()["id"]

    deadline = time.monotonic() + 180
    status = ""
    while time.monotonic() < deadline:
        status = requests.get(hub.service(f"api/v1/runs/{run_id}"), headers=headers,
                              timeout=10).json()["status"]
        if status in ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"):
            break
        time.sleep(0.5)
    log = requests.get(hub.service(f"api/v1/runs/{run_id}/logs"), headers=headers,
                       timeout=10).text
    assert status == "SUCCEEDED", log
    assert "rows 3" in log

    lineage = requests.get(hub.service(f"api/v1/lineage/runs/{run_id}"), headers=headers,
                           timeout=10).json()
    assert [batch["run_id"] for batch in lineage["wrote"]] == [run_id]
    assert len(lineage["read"]) == 1
    history = requests.get(hub.service("api/v1/tables/lineage-lab/numbers/history"),
                           headers=headers, timeout=10).json()["history"]
    assert [(h["actor"], h["run_id"]) for h in history] == [("lena", run_id)]
