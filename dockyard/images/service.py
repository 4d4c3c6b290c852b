"""What may happen to an image in the catalog, and the worker's part of it.

Register, request a build, change settings, retire, delete: each is a function of a
session and the acting admin, and each writes an ImageEvent (who, what, when). No Flask
here; the web app translates ``ImageServiceError`` into its JSON or HTML answer.

Builds and inspections never run in a web request: the request marks the image
(``work_queued``) and the worker claims the mark with a compare-and-swap update, then
builds in a thread of its own so that runs keep being dispatched meanwhile, appending
the engine's progress lines to ``build_log`` and committing every half second so that a
page polling the log sees the build advance.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import Engine, and_, func, or_, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from dockyard.db import write_sessions
from dockyard.images.catalog import Use
from dockyard.images.context import ContextRejected, check_image_directory
from dockyard.images.engine import BuildFailed, EngineUnavailable, ImageEngine, image_engine
from dockyard.images.reference import InvalidReference, normalize_reference
from dockyard.images.usage import ImageUsage
from dockyard.models import Image, ImageEvent, ImageStatus, utcnow
from dockyard.settings import Settings

if TYPE_CHECKING:  # the web app never imports docker
    from spawner.imageinspect import LeftoverInspection

log = logging.getLogger(__name__)

WORKER_ACTOR = "dockyard-worker"
WORK_BUILD = "build"
WORK_INSPECT = "inspect"
DIRECTORY_PREFIX = "images/"
UPLOAD_PREFIX = "upload:"
BUILD_LOG_MAX_CHARS = 4 * 1024 * 1024
LOG_FLUSH_SECONDS = 0.5
LOG_FLUSH_CHARS = 16 * 1024
HEARTBEAT_SECONDS = 10.0
# A build or inspection whose worker has not been heard of for this long is abandoned.
STALE_AFTER = timedelta(seconds=120)
VERSION_KEYS = ("os", "python", "r", "java", "spark", "ray")
_DEFAULTS_LOCK = 0x646F6466  # "dodf": one default change at a time across web processes


class ImageServiceError(Exception):
    """Refused, with an HTTP-like status, a short name and a detail a person can act on."""

    def __init__(self, status: int, error: str, detail: Any = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail


def invalid(field: str, message: str) -> ImageServiceError:
    return ImageServiceError(422, "Invalid input", [{"field": field, "message": message}])


def not_found(image_id: int) -> ImageServiceError:
    return ImageServiceError(404, "Not Found", f"No image #{image_id} in the catalog.")


# -- reading ---------------------------------------------------------------------------


def get_image(session: Session, image_id: int) -> Image:
    image = session.get(Image, image_id)
    if image is None:
        raise not_found(image_id)
    return image


def all_images(session: Session) -> list[Image]:
    return list(session.scalars(select(Image).order_by(Image.reference)))


def is_offered(image: Image) -> bool:
    """What a non-admin may see: enabled for notebooks or jobs, and usable now."""
    usable = image.status in (ImageStatus.READY, ImageStatus.REGISTERED)
    return usable and (image.for_notebooks or image.for_jobs)


def offered_images(session: Session) -> list[Image]:
    return [image for image in all_images(session) if is_offered(image)]


def events_of(session: Session, image: Image) -> list[ImageEvent]:
    query = select(ImageEvent).where(ImageEvent.image_id == image.id)
    return list(session.scalars(query.order_by(ImageEvent.id.desc())))


def versions_of(image: Image) -> dict[str, str | None]:
    contents = image.contents or {}
    return {key: contents.get(key) for key in VERSION_KEYS}


def build_log_since(session: Session, image_id: int, offset: int) -> tuple[str, int]:
    """The build log from character ``offset`` on, and the offset to ask from next."""
    row = session.execute(
        select(func.length(Image.build_log), func.substr(Image.build_log, offset + 1)).where(
            Image.id == image_id
        )
    ).one_or_none()
    if row is None:
        raise not_found(image_id)
    length, text = row
    length = int(length or 0)
    if offset >= length:
        return "", length
    return str(text or ""), length


def build_is_active(image: Image) -> bool:
    """Queued for the worker or being built (an inspection alone does not count)."""
    return image.status == ImageStatus.BUILDING or image.work_queued == WORK_BUILD


# -- recording -------------------------------------------------------------------------


def record(session: Session, image: Image, actor: str, action: str, detail: str = "") -> None:
    session.add(ImageEvent(image_id=image.id, actor=actor, action=action, detail=detail[:4000]))


def _checked_reference(reference: str) -> str:
    try:
        return normalize_reference(reference)
    except InvalidReference as exc:
        raise invalid("reference", str(exc)) from None


def _ensure_new(session: Session, reference: str) -> None:
    existing = session.scalar(select(Image).where(Image.reference == reference))
    if existing is not None:
        raise ImageServiceError(
            409,
            "Already in the catalog",
            f"'{reference}' is image #{existing.id}; open it to rebuild or change it.",
        )


def _checked_profiles(profiles: Sequence[str], known: Sequence[str]) -> list[str]:
    unknown = [name for name in profiles if name not in known]
    if unknown:
        raise invalid(
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
        raise ImageServiceError(
            503, "No Docker engine", f"Cannot check that '{reference}' exists: {exc}. "
            "Without an engine, notebooks and jobs run as local processes and need no image."
        ) from None
    if facts is None:
        raise ImageServiceError(
            404,
            "Image not on the engine",
            f"The Docker engine has no image '{reference}'. Build it here (choose a "
            "directory or upload a Dockerfile), or load it on the engine first "
            "(docker pull / docker load), then register it.",
        )
    image = Image(
        reference=reference,
        digest=facts.digest,
        size_bytes=facts.size_bytes,
        description=new.description,
        status=ImageStatus.REGISTERED,
        for_notebooks=new.for_notebooks,
        for_jobs=new.for_jobs,
        profiles=profiles,
        created_by=actor,
        work_queued=WORK_INSPECT,
        work_queued_at=utcnow(),
        status_detail="Waiting for the worker to inspect it.",
    )
    session.add(image)
    session.flush()
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
    upload_source())."""
    reference = _checked_reference(new.reference)
    if "@" in reference:
        raise invalid("reference", "a built image is named by a tag, not a digest")
    profiles = _checked_profiles(new.profiles, known_profiles)
    _ensure_new(session, reference)
    image = Image(
        reference=reference,
        description=new.description,
        status=ImageStatus.BUILDING,
        for_notebooks=new.for_notebooks,
        for_jobs=new.for_jobs,
        profiles=profiles,
        created_by=actor,
    )
    session.add(image)
    session.flush()
    record(session, image, actor, "created", f"{reference}, to be built")
    _record_flags(session, image, actor)
    _queue_build(session, image, source, actor)
    return image


def _record_flags(session: Session, image: Image, actor: str) -> None:
    uses = [use for use, on in (("notebooks", image.for_notebooks), ("jobs", image.for_jobs)) if on]
    if uses:
        record(session, image, actor, "enabled", "for " + " and ".join(uses))


def directory_source(name: str, engine: ImageEngine) -> str:
    """The build source for images/NAME, after checking it is one of ours and confined."""
    try:
        check_image_directory(name, engine.buildable_directories())
    except ContextRejected as exc:
        raise invalid(exc.field, exc.message) from None
    return DIRECTORY_PREFIX + name


def upload_source(filename: str) -> str:
    return UPLOAD_PREFIX + filename


def uploads_dir(settings: Settings) -> Path:
    return settings.home / "image-builds"


def new_upload_path(settings: Settings) -> Path:
    return uploads_dir(settings) / f"context-{secrets.token_hex(8)}.tar"


def request_build(
    session: Session, image: Image, source: str | None, *, actor: str, settings: Settings
) -> Image:
    """Queue a (re)build of ``image`` from ``source``, or from its last source."""
    if image.status == ImageStatus.RETIRED:
        raise ImageServiceError(
            409, "Image retired", f"'{image.reference}' is retired; unretire it before building."
        )
    if build_is_active(image):
        raise ImageServiceError(
            409,
            "Build already under way",
            f"'{image.reference}' is being built or waits for the worker; follow its log.",
        )
    source = source or image.build_context
    if not source:
        raise invalid(
            "directory",
            f"'{image.reference}' was registered, not built here; choose an image "
            "directory or upload a Dockerfile to build it",
        )
    if image.build_context and image.build_context != source:
        _forget_upload(settings, image.build_context)
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


def describe_source(source: str | None) -> str:
    if not source:
        return "nothing (registered)"
    if source.startswith(UPLOAD_PREFIX):
        return "an uploaded Dockerfile/context"
    return source


def _forget_upload(settings: Settings, source: str | None) -> None:
    if source and source.startswith(UPLOAD_PREFIX):
        name = Path(source[len(UPLOAD_PREFIX) :]).name
        (uploads_dir(settings) / name).unlink(missing_ok=True)


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
            raise invalid(f"default_for_{use}", f"the default for {use} must be enabled for {use}")
        if make_default and not getattr(image, f"for_{use}"):
            enable = True
        if enable is not None and enable != getattr(image, f"for_{use}"):
            if enable and image.status == ImageStatus.RETIRED:
                raise ImageServiceError(
                    409, "Image retired", f"Unretire '{image.reference}' before enabling it."
                )
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
        raise ImageServiceError(
            409,
            "Not usable",
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
        raise ImageServiceError(
            409, "Build under way", f"'{image.reference}' is being built; retire it afterwards."
        )
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
        raise ImageServiceError(
            409, "Build under way", f"'{image.reference}' is being built; delete it afterwards."
        )
    if usage.servers is None:
        raise ImageServiceError(
            503,
            "Cannot check notebook servers",
            "Neither the hub nor the Docker engine answered, so Dockyard cannot tell "
            "whether a notebook server runs this image; try again shortly.",
        )
    if usage.in_use:
        raise ImageServiceError(
            409,
            "Image in use",
            {
                "message": f"'{image.reference}' is used by {usage.summary()}. Retire it to "
                "stop new use; delete it once nothing uses it.",
                "servers": usage.servers,
                "runs": usage.runs,
                "definitions": usage.definitions,
            },
        )
    _forget_upload(settings, image.build_context)
    log.info("Image %s (#%s) deleted from the catalog by %s", image.reference, image.id, actor)
    session.delete(image)


# -- comparing two images --------------------------------------------------------------


def _normalize_package(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _diff_packages(old: dict[str, str], new: dict[str, str], *, pip: bool) -> dict[str, Any]:
    key = _normalize_package if pip else (lambda name: name)
    old_by = {key(name): (name, version) for name, version in (old or {}).items()}
    new_by = {key(name): (name, version) for name, version in (new or {}).items()}
    added = [
        {"name": new_by[k][0], "version": new_by[k][1]} for k in sorted(new_by.keys() - old_by)
    ]
    removed = [
        {"name": old_by[k][0], "version": old_by[k][1]} for k in sorted(old_by.keys() - new_by)
    ]
    changed = [
        {"name": new_by[k][0], "old": old_by[k][1], "new": new_by[k][1]}
        for k in sorted(old_by.keys() & new_by.keys())
        if old_by[k][1] != new_by[k][1]
    ]
    unchanged = len(old_by.keys() & new_by.keys()) - len(changed)
    return {"added": added, "removed": removed, "changed": changed, "unchanged": unchanged}


def diff_contents(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """What changed from ``old`` to ``new``: versions, kernels, pip and R packages."""
    old = old or {}
    new = new or {}
    versions = [
        {"name": key, "old": old.get(key), "new": new.get(key)}
        for key in VERSION_KEYS
        if old.get(key) != new.get(key)
    ]
    old_kernels = set((old.get("kernels") or {}).keys())
    new_kernels = set((new.get("kernels") or {}).keys())
    return {
        "versions": versions,
        "kernels": {
            "added": sorted(new_kernels - old_kernels),
            "removed": sorted(old_kernels - new_kernels),
        },
        "pip_packages": _diff_packages(old.get("pip_packages"), new.get("pip_packages"), pip=True),
        "r_packages": _diff_packages(old.get("r_packages"), new.get("r_packages"), pip=False),
    }


# -- the worker's part -----------------------------------------------------------------


class _BuildLog:
    """Collects progress lines and appends them to the image's build_log in chunks,
    committing each so that another process's reader sees them."""

    def __init__(self, sessions: sessionmaker[Session], image_id: int) -> None:
        self.sessions = sessions
        self.image_id = image_id
        self.pending: list[str] = []
        self.pending_chars = 0
        self.written = 0
        self.truncated = False
        self.last_flush = time.monotonic()

    def write(self, text: str) -> None:
        if not text or self.truncated:
            return
        if self.written + self.pending_chars + len(text) > BUILD_LOG_MAX_CHARS:
            text = "\n[build log cut here: it is longer than Dockyard keeps]\n"
            self.truncated = True
        self.pending.append(text)
        self.pending_chars += len(text)
        quiet_for = time.monotonic() - self.last_flush
        if self.pending_chars >= LOG_FLUSH_CHARS or quiet_for >= LOG_FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.pending:
            return
        chunk = "".join(self.pending)
        self.pending.clear()
        self.pending_chars = 0
        with self.sessions() as session:
            session.execute(
                update(Image)
                .where(Image.id == self.image_id)
                .values(build_log=Image.build_log + chunk, worker_heartbeat_at=utcnow())
            )
            session.commit()
        self.written += len(chunk)


@dataclass(frozen=True)
class _Claim:
    image_id: int
    reference: str
    work: str
    source: str | None


class ImageWorkRunner:
    """The worker's image builds and inspections, each in a thread of its own.

    ``namespace`` and ``worker_name`` are the worker's (see dockyard.worker.loop): its
    inspection containers carry them, so that its next start finds what it left.
    """

    def __init__(self, *, namespace: str = "", worker_name: str = "") -> None:
        self.active: dict[int, threading.Thread] = {}
        self._last_heartbeat = 0.0
        self._lock = threading.Lock()
        self.namespace = namespace
        self.worker_name = worker_name

    def engine(self, settings: Settings) -> ImageEngine:
        return image_engine(settings, namespace=self.namespace, worker=self.worker_name)

    def tick(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        engine: ImageEngine | None = None,
    ) -> list[int]:
        """One pass: keep our work's heartbeat, give up abandoned work, start what is
        queued while there is room. Returns the ids of images whose work started."""
        sessions = _locking(sessions)
        with self._lock:
            self.active = {i: t for i, t in self.active.items() if t.is_alive()}
            now = time.monotonic()
            if now - self._last_heartbeat >= HEARTBEAT_SECONDS:
                self._last_heartbeat = now
                self._heartbeat(sessions)
                self._give_up_abandoned(sessions)
            started: list[int] = []
            while len(self.active) < settings.image_builds_at_once:
                claim = self._claim_next(sessions)
                if claim is None:
                    break
                thread = threading.Thread(
                    target=self._work,
                    args=(sessions, settings, engine or self.engine(settings), claim),
                    name=f"image-{claim.work}-{claim.image_id}",
                    daemon=True,
                )
                self.active[claim.image_id] = thread
                thread.start()
                started.append(claim.image_id)
            return started

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the work this runner started; True when all of it finished."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in list(self.active.values()):
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(remaining)
        return not any(t.is_alive() for t in self.active.values())

    # -- after a restart -----------------------------------------------------------------
    def reconcile(
        self, sessions: sessionmaker[Session], settings: Settings,
        engine: ImageEngine | None = None,
    ) -> list[int]:
        """At the worker's start: remove the inspection containers that stopped workers of
        this installation left on the engine, and settle the images whose inspection this
        worker's own stop cut short, at once rather than when their heartbeat goes stale
        (``_give_up_abandoned`` settles other workers' abandoned work). Returns the ids of
        the images settled."""
        sessions = _locking(sessions)
        try:
            leftovers = (engine or self.engine(settings)).remove_leftover_inspections(
                STALE_AFTER)
        except EngineUnavailable as exc:
            log.info("Image inspections: no engine to look for leftover containers on (%s)",
                     exc)
            return []
        settled = []
        for leftover in leftovers:
            log.info("Removed inspection container %s, left by a stopped worker",
                     leftover.container)
            image_id = leftover.catalog_id
            if leftover.by_this_worker and image_id is not None \
                    and self._settle_cut_short(sessions, image_id, leftover):
                settled.append(image_id)
        return settled

    def _settle_cut_short(self, sessions: sessionmaker[Session], image_id: int,
                          leftover: LeftoverInspection) -> bool:
        """An inspection of ours ended with our stop: inspect a registered image again
        (nothing about it is lost), fail a build that was being inspected (its log says
        how far it got; the admin builds again, as for any build a stopped worker left)."""
        with sessions() as session:
            image = session.get(Image, image_id)
            if image is None or image.work_queued is not None:  # deleted, or queued anew
                return False
            why = f"the worker stopped during its inspection (container {leftover.container})"
            if image.status == ImageStatus.BUILDING:
                if image.build_started_at and leftover.created \
                        and image.build_started_at > leftover.created:
                    return False  # built again since, by another worker
                image.status = ImageStatus.FAILED
                image.status_detail = ("The worker stopped while inspecting the built image; "
                                       "build again.")
                image.build_finished_at = utcnow()
                image.build_log = f"{image.build_log or ''}Build failed: {why}\n"
                record(session, image, WORKER_ACTOR, "build failed", why)
            elif image.status == ImageStatus.REGISTERED and image.inspected_at is None:
                image.work_queued = WORK_INSPECT
                image.work_queued_at = utcnow()
                image.status_detail = ("Waiting for the worker to inspect it again (the "
                                       "last inspection was cut short when the worker stopped).")
                record(session, image, WORKER_ACTOR, "inspection interrupted",
                       f"{why}; inspecting it again")
            else:
                return False
            session.commit()
        return True

    # -- claiming ----------------------------------------------------------------------
    def _claim_next(self, sessions: sessionmaker[Session]) -> _Claim | None:
        with sessions() as session:
            for _ in range(5):
                candidate = session.execute(
                    select(Image.id, Image.reference, Image.work_queued, Image.work_queued_at,
                           Image.build_context)
                    .where(Image.work_queued.is_not(None))
                    .order_by(Image.work_queued_at, Image.id)
                    .limit(1)
                ).one_or_none()
                if candidate is None:
                    return None
                image_id, reference, work, queued_at, source = candidate
                now = utcnow()
                values: dict[str, Any] = {
                    "work_queued": None,
                    "worker_heartbeat_at": now,
                    "status_detail": "Building…" if work == WORK_BUILD else "Inspecting…",
                }
                if work == WORK_BUILD:
                    values["build_started_at"] = now
                # Compare-and-swap: of two workers, only one sees its update land.
                claimed = session.execute(
                    update(Image)
                    .where(
                        Image.id == image_id,
                        Image.work_queued == work,
                        Image.work_queued_at == queued_at,
                    )
                    .values(values)
                    .execution_options(synchronize_session=False)
                ).rowcount
                if claimed:
                    if work == WORK_BUILD:
                        session.add(
                            ImageEvent(
                                image_id=image_id, actor=WORKER_ACTOR, action="build started",
                                detail=f"from {describe_source(source)}",
                            )
                        )
                    session.commit()
                    return _Claim(image_id, reference, work, source)
                session.rollback()
        return None

    def _heartbeat(self, sessions: sessionmaker[Session]) -> None:
        if not self.active:
            return
        with sessions() as session:
            session.execute(
                update(Image)
                .where(Image.id.in_(list(self.active)))
                .values(worker_heartbeat_at=utcnow())
            )
            session.commit()

    def _give_up_abandoned(self, sessions: sessionmaker[Session]) -> None:
        """Work claimed by a worker that stopped: a build fails (its log says how far it
        got), an inspection is queued again."""
        cutoff = utcnow() - STALE_AFTER
        mine = list(self.active)
        with sessions() as session:
            stale = session.scalars(
                select(Image).where(
                    Image.work_queued.is_(None),
                    Image.worker_heartbeat_at < cutoff,
                    Image.id.not_in(mine),
                    or_(
                        Image.status == ImageStatus.BUILDING,
                        and_(Image.status == ImageStatus.REGISTERED, Image.inspected_at.is_(None)),
                    ),
                )
            ).all()
            for image in stale:
                if image.status == ImageStatus.BUILDING:
                    image.status = ImageStatus.FAILED
                    image.status_detail = (
                        "The worker building it stopped before the build finished; build again."
                    )
                    image.build_finished_at = utcnow()
                    record(session, image, WORKER_ACTOR, "build failed", image.status_detail)
                else:
                    image.work_queued = WORK_INSPECT
                    image.work_queued_at = utcnow()
                    image.status_detail = "Waiting for the worker to inspect it."
                    record(session, image, WORKER_ACTOR, "inspection interrupted",
                           "the worker inspecting it stopped; inspecting it again")
            session.commit()

    # -- doing the work ----------------------------------------------------------------
    def _work(
        self, sessions: sessionmaker[Session], settings: Settings, engine: ImageEngine,
        claim: _Claim,
    ) -> None:
        try:
            if claim.work == WORK_BUILD:
                self._build(sessions, settings, engine, claim)
            else:
                self._inspect(sessions, engine, claim)
        except Exception:  # a thread must record its failure, not vanish with it
            log.exception("Image %s work '%s' failed", claim.reference, claim.work)
            self._finish_failed(sessions, claim, "Internal error in the worker; see its log.")

    def _build(
        self, sessions: sessionmaker[Session], settings: Settings, engine: ImageEngine,
        claim: _Claim,
    ) -> None:
        build_log = _BuildLog(sessions, claim.image_id)
        labels = {"org.dockyard.catalog-image": str(claim.image_id)}
        source = claim.source or ""
        build_log.write(f"Building {claim.reference} from {describe_source(source)}\n")
        try:
            if source.startswith(UPLOAD_PREFIX):
                archive = uploads_dir(settings) / Path(source[len(UPLOAD_PREFIX) :]).name
                if not archive.is_file():
                    raise BuildFailed("the uploaded context is gone; upload it again")
                engine.build_archive(archive, claim.reference, build_log.write, labels=labels)
            elif source.startswith(DIRECTORY_PREFIX):
                name = source[len(DIRECTORY_PREFIX) :]
                try:
                    check_image_directory(name, engine.buildable_directories())
                except ContextRejected as exc:
                    raise BuildFailed(exc.message) from None
                engine.build_directory(name, claim.reference, build_log.write, labels=labels)
            else:
                raise BuildFailed(f"unknown build source '{source}'")
            facts = engine.facts(claim.reference)
            if facts is None:
                raise BuildFailed("the build finished but the engine has no such image")
            build_log.write(f"Built {claim.reference} ({facts.digest}). Inspecting it…\n")
            build_log.flush()
            contents = _inspect_tolerantly(engine, claim.reference, claim.image_id)
            build_log.write(f"Inspected: {_inspection_line(contents)}\n")
        except (BuildFailed, EngineUnavailable) as exc:
            build_log.write(f"Build failed: {exc}\n")
            build_log.flush()
            self._finish_failed(sessions, claim, f"Build failed: {exc}")
            return
        build_log.flush()
        with sessions() as session:
            image = session.get(Image, claim.image_id)
            if image is None:
                return
            image.status = ImageStatus.READY
            image.status_detail = ""
            image.digest = facts.digest
            image.size_bytes = facts.size_bytes
            image.contents = contents
            image.inspected_at = utcnow()
            image.build_finished_at = utcnow()
            built = f"{facts.digest}, {facts.size_bytes} bytes"
            record(session, image, WORKER_ACTOR, "built", built)
            record(session, image, WORKER_ACTOR, "inspected", _inspection_line(contents))
            session.commit()

    def _inspect(
        self, sessions: sessionmaker[Session], engine: ImageEngine, claim: _Claim
    ) -> None:
        try:
            facts = engine.facts(claim.reference)
        except EngineUnavailable as exc:
            self._finish_failed(sessions, claim, f"Cannot inspect: {exc}")
            return
        if facts is None:
            self._finish_failed(sessions, claim, "The image is no longer on the Docker engine.")
            return
        contents = _inspect_tolerantly(engine, claim.reference, claim.image_id)
        with sessions() as session:
            image = session.get(Image, claim.image_id)
            if image is None:
                return
            image.digest = facts.digest
            image.size_bytes = facts.size_bytes
            image.contents = contents
            image.inspected_at = utcnow()
            if image.status == ImageStatus.REGISTERED:
                image.status = ImageStatus.READY
                image.status_detail = ""
            record(session, image, WORKER_ACTOR, "inspected", _inspection_line(contents))
            session.commit()

    def _finish_failed(self, sessions: sessionmaker[Session], claim: _Claim, reason: str) -> None:
        with sessions() as session:
            image = session.get(Image, claim.image_id)
            if image is None or image.status == ImageStatus.RETIRED:
                return
            image.status = ImageStatus.FAILED
            image.status_detail = reason[:2000]
            if claim.work == WORK_BUILD:
                image.build_finished_at = utcnow()
            record(session, image, WORKER_ACTOR, f"{claim.work} failed", reason)
            session.commit()


def _locking(sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    """Sessions that take SQLite's write lock at BEGIN (see dockyard.db.write_sessions): the
    runner reads then writes, while the web app and other threads write too."""
    bind = sessions.kw.get("bind")
    if isinstance(bind, Engine) and not bind.get_execution_options().get("sqlite_begin"):
        return write_sessions(bind)
    return sessions


def _inspect_tolerantly(engine: ImageEngine, reference: str, image_id: int) -> dict[str, Any]:
    try:
        return engine.inspect(reference, catalog_id=image_id)
    except BuildFailed as exc:
        return {"errors": [f"inspection failed: {exc}"]}


def _inspection_line(contents: dict[str, Any]) -> str:
    found = [f"{key} {contents[key]}" for key in VERSION_KEYS[1:] if contents.get(key)]
    counts = (
        f"{len(contents.get('pip_packages') or {})} Python packages, "
        f"{len(contents.get('r_packages') or {})} R packages, "
        f"{len(contents.get('kernels') or {})} kernels"
    )
    errors = "; ".join(contents.get("errors") or [])
    return f"{', '.join(found) or 'no language runtimes found'}; {counts}" + (
        f" ({errors})" if errors else ""
    )


image_work = ImageWorkRunner()


def process_image_builds(
    sessions: sessionmaker[Session], settings: Settings, engine: ImageEngine | None = None
) -> list[int]:
    """The worker loop's call: start queued image builds and inspections (each in its
    own thread, so this returns at once) and look after the ones under way. Never
    raises: a problem here must not stop the worker from moving runs."""
    try:
        return image_work.tick(sessions, settings, engine)
    except Exception as exc:
        log.warning("Image builds: this pass failed, trying again next time: %s", exc,
                    exc_info=True)
        return []
