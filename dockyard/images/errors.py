"""What the image catalog refuses, each a kind of ``dockyard.errors`` refusal.

A subclass names its kind first, so that its kind gives the status; ``error`` is the
short name the API sends and the pages show.
"""

from __future__ import annotations

from typing import Any

from dockyard.errors import Conflict, DockyardError, Invalid, NotFound, Unavailable


class ImageRefused(DockyardError):
    """Base of the catalog's refusals (for callers that catch them all); never raised
    itself."""


class InvalidImageInput(Invalid, ImageRefused):
    """One field of an admin's request cannot be used; ``detail`` is a field-level list
    like the API's validation errors."""

    error = "Invalid input"

    def __init__(self, field: str, message: str) -> None:
        super().__init__([{"field": field, "message": message}])


class ImageNotInCatalog(NotFound, ImageRefused):
    """No such image, or one this user may not see: the two are never told apart."""

    error = "Not Found"

    def __init__(self, image_id: int) -> None:
        super().__init__(f"No image #{image_id} in the catalog.")


class NotOnEngine(NotFound, ImageRefused):
    error = "Image not on the engine"


class NoEngine(Unavailable, ImageRefused):
    error = "No Docker engine"


class AlreadyInCatalog(Conflict, ImageRefused):
    error = "Already in the catalog"


class ImageRetired(Conflict, ImageRefused):
    error = "Image retired"


class BuildAlreadyQueued(Conflict, ImageRefused):
    """A build was asked for while one waits for the worker or runs."""

    error = "Build already under way"


class BuildUnderWay(Conflict, ImageRefused):
    """Retire or delete was asked for while the image is being built."""

    error = "Build under way"


class NotUsable(Conflict, ImageRefused):
    error = "Not usable"


class ImageInUse(Conflict, ImageRefused):
    """``detail`` is ``{"message", "servers", "runs", "definitions"}``."""

    error = "Image in use"

    def __init__(self, detail: dict[str, Any]) -> None:
        super().__init__(detail)


class CannotCheckServers(Unavailable, ImageRefused):
    error = "Cannot check notebook servers"
