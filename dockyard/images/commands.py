"""What an admin does to the image catalog: register, build, change, retire, delete.

Each command is a function of a session and the acting admin, writes an ImageEvent
(who, what, when) and refuses with an ``ImageRefused``; the caller commits. At the end,
``add_image``, ``build_image_again``, ``change_image`` and ``delete_unused_image`` each
run one admin request (the API's and the pages' alike) in a transaction of the write
sessions they are given. Builds and inspections themselves are the worker's
(dockyard.images.builds).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session, sessionmaker

from dockyard.db import transaction
from dockyard.images.catalog import (
    WORK_BUILD,
    WORK_INSPECT,
    Use,
    build_is_active,
    get_image,
    record,
)
from dockyard.images.engine import ImageEngine, image_engine
from dockyard.images.errors import (
    AlreadyInCatalog,
    BuildAlreadyQueued,
    BuildUnderWay,
    CannotCheckServers,
    ImageInUse,
    ImageRetired,
    InvalidImageInput,
    NoEngine,
    NotOnEngine,
    NotUsable,
)
from dockyard.images.reference import InvalidReference, normalize_reference
from dockyard.images.sources import describe_source, directory_source, forget_upload
from dockyard.images.usage import ImageUsage, notebook_servers_now, usage_of
from dockyard.models import Image, ImageStatus, utcnow
from dockyard.settings import Settings
from spawner.images.facts import EngineUnavailable

log = logging.getLogger(__name__)

_DEFAULTS_LOCK = 0x646F6466  # "dodf": one default change at a time across web processes


def profile_names(settings: Settings) -> list[str]:
    """The notebook profiles an image may be limited to."""
    return [profile.name for profile in settings.notebook_profiles]


def _checked_reference(reference: str) -> str:
    try:
        return normalize_reference(reference)
    except InvalidReference as exc:
        raise InvalidImageInput("reference", str(exc)) from None


def _ensure_new(session: Session, reference: str) -> None:
    existing = session.scalar(select(Image).where(Image.reference == reference))
    if existing is not None:
        raise AlreadyInCatalog(
            f"'{reference}' is image #{existing.id}; open it to rebuild or change it."
        )


def _checked_profiles(profiles: Sequence[str], known: Sequence[str]) -> list[str]:
    unknown = [name for name in profiles if name not in known]
    if unknown:
        raise InvalidImageInput(
            "profiles",
            f"unknown profile '{unknown[0]}'; configured profiles: {', '.join(known) or 'none'}",
        )
    return list(dict.fromkeys(profiles))


# -- register and build ----------------------------------------------------------------


@dataclass(frozen=True)
class NewImage:
    reference: str
    description: str = ""
    for_notebooks: bool = False
    for_jobs: bool = False
    profiles: tuple[str, ...] = ()


def register_image(
    session: Session,
    engine: ImageEngine,
    new: NewImage,
    *,
    actor: str,
    known_profiles: Sequence[str],
) -> Image:
    """Add an image that already exists on the engine; the worker then inspects it."""
    reference = _checked_reference(new.reference)
    profiles = _checked_profiles(new.profiles, known_profiles)
    _ensure_new(session, reference)
    try:
        facts = engine.facts(reference)
    except EngineUnavailable as exc:
        raise NoEngine(
            f"Cannot check that '{reference}' exists: {exc}. "
            "Without an engine, notebooks and jobs run as local processes and need no image."
        ) from None
    if facts is None:
        raise NotOnEngine(
            f"The Docker engine has no image '{reference}'. Build it here (choose a "
            "directory or upload a Dockerfile), or load it on the engine first "
            "(docker pull / docker load), then register it.",
        )
    image = _add(
        session, new, reference, profiles, actor=actor, status=ImageStatus.REGISTERED,
        digest=facts.digest, size_bytes=facts.size_bytes, work_queued=WORK_INSPECT,
        work_queued_at=utcnow(), status_detail="Waiting for the worker to inspect it.",
    )
    record(session, image, actor, "registered", f"{reference} ({facts.digest})")
    _record_flags(session, image, actor)
    return image


def create_build(
    session: Session,
    new: NewImage,
    source: str,
    *,
    actor: str,
    known_profiles: Sequence[str],
) -> Image:
    """Add an image that the worker will build from ``source`` (directory_source() or
    store_upload())."""
    reference = _checked_reference(new.reference)
    if "@" in reference:
        raise InvalidImageInput("reference", "a built image is named by a tag, not a digest")
    profiles = _checked_profiles(new.profiles, known_profiles)
    _ensure_new(session, reference)
    image = _add(session, new, reference, profiles, actor=actor, status=ImageStatus.BUILDING)
    record(session, image, actor, "created", f"{reference}, to be built")
    _record_flags(session, image, actor)
    _queue_build(session, image, source, actor)
    return image


def _add(
    session: Session, new: NewImage, reference: str, profiles: list[str], *, actor: str,
    status: ImageStatus, **values: Any,
) -> Image:
    image = Image(
        reference=reference,
        description=new.description,
        status=status,
        for_notebooks=new.for_notebooks,
        for_jobs=new.for_jobs,
        profiles=profiles,
        created_by=actor,
        **values,
    )
    session.add(image)
    session.flush()  # the image's id, for its events
    return image


def _record_flags(session: Session, image: Image, actor: str) -> None:
    uses = [use for use, on in (("notebooks", image.for_notebooks), ("jobs", image.for_jobs)) if on]
    if uses:
        record(session, image, actor, "enabled", "for " + " and ".join(uses))


def request_build(
    session: Session, image: Image, source: str | None, *, actor: str, settings: Settings
) -> Image:
    """Queue a (re)build of ``image`` from ``source``, or from its last source."""
    if image.status == ImageStatus.RETIRED:
        raise ImageRetired(f"'{image.reference}' is retired; unretire it before building.")
    if build_is_active(image):
        raise BuildAlreadyQueued(
            f"'{image.reference}' is being built or waits for the worker; follow its log.",
        )
    source = source or image.build_context
    if not source:
        raise InvalidImageInput(
            "directory",
            f"'{image.reference}' was registered, not built here; choose an image "
            "directory or upload a Dockerfile to build it",
        )
    if image.build_context and image.build_context != source:
        forget_upload(settings, image.build_context)
    _queue_build(session, image, source, actor)
    return image


def _queue_build(session: Session, image: Image, source: str, actor: str) -> None:
    image.status = ImageStatus.BUILDING
    image.build_context = source
    image.build_log = ""
    image.work_queued = WORK_BUILD
    image.work_queued_at = utcnow()
    image.build_started_at = None
    image.build_finished_at = None
    image.status_detail = "Queued: waiting for the worker."
    record(session, image, actor, "build requested", f"from {describe_source(source)}")


# -- settings, retire, delete ----------------------------------------------------------


@dataclass(frozen=True)
class ImageChanges:
    description: str | None = None
    for_notebooks: bool | None = None
    for_jobs: bool | None = None
    default_for_notebooks: bool | None = None
    default_for_jobs: bool | None = None
    profiles: tuple[str, ...] | None = None
    status: Literal["retired", "active"] | None = None


def update_image(
    session: Session,
    image: Image,
    changes: ImageChanges,
    *,
    actor: str,
    known_profiles: Sequence[str],
) -> Image:
    """Apply an admin's changes. Setting a default unsets the previous one; disabling a
    use clears its default; retiring clears both defaults."""
    if changes.status == "retired" and image.status != ImageStatus.RETIRED:
        _retire(session, image, actor)
    elif changes.status == "active" and image.status == ImageStatus.RETIRED:
        _unretire(session, image, actor)

    if changes.description is not None and changes.description != image.description:
        image.description = changes.description
        record(session, image, actor, "described", changes.description[:200])
    if changes.profiles is not None:
        profiles = _checked_profiles(changes.profiles, known_profiles)
        if profiles != list(image.profiles or []):
            old = ", ".join(image.profiles or []) or "all"
            image.profiles = profiles
            record(session, image, actor, "profiles", f"{old} → {', '.join(profiles) or 'all'}")

    for use in ("notebooks", "jobs"):
        enable = getattr(changes, f"for_{use}")
        make_default = getattr(changes, f"default_for_{use}")
        if make_default and enable is False:
            raise InvalidImageInput(
                f"default_for_{use}", f"the default for {use} must be enabled for {use}"
            )
        if make_default and not getattr(image, f"for_{use}"):
            enable = True
        if enable is not None and enable != getattr(image, f"for_{use}"):
            if enable and image.status == ImageStatus.RETIRED:
                raise ImageRetired(f"Unretire '{image.reference}' before enabling it.")
            setattr(image, f"for_{use}", enable)
            record(session, image, actor, "enabled" if enable else "disabled", f"for {use}")
            if not enable and getattr(image, f"default_for_{use}"):
                setattr(image, f"default_for_{use}", False)
                record(session, image, actor, "default unset", f"for {use}")
        if make_default is True and not getattr(image, f"default_for_{use}"):
            _make_default(session, image, use, actor)
        elif make_default is False and getattr(image, f"default_for_{use}"):
            setattr(image, f"default_for_{use}", False)
            record(session, image, actor, "default unset", f"for {use}")
    return image


def _make_default(session: Session, image: Image, use: Use, actor: str) -> None:
    if image.status not in (ImageStatus.READY, ImageStatus.REGISTERED):
        raise NotUsable(
            f"'{image.reference}' is {image.status.value}; only a ready image can be the "
            f"default for {use}.",
        )
    flag = Image.default_for_notebooks if use == "notebooks" else Image.default_for_jobs
    if session.get_bind().dialect.name == "postgresql":
        # Two admins choosing defaults at once must not both win: on PostgreSQL neither
        # sees the other's uncommitted choice, so they take turns (SQLite's write lock,
        # taken at BEGIN by the callers' write sessions, does the same there).
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _DEFAULTS_LOCK})
    previous = list(session.scalars(select(Image).where(flag.is_(True), Image.id != image.id)))
    session.execute(
        update(Image).where(flag.is_(True), Image.id != image.id).values({flag.key: False})
    )
    for old in previous:
        session.refresh(old, [flag.key])
        record(session, old, actor, "default unset", f"for {use}: now {image.reference}")
    setattr(image, flag.key, True)
    record(session, image, actor, "default set", f"for {use}")


def _retire(session: Session, image: Image, actor: str) -> None:
    if build_is_active(image):
        raise BuildUnderWay(f"'{image.reference}' is being built; retire it afterwards.")
    image.status = ImageStatus.RETIRED
    image.status_detail = "Retired: no new notebook servers or runs; running ones continue."
    record(session, image, actor, "retired")
    for use in ("notebooks", "jobs"):
        if getattr(image, f"default_for_{use}"):
            setattr(image, f"default_for_{use}", False)
            record(session, image, actor, "default unset", f"for {use} (retired)")


def _unretire(session: Session, image: Image, actor: str) -> None:
    image.status = ImageStatus.READY if image.inspected_at else ImageStatus.REGISTERED
    image.status_detail = ""
    record(session, image, actor, "unretired")


def delete_image(
    session: Session, image: Image, usage: ImageUsage, *, actor: str, settings: Settings
) -> None:
    """Remove the catalog entry (the engine keeps the image). Refused while anything
    uses it, naming who does."""
    if build_is_active(image):
        raise BuildUnderWay(f"'{image.reference}' is being built; delete it afterwards.")
    if usage.servers is None:
        raise CannotCheckServers(
            "Neither the hub nor the Docker engine answered, so Dockyard cannot tell "
            "whether a notebook server runs this image; try again shortly.",
        )
    if usage.in_use:
        raise ImageInUse(
            {
                "message": f"'{image.reference}' is used by {usage.summary()}. Retire it to "
                "stop new use; delete it once nothing uses it.",
                "servers": usage.servers,
                "runs": usage.runs,
                "definitions": usage.definitions,
            },
        )
    forget_upload(settings, image.build_context)
    log.info("Image %s (#%s) deleted from the catalog by %s", image.reference, image.id, actor)
    session.delete(image)


# -- one admin request each ------------------------------------------------------------


def add_image(
    writes: sessionmaker[Session], settings: Settings, new: NewImage, *,
    build_from: str | None, upload: str | None, actor: str,
) -> Image:
    """Build the image from an upload (a source of store_upload()) or from images/NAME
    (``build_from``), or else register it from the engine. An upload is removed when the
    request is refused."""
    try:
        with transaction(writes) as session:
            if upload is not None:
                return create_build(
                    session, new, upload, actor=actor, known_profiles=profile_names(settings)
                )
            engine = image_engine(settings)
            if build_from:
                return create_build(
                    session, new, directory_source(build_from, engine), actor=actor,
                    known_profiles=profile_names(settings),
                )
            return register_image(
                session, engine, new, actor=actor, known_profiles=profile_names(settings)
            )
    except Exception:
        forget_upload(settings, upload)
        raise


def build_image_again(
    writes: sessionmaker[Session], settings: Settings, image_id: int, *,
    directory: str | None, upload: str | None, actor: str,
) -> Image:
    """Queue a build from an upload, from images/NAME, or else from the last source. An
    upload is removed when the request is refused."""
    try:
        with transaction(writes) as session:
            image = get_image(session, image_id)
            if upload is not None:
                source: str | None = upload
            elif directory:
                source = directory_source(directory, image_engine(settings))
            else:
                source = None
            return request_build(session, image, source, actor=actor, settings=settings)
    except Exception:
        forget_upload(settings, upload)
        raise


def change_image(
    writes: sessionmaker[Session], settings: Settings, image_id: int, changes: ImageChanges,
    *, actor: str,
) -> Image:
    """Apply an admin's changes to image ``image_id`` (see update_image)."""
    with transaction(writes) as session:
        return update_image(
            session, get_image(session, image_id), changes, actor=actor,
            known_profiles=profile_names(settings),
        )


def delete_unused_image(
    session: Session, writes: sessionmaker[Session], settings: Settings, image_id: int, *,
    actor: str,
) -> None:
    """Delete the image unless something uses it; ``session`` reads, ``writes`` deletes."""
    get_image(session, image_id)
    # Asked before taking the write lock: the hub is another process and may be slow.
    servers = notebook_servers_now(session, settings)
    session.rollback()
    with transaction(writes) as write:
        image = get_image(write, image_id)
        usage = usage_of(write, [image.reference], servers)[image.reference]
        delete_image(write, image, usage, actor=actor, settings=settings)
