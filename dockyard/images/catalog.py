"""Reading the image catalog: which images exist, which a user may choose (for notebooks
or for jobs), what each contains, its history and its build log."""

from __future__ import annotations

from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dockyard.images.errors import ImageNotInCatalog
from dockyard.models import Image, ImageEvent, ImageStatus

Use = Literal["notebooks", "jobs"]
USABLE_STATUSES = (ImageStatus.READY, ImageStatus.REGISTERED)
# What an image's ``work_queued`` asks of the worker.
WORK_BUILD = "build"
WORK_INSPECT = "inspect"
# The versions an inspection reports, in the order pages show them.
VERSION_KEYS = ("os", "python", "r", "java", "spark", "ray")


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


def get_image(session: Session, image_id: int) -> Image:
    image = session.get(Image, image_id)
    if image is None:
        raise ImageNotInCatalog(image_id)
    return image


def all_images(session: Session) -> list[Image]:
    return list(session.scalars(select(Image).order_by(Image.reference)))


def is_offered(image: Image) -> bool:
    """What a non-admin may see: enabled for notebooks or jobs, and usable now."""
    return image.status in USABLE_STATUSES and (image.for_notebooks or image.for_jobs)


def offered_images(session: Session) -> list[Image]:
    return [image for image in all_images(session) if is_offered(image)]


def visible_image(session: Session, image_id: int, *, admin: bool) -> Image:
    """The image if this caller may see it: admins all, users the offered ones (else
    ImageNotInCatalog, as if it did not exist)."""
    image = get_image(session, image_id)
    if not admin and not is_offered(image):
        raise ImageNotInCatalog(image_id)
    return image


def events_of(session: Session, image: Image) -> list[ImageEvent]:
    query = select(ImageEvent).where(ImageEvent.image_id == image.id)
    return list(session.scalars(query.order_by(ImageEvent.id.desc())))


def record(session: Session, image: Image, actor: str, action: str, detail: str = "") -> None:
    """Add to the image's history: who did what."""
    session.add(ImageEvent(image_id=image.id, actor=actor, action=action, detail=detail[:4000]))


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
        raise ImageNotInCatalog(image_id)
    length, text = row
    length = int(length or 0)
    if offset >= length:
        return "", length
    return str(text or ""), length


def build_is_active(image: Image) -> bool:
    """Queued for the worker or being built (an inspection alone does not count)."""
    return image.status == ImageStatus.BUILDING or image.work_queued == WORK_BUILD
