"""The images a notebook server may start from, as the spawner sees them: plain values, and
the small interface (``ImageSource``) it reads them through.

The spawner does not know where the images are listed; the hub configuration hands it an
``ImageSource`` (Dockyard's catalog, ``hub/notebook_images.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class NotebookImage:
    reference: str
    description: str
    default: bool = False
    # Profile names an admin allowed with this image; empty means every profile.
    profiles: tuple[str, ...] = ()


class ImageNotOffered(Exception):
    """No notebook may start from this image now; the message says why, for the user."""


@runtime_checkable
class ImageSource(Protocol):
    """Where the images on offer come from. Asked on every spawn page and every start
    (from a worker thread: the calls may block), so a change applies to the next request."""

    def offered(self) -> list[NotebookImage]:
        """Images for the spawn page, the default first; empty when none may start."""
        ...

    def resolve(self, reference: str) -> NotebookImage:
        """The image named ``reference`` if a notebook may start from it now, else
        ``ImageNotOffered`` with a message the user can act on."""
        ...
