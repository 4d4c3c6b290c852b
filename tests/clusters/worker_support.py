"""What the cluster worker tests share: one installation on the real Docker engine (the
web app, the database, the real worker in a thread with its cluster duty), Dockyard's
notebook image in the catalog as its inspection found it, and the engine's view of the
installation's clusters (containers and networks by label), all removed at the end."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import docker
from sqlalchemy import select

from dockyard.db import make_engine, make_session_factory
from dockyard.models import Cluster, ClusterState, Image, ImageStatus, utcnow
from dockyard.settings import Settings
from dockyard.worker.clusters import ClusterDuty
from dockyard.worker.loop import Worker
from spawner.clusters.base import LABEL_CLUSTER_ID
from spawner.images.inspect import inspect_image
from spawner.jobs.base import LABEL_NAMESPACE
from tests.jobs.conftest import JobsHarness, ThreadedWorker, unique_namespace

NOTEBOOK_IMAGE = "dockyard/notebook:latest"


def add_cluster_image(db_url: str, reference: str = NOTEBOOK_IMAGE) -> dict[str, Any]:
    """The image in the catalog for jobs, with what Dockyard's inspection finds in it (its
    Ray and Spark versions are what a cluster request is checked against)."""
    contents = inspect_image(reference, timeout_seconds=120)
    assert contents.get("ray") and contents.get("spark"), contents
    engine = make_engine(db_url)
    try:
        with make_session_factory(engine)() as session:
            image = session.scalar(select(Image).where(Image.reference == reference))
            if image is None:
                image = Image(reference=reference, for_jobs=True, for_notebooks=True,
                              default_for_jobs=True, status=ImageStatus.READY,
                              created_by="admin")
                session.add(image)
            image.contents, image.inspected_at = contents, utcnow()
            session.commit()
    finally:
        engine.dispose()
    return contents


def wait_until(check: Callable[[], Any], what: str, timeout: float = 120,
               interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not so after {timeout} s")
        time.sleep(interval)


class ClusterWorld(JobsHarness):
    """One installation whose worker runs clusters on this machine's Docker engine."""

    run_defaults: ClassVar[dict[str, Any]] = {"image": NOTEBOOK_IMAGE, "cpu": 0.5,
                                              "memory_mb": 1024}

    def __init__(self, base: Settings, tmp_path: Path, **overrides: Any) -> None:
        namespace = unique_namespace("cl")
        super().__init__(base, tmp_path, {
            "job_backend": "docker", "job_namespace": namespace, "worker_name": "cluster-worker",
            "docker_name_prefix": namespace, "cluster_start_timeout": 240, **overrides})
        self.docker = docker.from_env(timeout=60)
        self.duty: ClusterDuty | None = None
        self.extra_containers: list[Any] = []

    def start_worker(self, **overrides: Any) -> Worker:
        self.stop_worker()
        settings = self.settings.model_copy(update=overrides)
        self.duty = ClusterDuty(settings)
        self._threaded = ThreadedWorker(settings, duties=[self.duty]).__enter__()
        return self._threaded.worker

    def stop_worker(self) -> None:
        super().stop_worker()
        if self.duty is not None:
            self.duty.drain(timeout=60)
            self.duty.close()
            self.duty = None

    # -- the database ------------------------------------------------------------------
    def cluster(self, cluster_id: int) -> Cluster:
        with self.db.sessions() as session:
            cluster = session.get(Cluster, cluster_id)
            assert cluster is not None
            return cluster

    def cluster_of_run(self, run_id: int) -> Cluster | None:
        with self.db.sessions() as session:
            return session.scalar(select(Cluster).where(Cluster.run_id == run_id))

    def wait_cluster(self, cluster_id: int, *wanted: ClusterState,
                     timeout: float = 120) -> Cluster:
        def reached() -> Cluster | None:
            cluster = self.cluster(cluster_id)
            return cluster if cluster.status in wanted else None

        try:
            return wait_until(reached, f"cluster {cluster_id} {wanted}", timeout)
        except AssertionError:
            cluster = self.cluster(cluster_id)
            raise AssertionError(f"cluster {cluster_id} is {cluster.status} ({cluster.reason}),"
                                 f" not {wanted}") from None

    # -- the engine --------------------------------------------------------------------
    def _labels(self, cluster_id: int | None) -> list[str]:
        labels = [f"{LABEL_NAMESPACE}={self.namespace}"]
        if cluster_id is not None:
            labels.append(f"{LABEL_CLUSTER_ID}={cluster_id}")
        return labels

    def containers(self, cluster_id: int | None = None) -> list[Any]:
        """The cluster's containers (every cluster's, and the jobs', without an id)."""
        return self.docker.containers.list(all=True, filters={"label": self._labels(cluster_id)})

    def networks(self, cluster_id: int | None = None) -> list[Any]:
        return self.docker.networks.list(filters={"label": self._labels(cluster_id)})

    def gone(self, cluster_id: int) -> bool:
        """Nothing of the cluster is left on the engine."""
        return not self.containers(cluster_id) and not self.networks(cluster_id)

    def notebook_server(self, owner: str, name: str) -> Any:
        """A container labelled as ``owner``'s notebook server of this installation (as
        the spawner labels them), from the notebook image, idle."""
        container = self.docker.containers.run(
            NOTEBOOK_IMAGE, ["sleep", "600"], name=f"{self.namespace}-{name}", detach=True,
            labels={"dockyard.notebook": "true", "dockyard.prefix": self.namespace,
                    "dockyard.user": owner, "dockyard.server": "",
                    LABEL_NAMESPACE: self.namespace})
        self.extra_containers.append(container)
        return container

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.duty is not None:
                self.duty.close()
            for container in [*self.extra_containers, *self.containers()]:
                try:
                    container.remove(force=True)
                except docker.errors.NotFound:
                    pass
            for network in self.networks():
                try:
                    network.reload()
                    for attached in network.attrs.get("Containers") or {}:
                        try:
                            network.disconnect(attached, force=True)
                        except docker.errors.APIError:
                            pass  # gone meanwhile
                    network.remove()
                except docker.errors.NotFound:
                    pass
            self.docker.close()
