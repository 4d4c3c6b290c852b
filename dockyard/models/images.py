"""The image catalog: which container images notebooks and jobs may use."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Enum, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from dockyard.models.base import Base, utcnow


class ImageStatus(enum.StrEnum):
    REGISTERED = "registered"
    BUILDING = "building"
    READY = "ready"
    FAILED = "failed"
    RETIRED = "retired"


class Image(Base):
    __tablename__ = "images"

    id: Mapped[int] = mapped_column(primary_key=True)
    reference: Mapped[str] = mapped_column(String(255), unique=True)
    digest: Mapped[str | None] = mapped_column(String(80))
    description: Mapped[str] = mapped_column(Text, default="")
    # BIGINT: images pass 2 GiB (the notebook image is 2.17 GB), INTEGER's limit.
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[ImageStatus] = mapped_column(
        Enum(ImageStatus, native_enum=False, length=20), default=ImageStatus.REGISTERED
    )
    for_notebooks: Mapped[bool] = mapped_column(default=False)
    for_jobs: Mapped[bool] = mapped_column(default=False)
    default_for_notebooks: Mapped[bool] = mapped_column(default=False)
    default_for_jobs: Mapped[bool] = mapped_column(default=False)
    profiles: Mapped[list[str]] = mapped_column(JSON, default=list)
    build_context: Mapped[str | None] = mapped_column(String(512))
    build_log: Mapped[str] = mapped_column(Text, default="")
    # Why the image failed, or what the worker is doing with it; shown next to the status.
    status_detail: Mapped[str] = mapped_column(Text, default="")
    # Work the web app asked the worker to do ("build" or "inspect"), oldest first.
    # The worker clears it when it claims the work; a null means nothing is waiting.
    work_queued: Mapped[str | None] = mapped_column(String(16), index=True)
    work_queued_at: Mapped[datetime | None]
    build_started_at: Mapped[datetime | None]
    build_finished_at: Mapped[datetime | None]
    # Touched by the worker while it builds or inspects, so a build whose worker died
    # can be told apart from a long quiet build step.
    worker_heartbeat_at: Mapped[datetime | None]
    inspected_at: Mapped[datetime | None]
    contents: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    events: Mapped[list[ImageEvent]] = relationship(
        back_populates="image", order_by="ImageEvent.id", cascade="all, delete-orphan"
    )


class ImageEvent(Base):
    """Every admin change to an image: who, what, when."""

    __tablename__ = "image_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(40))
    detail: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(default=utcnow)

    image: Mapped[Image] = relationship(back_populates="events")


class CuratedImageSeed(Base):
    """A curated image Dockyard has put in the catalog on its own, once per reference.

    Kept apart from ``images`` (whose history goes with a deleted image) so that an image
    an admin deleted or retired is never added again, and so that two processes starting
    at once insert one row: the primary key decides which of them seeds.
    """

    __tablename__ = "curated_image_seeds"

    reference: Mapped[str] = mapped_column(String(255), primary_key=True)
    seeded_at: Mapped[datetime] = mapped_column(default=utcnow)
    # What happened: "registered", or "already in the catalog" (an admin was first).
    outcome: Mapped[str] = mapped_column(String(40))
