"""Decide, once at start-up, how notebooks and jobs will run, and say why."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from dockyard.settings import ENV_PREFIX, Settings, SettingsError
from spawner.engine import EngineCheck, EngineProblem, check_docker, engine_problem, image_present


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

    job_backend = job_backend_name(settings, engine)
    if settings.job_backend != "auto":
        notes.append(f"Jobs: {job_backend} (DOCKYARD_JOB_BACKEND={job_backend}).")
    elif job_backend == "docker":
        notes.append(f"Jobs: containers on the {engine.reason}.")
    else:
        notes.append(
            f"Jobs: local processes, development mode without isolation: {engine.reason}."
        )
    return RuntimeChoice(spawner, job_backend, settings.notebook_image, tuple(notes))


def job_backend_name(settings: Settings, engine: EngineCheck | None = None) -> str:
    """The default pool's backend: DOCKYARD_JOB_BACKEND, where ``auto`` means Docker when
    an engine answers (asked here unless ``engine`` already says), else local processes."""
    if settings.job_backend != "auto":
        return settings.job_backend
    return "docker" if (engine or check_docker()).available else "local"


@contextmanager
def engine_problems_explained(settings: Settings) -> Iterator[None]:
    """Docker engine errors met while starting up become one line naming the setting to
    look at (the engine answered when the runtime was chosen), never a traceback."""
    try:
        yield
    except Exception as exc:
        problem = engine_problem(exc)
        if problem is None:
            raise
        raise _explained(problem, settings) from None


def _explained(problem: EngineProblem, settings: Settings) -> SettingsError:
    if problem.kind == "missing":
        return SettingsError(
            f"{ENV_PREFIX}DOCKER_NETWORK: the Docker engine has no network "
            f"'{settings.docker_network}' ({problem.reason}); create it or choose another"
        )
    return SettingsError(
        f"{ENV_PREFIX}SPAWNER: the Docker engine stopped answering during start-up "
        f"({problem.reason}); start it again, or set {ENV_PREFIX}SPAWNER=local"
    )
