"""Dockyard's curated images in the catalog from the first start.

On a fresh installation the catalog would be empty although notebooks fall back to the
notebook image (``DOCKYARD_NOTEBOOK_IMAGE``, ``dockyard/notebook:latest``, which ``make
images`` builds), so no job could be launched until an admin registered it. At start the
worker registers each curated image the Docker engine has, as ``system``: enabled for
notebooks and jobs, the default for each use that has none, then inspected by the worker
like any registered image. Curated means Dockyard's own notebook repository: an
installation whose notebooks fall back to an image of its own is left to its admins.

Each reference is seeded at most once. The ``curated_image_seeds`` row is written in the
same transaction as the image, and its primary key decides which of two processes starting
at once does it; the row outlives the image, so one that an admin deleted or retired is
never added again. An image the engine does not have is left for a later start.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from dockyard.images.catalog import Use, default_image
from dockyard.images.commands import ImageChanges, NewImage, register_image, update_image
from dockyard.images.engine import ImageEngine, image_engine_for_usage
from dockyard.images.errors import ImageRefused
from dockyard.images.reference import InvalidReference, normalize_reference, parse_reference
from dockyard.models import CuratedImageSeed, Image
from dockyard.settings import Settings
from spawner.images.facts import EngineUnavailable

log = logging.getLogger(__name__)

SYSTEM_ACTOR = "system"
NOTEBOOK_REPOSITORY = "dockyard/notebook"
BUILD_HINT = "make images"
SEEDED = "registered"
FOUND = "already in the catalog"
CHECKED = "Curated images checked"
NOTEBOOK_DESCRIPTION = ("Dockyard's curated image: JupyterLab, Python, R, Spark, Ray and the "
                        "Dockyard data clients.")


@dataclass(frozen=True)
class CuratedImage:
    reference: str
    description: str
    for_notebooks: bool = True
    for_jobs: bool = True


def curated_images(settings: Settings) -> tuple[CuratedImage, ...]:
    """The images Dockyard offers by itself: its notebook image, for notebooks and jobs,
    when notebooks are configured to fall back to it (DOCKYARD_NOTEBOOK_IMAGE in the
    dockyard/notebook repository, as by default). An installation configured with an
    image of its own keeps the catalog its admins make."""
    try:
        reference = parse_reference(settings.notebook_image)
    except InvalidReference:
        return ()
    if reference.name != NOTEBOOK_REPOSITORY:
        return ()
    return (CuratedImage(str(reference), NOTEBOOK_DESCRIPTION),)


def curated_reference(settings: Settings) -> str | None:
    """The curated image pages point to (built by ``make images``), if there is one."""
    curated = curated_images(settings)
    return curated[0].reference if curated else None


def curated_images_wanted(spawner: str, job_backends: Iterable[str]) -> bool:
    """Whether anything runs on a container engine: when notebooks and every job pool are
    local processes, no image is used and the catalog stays as admins make it."""
    return spawner != "local" or any(backend != "local" for backend in job_backends)


def seed_curated_images(
    sessions: sessionmaker[Session], engine: ImageEngine, curated: Sequence[CuratedImage]
) -> list[str]:
    """Register the curated images the engine has and that were never seeded before.
    Returns the references registered now. Safe to call from several processes at once."""
    registered: list[str] = []
    for image in curated:
        try:
            reference = normalize_reference(image.reference)
        except InvalidReference as exc:
            log.warning("Curated image not registered: %s", exc)
            continue
        with sessions() as session:
            if session.get(CuratedImageSeed, reference) is not None:
                continue
        try:
            facts = engine.facts(reference)
        except EngineUnavailable as exc:
            log.info("Curated images not registered: %s", exc)
            break
        if facts is None:
            log.info("Curated image %s is not on the Docker engine; build it with '%s' and "
                     "Dockyard registers it at its next start", reference, BUILD_HINT)
            continue
        if _seed(sessions, engine, image, reference):
            log.info("Curated image %s registered in the catalog", reference)
            registered.append(reference)
    return registered


def _seed(sessions: sessionmaker[Session], engine: ImageEngine, curated: CuratedImage,
          reference: str) -> bool:
    with sessions() as session:
        seed = CuratedImageSeed(reference=reference, outcome=SEEDED)
        session.add(seed)
        try:
            # Of two processes seeding at once, the second waits here for the first and
            # then finds the row taken.
            session.flush()
            if session.scalar(select(Image.id).where(Image.reference == reference)):
                seed.outcome = FOUND  # an admin was first: their settings stand
                session.commit()
                return False
            image = register_image(
                session, engine,
                NewImage(reference=reference, description=curated.description,
                         for_notebooks=curated.for_notebooks, for_jobs=curated.for_jobs),
                actor=SYSTEM_ACTOR, known_profiles=(),
            )
            update_image(
                session, image,
                ImageChanges(
                    default_for_notebooks=_lacks_default(session, "notebooks", curated),
                    default_for_jobs=_lacks_default(session, "jobs", curated),
                ),
                actor=SYSTEM_ACTOR, known_profiles=(),
            )
            session.commit()
            return True
        except IntegrityError:
            session.rollback()
            return False
        except ImageRefused as exc:  # e.g. the engine lost the image meanwhile
            session.rollback()
            log.warning("Curated image %s not registered: %s", reference, exc.detail)
            return False


def _lacks_default(session: Session, use: Use, curated: CuratedImage) -> bool | None:
    """True (make it the default) when the use has no usable default yet; None: leave it."""
    enabled = curated.for_notebooks if use == "notebooks" else curated.for_jobs
    return True if enabled and default_image(session, use) is None else None


def seed_at_start(sessions: sessionmaker[Session], settings: Settings,
                  job_backends: Iterable[str], engine: ImageEngine | None = None) -> list[str]:
    """The worker's call at start. Never raises: a catalog that could not be seeded now
    is seeded at a later start, and must not keep the worker from moving runs."""
    if not curated_images_wanted(settings.spawner, job_backends):
        return []
    try:
        registered = seed_curated_images(sessions, engine or image_engine_for_usage(),
                                         curated_images(settings))
    except Exception as exc:  # the database or the engine went away: next start
        log.warning("Curated images not registered at this start: %s", exc, exc_info=True)
        return []
    # Also when nothing was new: an operator (or a test) sees that this start's pass is over.
    log.info("%s at this start: %d registered", CHECKED, len(registered))
    return registered
