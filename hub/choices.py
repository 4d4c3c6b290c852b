"""Decide, once at start-up, how notebooks and jobs will run, and say why."""

from __future__ import annotations

from dataclasses import dataclass

from hub.settings import Settings
from spawner.engine import EngineCheck, check_docker, image_present


@dataclass(frozen=True)
class RuntimeChoice:
    spawner: str  # docker | swarm | local
    job_backend: str  # docker | local
    notebook_image: str
    notes: tuple[str, ...]


def choose_runtime(settings: Settings, engine: EngineCheck | None = None) -> RuntimeChoice:
    needs_engine = "auto" in (settings.spawner, settings.job_backend) or {
        settings.spawner,
        settings.job_backend,
    } & {"docker", "swarm"}
    engine = engine or (check_docker() if needs_engine else EngineCheck(False, "not checked"))
    notes: list[str] = []

    spawner = settings.spawner
    if spawner == "auto":
        if not engine.available:
            spawner = "local"
            notes.append(
                f"Notebooks: local processes, development mode without isolation: {engine.reason}."
            )
        elif not image_present(settings.notebook_image):
            spawner = "local"
            notes.append(
                f"Notebooks: local processes, development mode without isolation: "
                f"image {settings.notebook_image} is not on the {engine.reason} "
                f"(build it with 'dockyard images build' or set DOCKYARD_NOTEBOOK_IMAGE)."
            )
        else:
            spawner = "docker"
            notes.append(
                f"Notebooks: containers from {settings.notebook_image} on the {engine.reason}."
            )
    else:
        notes.append(f"Notebooks: {spawner} (DOCKYARD_SPAWNER={spawner}).")

    job_backend = settings.job_backend
    if job_backend == "auto":
        job_backend = "docker" if engine.available else "local"
        if engine.available:
            notes.append(f"Jobs: containers on the {engine.reason}.")
        else:
            notes.append(
                f"Jobs: local processes, development mode without isolation: {engine.reason}."
            )
    else:
        notes.append(f"Jobs: {job_backend} (DOCKYARD_JOB_BACKEND={job_backend}).")
    return RuntimeChoice(spawner, job_backend, settings.notebook_image, tuple(notes))
