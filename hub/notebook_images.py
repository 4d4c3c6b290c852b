"""What the notebook spawner may offer: the catalog's notebook images, read live.

``NotebookImages`` is the spawner's ``ImageSource`` over Dockyard's database, handed to it
by the hub configuration (``hub/spawners.py``). The spawner runs inside the hub process and
asks here on every spawn page and every start, so an admin's change in the catalog applies
to the next request without a hub restart. This is the one place the notebook side reads
Dockyard's database; the spawner gets plain values back, never ORM objects or a session.
"""

from __future__ import annotations

import functools

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dockyard.db import make_engine, make_session_factory
from dockyard.images import catalog
from dockyard.images.catalog import default_image, resolve_image, usable_images
from dockyard.models import Image
from spawner.notebooks.images import ImageNotOffered, ImageSource, NotebookImage


class NotebookImages(ImageSource):
    """The images a user may start a notebook server from.

    Until an admin enables a notebook image in the catalog, the configured fallback
    image (``DOCKYARD_NOTEBOOK_IMAGE``) is offered alone, so a fresh install works.
    """

    def __init__(self, db_url: str, fallback_image: str) -> None:
        self.db_url = db_url
        self.fallback_image = fallback_image

    def offered(self) -> list[NotebookImage]:
        """Images for the spawn page, the default first; empty when none may start."""
        with _sessions(self.db_url)() as session:
            rows = usable_images(session, "notebooks")
            chosen = default_image(session, "notebooks")
            images = [_plain(row, default=chosen is not None and row.id == chosen.id)
                      for row in rows]
            if not images:
                # The fallback stands in for an empty catalog, not for one in which an
                # admin retired or disabled it.
                listed = session.scalar(select(Image.id).where(
                    Image.reference == self.fallback_image))
                return [] if listed is not None else [self._fallback()]
        if not any(image.default for image in images):
            images[0] = _plain_default(images[0])
        return sorted(images, key=lambda image: not image.default)

    def resolve(self, reference: str) -> NotebookImage:
        """The image named ``reference`` if a notebook may start from it now, else
        ImageNotOffered with a message the user can act on."""
        with _sessions(self.db_url)() as session:
            known = session.scalar(select(Image.id).where(Image.reference == reference))
            if known is None and not usable_images(session, "notebooks"):
                if reference == self.fallback_image:
                    return self._fallback()
                raise ImageNotOffered(
                    f"Image '{reference}' is not offered for notebooks; the only image "
                    f"available is '{self.fallback_image}'."
                )
            chosen = default_image(session, "notebooks")
            try:
                row = resolve_image(session, reference, "notebooks")
            except catalog.ImageNotAllowed as exc:
                raise ImageNotOffered(str(exc)) from None
            return _plain(row, default=chosen is not None and chosen.id == row.id)

    def _fallback(self) -> NotebookImage:
        return NotebookImage(
            self.fallback_image,
            "Dockyard's standard notebook image (no image is enabled in the catalog yet).",
            default=True,
        )


def _plain(row: Image, *, default: bool) -> NotebookImage:
    return NotebookImage(row.reference, row.description or "", default, tuple(row.profiles or ()))


def _plain_default(image: NotebookImage) -> NotebookImage:
    return NotebookImage(image.reference, image.description, True, image.profiles)


@functools.cache
def _sessions(db_url: str) -> sessionmaker[Session]:
    # One engine per hub process: the spawner asks from a thread pool, and SQLAlchemy's
    # pool hands each thread its own connection.
    return make_session_factory(make_engine(db_url))
