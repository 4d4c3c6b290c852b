"""An image request as the image catalog takes it: who asks, what a new image is, and the
uploaded Dockerfile/context. The API (web/api/images.py) and the pages (web/images.py)
both read their requests through here, so a form and its JSON reach dockyard.images alike.
"""

from __future__ import annotations

from flask import request
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from dockyard.images.commands import NewImage, add_image, build_image_again
from dockyard.images.sources import store_upload
from dockyard.models import Image
from dockyard.web.auth import User, current_user, require_admin
from dockyard.web.context import settings, write_sessions_of_app
from dockyard.web.errors import ApiError


class CreateImage(BaseModel):
    """Register an image the engine has, or (with ``build_from``) build one."""

    model_config = ConfigDict(extra="forbid")

    reference: str = Field(max_length=255, description="e.g. team/spark:2024.06")
    description: str = Field("", max_length=2000)
    for_notebooks: StrictBool = False
    for_jobs: StrictBool = False
    profiles: list[str] = Field(
        default_factory=list, description="Notebook profiles allowed with it; empty: all."
    )
    build_from: str | None = Field(
        None,
        description="Build from this image directory (images/NAME) instead of registering "
        "an image the engine already has. To build from an uploaded Dockerfile and "
        "context, send multipart/form-data with these fields plus files 'dockerfile' "
        "and/or 'context' (tar, tar.gz).",
    )

    def new_image(self) -> NewImage:
        return NewImage(
            reference=self.reference,
            description=self.description,
            for_notebooks=self.for_notebooks,
            for_jobs=self.for_jobs,
            profiles=tuple(self.profiles),
        )


def acting_admin() -> str:
    """The admin making this change, as the image's history names them."""
    return require_admin().name


def caller() -> User:
    user = current_user()
    assert user is not None
    return user


def upload_from_request() -> str | None:
    """The request's uploaded Dockerfile/context, checked and stored for the worker (its
    build source); None when the request carries no files."""
    if not request.files:
        return None
    cap = settings().image_upload_max_mb * 1024 * 1024
    if request.content_length and request.content_length > cap:
        raise ApiError(
            413,
            "Upload too large",
            f"Build uploads are limited to {settings().image_upload_max_mb} MB "
            "(DOCKYARD_IMAGE_UPLOAD_MAX_MB).",
        )
    dockerfile = request.files.get("dockerfile")
    context = request.files.get("context")
    dockerfile = dockerfile if dockerfile is not None and dockerfile.filename else None
    context = context if context is not None and context.filename else None
    if dockerfile is None and context is None:
        return None
    return store_upload(
        settings(),
        dockerfile=dockerfile.stream if dockerfile else None,
        archive=context.stream if context else None,
        max_bytes=cap,
    )


def create_from_request(new: NewImage, build_from: str | None, actor: str) -> Image:
    """Register, or build from a directory or an upload, as the request asks."""
    return add_image(
        write_sessions_of_app(), settings(), new, build_from=build_from,
        upload=upload_from_request(), actor=actor,
    )


def build_from_request(image_id: int, directory: str | None, actor: str) -> Image:
    """Build image ``image_id`` again from the request's upload, else ``directory``, else
    its last source."""
    return build_image_again(
        write_sessions_of_app(), settings(), image_id, directory=directory,
        upload=upload_from_request(), actor=actor,
    )
