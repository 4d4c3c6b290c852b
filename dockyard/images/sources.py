"""Where a build comes from, as the catalog stores it: ``images/NAME`` (one of the
project's image directories) or ``upload:FILE`` (a checked upload, kept in the home
directory until the image is built again from elsewhere or deleted)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import IO

from dockyard.images.context import ContextRejected, assemble_upload, check_image_directory
from dockyard.images.engine import ImageEngine
from dockyard.images.errors import InvalidImageInput
from dockyard.settings import Settings

DIRECTORY_PREFIX = "images/"
UPLOAD_PREFIX = "upload:"


def directory_source(name: str, engine: ImageEngine) -> str:
    """The build source for images/NAME, after checking it is one of ours and confined."""
    try:
        check_image_directory(name, engine.buildable_directories())
    except ContextRejected as exc:
        raise InvalidImageInput(exc.field, exc.message) from None
    return DIRECTORY_PREFIX + name


def store_upload(
    settings: Settings, *, dockerfile: IO[bytes] | None, archive: IO[bytes] | None,
    max_bytes: int,
) -> str:
    """Check an uploaded Dockerfile and/or context archive, keep it for the worker as one
    tar, and return its build source."""
    path = uploads_dir(settings) / f"context-{secrets.token_hex(8)}.tar"
    try:
        assemble_upload(path, dockerfile=dockerfile, archive=archive, max_bytes=max_bytes)
    except ContextRejected as exc:
        raise InvalidImageInput(exc.field, exc.message) from None
    return UPLOAD_PREFIX + path.name


def describe_source(source: str | None) -> str:
    if not source:
        return "nothing (registered)"
    if source.startswith(UPLOAD_PREFIX):
        return "an uploaded Dockerfile/context"
    return source


def uploads_dir(settings: Settings) -> Path:
    return settings.home / "image-builds"


def uploaded_archive(settings: Settings, source: str) -> Path:
    """The file an ``upload:`` source names, never outside the uploads directory (only
    the name is taken, whatever the stored source says)."""
    return uploads_dir(settings) / Path(source[len(UPLOAD_PREFIX) :]).name


def forget_upload(settings: Settings, source: str | None) -> None:
    """Remove the file of an ``upload:`` source (nothing for other sources)."""
    if source and source.startswith(UPLOAD_PREFIX):
        uploaded_archive(settings, source).unlink(missing_ok=True)
