"""`dockyard clusters …` and `dockyard jobs submit --cluster` against a real web app on a
loopback port: create, list, scale and stop by name or id; what Dockyard refuses is told
as ``field: message`` lines with exit code 2 and nothing saved."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from dockyard.settings import Settings
from tests.clusters.web_support import ENGINES_IMAGE, PLAIN_IMAGE, add_engine_images, running
from tests.conftest import web_app
from tests.data.conftest import served


class Dockyard:
    """The web app served on loopback, and the `dockyard` command pointed at it."""

    def __init__(self, url: str, tmp_path: Path, settings: Settings) -> None:
        self.url = url
        self.tmp_path = tmp_path
        self.settings = settings
        self.api = requests.Session()
        self.api.headers["Authorization"] = "token tok-alice"

    def cli(self, *args: str, token: str = "tok-alice") -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
        env.update(DOCKYARD_URL=self.url + "/", DOCKYARD_TOKEN=token)
        return subprocess.run([sys.executable, "-m", "dockyard.cli", *args], env=env,
                              cwd=self.tmp_path, capture_output=True, text=True, timeout=120)

    def get(self, path: str) -> Any:
        response = self.api.get(f"{self.url}/api/v1{path}", timeout=30)
        response.raise_for_status()
        return response.json()


@pytest.fixture
def dockyard(migrated: Settings, tmp_path: Path) -> Iterator[Dockyard]:
    add_engine_images(migrated)
    with served(web_app(migrated)) as url:
        yield Dockyard(url, tmp_path, migrated)


def test_create_list_scale_and_stop(dockyard: Dockyard) -> None:
    created = dockyard.cli("clusters", "create", "big-join", "--kind", "spark", "--workers",
                           "3", "--cpu", "0.5", "--memory", "1024", "--image", ENGINES_IMAGE)
    assert created.returncode == 0, created.stderr
    cluster = dockyard.get("/clusters?name=big-join")["clusters"][0]
    assert created.stdout.splitlines() == [
        f"Cluster {cluster['id']} big-join queued (spark, 3 workers).",
        f"{dockyard.url}/clusters/{cluster['id']}"]
    assert (cluster["workers"], cluster["worker_cpu"], cluster["worker_memory_mb"]) == (
        3, 0.5, 1024)
    running(dockyard.settings, cluster["id"], kind="spark")

    listed = dockyard.cli("clusters", "list")
    assert listed.returncode == 0, listed.stderr
    header, line = listed.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "KIND", "STATUS", "WORKERS", "ADDRESS"]
    assert line.split() == [str(cluster["id"]), "big-join", "spark", "running", "3", "x",
                            "0.5", "CPU", "1024", "MB", "spark://head:7077"]
    assert dockyard.cli("clusters", "list", token="tok-bob").stdout.count("\n") == 1

    scaled = dockyard.cli("clusters", "scale", "big-join", "1")
    assert scaled.returncode == 0, scaled.stderr
    assert dockyard.get(f"/clusters/{cluster['id']}")["workers"] == 1
    stopped = dockyard.cli("clusters", "stop", str(cluster["id"]))
    assert stopped.returncode == 0, stopped.stderr
    assert "stop requested" in stopped.stdout
    ended = dockyard.cli("clusters", "list", "--state", "all", "--json")
    assert '"name": "big-join"' in ended.stdout


def test_refused_input_is_field_lines_and_exit_2(dockyard: Dockyard) -> None:
    refused = dockyard.cli("clusters", "create", "big-join", "--kind", "spark", "--workers",
                           "20", "--image", PLAIN_IMAGE)
    assert refused.returncode == 2
    lines = refused.stderr.splitlines()
    assert any(line.startswith("workers: at most 8") for line in lines), lines
    assert any(line.startswith("kind: image 'debian:bookworm-slim' has no Spark")
               for line in lines), lines
    missing = dockyard.cli("clusters", "stop", "nothing-here")
    assert missing.returncode == 2
    assert missing.stderr.startswith("cluster: you have no live cluster named 'nothing-here'")
    assert dockyard.cli("clusters", "scale", "987654", "2").returncode == 1
    assert dockyard.get("/clusters?state=all")["clusters"] == []


def test_jobs_submit_with_a_cluster(dockyard: Dockyard) -> None:
    submitted = dockyard.cli("jobs", "submit", "--image", ENGINES_IMAGE, "--cluster", "ray:3",
                             "--cluster-cpu", "0.5", "--cluster-memory", "1024", "--",
                             "python", "tune.py")
    assert submitted.returncode == 0, submitted.stderr
    run = dockyard.get("/runs")["runs"][0]
    assert run["cluster"] == {"kind": "ray", "workers": 3, "worker_cpu": 0.5,
                              "worker_memory_mb": 1024}
    default = dockyard.cli("jobs", "submit", "--image", ENGINES_IMAGE, "--cluster", "spark",
                           "--", "true")
    assert default.returncode == 0, default.stderr
    assert dockyard.get("/runs")["runs"][0]["cluster"]["workers"] == 2

    for args, starts in (
        (["--cluster", "dask:3"], "cluster.kind: --cluster 'dask:3': the kind is ray or spark"),
        (["--cluster", "ray:many"], "cluster.workers: --cluster 'ray:many': after ':'"),
        (["--cluster-cpu", "2"], "cluster: --cluster-cpu and --cluster-memory go with"),
        (["--cluster", "ray:0"], "cluster.workers: Input should be greater than or equal"),
        (["--cluster", "ray:2", "--cluster-memory", "10"], "cluster.worker_memory_mb: "),
    ):
        refused = dockyard.cli("jobs", "submit", "--image", ENGINES_IMAGE, *args, "--", "true")
        assert refused.returncode == 2, (args, refused.stdout, refused.stderr)
        assert refused.stderr.startswith(starts), (args, refused.stderr)
    image_without = dockyard.cli("jobs", "submit", "--image", PLAIN_IMAGE, "--cluster", "ray",
                                 "--", "true")
    assert image_without.returncode == 2
    assert image_without.stderr.startswith("cluster.kind: image 'debian:bookworm-slim' has "
                                           "no Ray")
    assert len(dockyard.get("/runs")["runs"]) == 2
