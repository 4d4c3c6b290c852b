"""Which images a user may choose, for notebooks or for jobs."""

from __future__ import annotations

from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from dockyard.models import Image, ImageStatus

Use = Literal["notebooks", "jobs"]
USABLE_STATUSES = (ImageStatus.READY, ImageStatus.REGISTERED)


class ImageNotAllowed(Exception):
    """The image is unknown, retired, or not enabled for this use."""


def usable_images(session: Session, use: Use) -> list[Image]:
    flag = Image.for_notebooks if use == "notebooks" else Image.for_jobs
    query = select(Image).where(flag.is_(True), Image.status.in_(USABLE_STATUSES))
    return list(session.scalars(query.order_by(Image.reference)))


def resolve_image(session: Session, reference: str, use: Use) -> Image:
    """The catalog entry for ``reference`` if it may be used for ``use``, else a clear error."""
    image = session.scalar(select(Image).where(Image.reference == reference))
    if image is None:
        raise ImageNotAllowed(f"Image '{reference}' is not in Dockyard's catalog; "
                              "choose one of the images offered, or ask an admin to add it.")
    if image.status == ImageStatus.RETIRED:
        raise ImageNotAllowed(f"Image '{reference}' is retired; choose another image.")
    enabled = image.for_notebooks if use == "notebooks" else image.for_jobs
    if not enabled or image.status not in USABLE_STATUSES:
        raise ImageNotAllowed(f"Image '{reference}' is not enabled for {use}.")
    return image


def default_image(session: Session, use: Use) -> Image | None:
    flag = Image.default_for_notebooks if use == "notebooks" else Image.default_for_jobs
    return session.scalar(select(Image).where(flag.is_(True), Image.status.in_(USABLE_STATUSES)))
