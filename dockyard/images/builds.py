"""The worker's image builds and inspections: claiming what admins queued, running it in
a thread of its own, and writing the engine's progress into the image's build log.

Builds and inspections never run in a web request: the request marks the image
(``work_queued``) and the worker claims the mark with a compare-and-swap update, then
builds in a thread of its own so that runs keep being dispatched meanwhile, appending
the engine's progress lines to ``build_log`` and committing every half second so that a
page polling the log sees the build advance.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from dockyard.images.catalog import VERSION_KEYS, WORK_BUILD, WORK_INSPECT, record
from dockyard.images.context import ContextRejected, check_image_directory
from dockyard.images.engine import ImageEngine, image_engine
from dockyard.images.sources import (
    DIRECTORY_PREFIX,
    UPLOAD_PREFIX,
    describe_source,
    uploaded_archive,
)
from dockyard.models import Image, ImageEvent, ImageStatus, utcnow
from dockyard.settings import Settings
from spawner.images.facts import BuildFailed, EngineUnavailable

if TYPE_CHECKING:  # the web app never imports docker
    from spawner.images.inspect import LeftoverInspection

log = logging.getLogger(__name__)

WORKER_ACTOR = "dockyard-worker"
BUILD_LOG_MAX_CHARS = 4 * 1024 * 1024
LOG_FLUSH_SECONDS = 0.5
LOG_FLUSH_CHARS = 16 * 1024
HEARTBEAT_SECONDS = 10.0
# A build or inspection whose worker has not been heard of for this long is abandoned.
STALE_AFTER = timedelta(seconds=120)


class _BuildLog:
    """Collects progress lines and appends them to the image's build_log in chunks,
    committing each so that another process's reader sees them."""

    def __init__(self, writes: sessionmaker[Session], image_id: int) -> None:
        self.writes = writes
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
        with self.writes() as session:
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
    inspection containers carry them, so that its next start finds what it left. Its
    methods take write sessions (dockyard.db.write_sessions): the runner reads then
    writes, while the web app and other threads write too.
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
        writes: sessionmaker[Session],
        settings: Settings,
        engine: ImageEngine | None = None,
    ) -> list[int]:
        """One pass: keep our work's heartbeat, give up abandoned work, start what is
        queued while there is room. Returns the ids of images whose work started."""
        with self._lock:
            self.active = {i: t for i, t in self.active.items() if t.is_alive()}
            now = time.monotonic()
            if now - self._last_heartbeat >= HEARTBEAT_SECONDS:
                self._last_heartbeat = now
                self._heartbeat(writes)
                self._give_up_abandoned(writes)
            started: list[int] = []
            while len(self.active) < settings.image_builds_at_once:
                claim = self._claim_next(writes)
                if claim is None:
                    break
                thread = threading.Thread(
                    target=self._work,
                    args=(writes, settings, engine or self.engine(settings), claim),
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
        self, writes: sessionmaker[Session], settings: Settings,
        engine: ImageEngine | None = None,
    ) -> list[int]:
        """At the worker's start: remove the inspection containers that stopped workers of
        this installation left on the engine, and settle the images whose inspection this
        worker's own stop cut short, at once rather than when their heartbeat goes stale
        (``_give_up_abandoned`` settles other workers' abandoned work). Returns the ids of
        the images settled."""
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
                    and self._settle_cut_short(writes, image_id, leftover):
                settled.append(image_id)
        return settled

    def _settle_cut_short(self, writes: sessionmaker[Session], image_id: int,
                          leftover: LeftoverInspection) -> bool:
        """An inspection of ours ended with our stop: inspect a registered image again
        (nothing about it is lost), fail a build that was being inspected (its log says
        how far it got; the admin builds again, as for any build a stopped worker left)."""
        with writes() as session:
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
    def _claim_next(self, writes: sessionmaker[Session]) -> _Claim | None:
        with writes() as session:
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

    def _heartbeat(self, writes: sessionmaker[Session]) -> None:
        if not self.active:
            return
        with writes() as session:
            session.execute(
                update(Image)
                .where(Image.id.in_(list(self.active)))
                .values(worker_heartbeat_at=utcnow())
            )
            session.commit()

    def _give_up_abandoned(self, writes: sessionmaker[Session]) -> None:
        """Work claimed by a worker that stopped: a build fails (its log says how far it
        got), an inspection is queued again."""
        cutoff = utcnow() - STALE_AFTER
        mine = list(self.active)
        with writes() as session:
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
        self, writes: sessionmaker[Session], settings: Settings, engine: ImageEngine,
        claim: _Claim,
    ) -> None:
        try:
            if claim.work == WORK_BUILD:
                self._build(writes, settings, engine, claim)
            else:
                self._inspect(writes, engine, claim)
        except Exception:  # a thread must record its failure, not vanish with it
            log.exception("Image %s work '%s' failed", claim.reference, claim.work)
            self._finish_failed(writes, claim, "Internal error in the worker; see its log.")

    def _build(
        self, writes: sessionmaker[Session], settings: Settings, engine: ImageEngine,
        claim: _Claim,
    ) -> None:
        build_log = _BuildLog(writes, claim.image_id)
        labels = {"org.dockyard.catalog-image": str(claim.image_id)}
        source = claim.source or ""
        build_log.write(f"Building {claim.reference} from {describe_source(source)}\n")
        try:
            if source.startswith(UPLOAD_PREFIX):
                archive = uploaded_archive(settings, source)
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
            self._finish_failed(writes, claim, f"Build failed: {exc}")
            return
        build_log.flush()
        with writes() as session:
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
        self, writes: sessionmaker[Session], engine: ImageEngine, claim: _Claim
    ) -> None:
        try:
            facts = engine.facts(claim.reference)
        except EngineUnavailable as exc:
            self._finish_failed(writes, claim, f"Cannot inspect: {exc}")
            return
        if facts is None:
            self._finish_failed(writes, claim, "The image is no longer on the Docker engine.")
            return
        contents = _inspect_tolerantly(engine, claim.reference, claim.image_id)
        with writes() as session:
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

    def _finish_failed(self, writes: sessionmaker[Session], claim: _Claim, reason: str) -> None:
        with writes() as session:
            image = session.get(Image, claim.image_id)
            if image is None or image.status == ImageStatus.RETIRED:
                return
            image.status = ImageStatus.FAILED
            image.status_detail = reason[:2000]
            if claim.work == WORK_BUILD:
                image.build_finished_at = utcnow()
            record(session, image, WORKER_ACTOR, f"{claim.work} failed", reason)
            session.commit()


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
