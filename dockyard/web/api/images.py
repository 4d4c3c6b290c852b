"""REST API: the image catalog.

Everyone may list the images they can choose (enabled for notebooks or jobs, and
usable); admins see every image and may register, build, change, retire and delete.
Builds and inspections are done by the worker; this API records the request and offers
the build log incrementally (``GET images/{id}/build-log?offset=N``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from flask import request
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from dockyard.images.catalog import (
    all_images,
    build_is_active,
    build_log_since,
    events_of,
    get_image,
    offered_images,
    versions_of,
    visible_image,
)
from dockyard.images.commands import ImageChanges, NewImage, change_image, delete_unused_image
from dockyard.images.diff import image_diff
from dockyard.images.sources import describe_source
from dockyard.images.usage import ImageUsage, usage_now
from dockyard.models import MAX_ID, Image, ImageEvent
from dockyard.web.api import registry, route
from dockyard.web.context import db, settings, write_sessions_of_app
from dockyard.web.errors import ApiError
from dockyard.web.image_requests import (
    CreateImage,
    acting_admin,
    build_from_request,
    caller,
    create_from_request,
)

TAG = "images"


# -- models ----------------------------------------------------------------------------


class ImageEventOut(BaseModel):
    at: datetime
    actor: str
    action: str
    detail: str


class ImageUsageOut(BaseModel):
    servers: list[str] | None = Field(
        description="Running notebook servers ('user' or 'user/server'); null when the hub "
        "and the engine could not be asked."
    )
    runs: list[dict[str, Any]] = Field(description="Unfinished runs using the image.")
    definitions: list[dict[str, Any]] = Field(description="Job definitions naming the image.")


class ImageOut(BaseModel):
    id: int
    reference: str
    digest: str | None
    size_bytes: int | None
    description: str
    status: str
    status_detail: str
    for_notebooks: bool
    for_jobs: bool
    default_for_notebooks: bool
    default_for_jobs: bool
    profiles: list[str]
    build_source: str | None
    building: bool
    created_by: str
    created_at: datetime
    updated_at: datetime
    inspected_at: datetime | None
    versions: dict[str, str | None]
    kernels: list[str]
    contents: dict[str, Any] | None = Field(
        None, description="Everything the inspection found (single-image answers only)."
    )
    usage: ImageUsageOut | None = Field(None, description="Who uses it now (admins only).")
    events: list[ImageEventOut] | None = Field(
        None, description="Every change: who, what, when (admins, single-image answers)."
    )


class ImageList(BaseModel):
    images: list[ImageOut]


class ImageListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    use: Literal["notebooks", "jobs"] | None = Field(
        None, description="Only images enabled for this use."
    )


class ImagePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str | None = Field(None, max_length=2000)
    for_notebooks: StrictBool | None = None
    for_jobs: StrictBool | None = None
    default_for_notebooks: StrictBool | None = Field(
        None, description="true makes it the default (unsetting the previous default)."
    )
    default_for_jobs: StrictBool | None = None
    profiles: list[str] | None = None
    status: Literal["retired", "active"] | None = Field(
        None, description="'retired': no new servers or runs; 'active': unretire."
    )


class BuildRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    directory: str | None = Field(
        None,
        description="Image directory (images/NAME) to build from; omitted: the image's last "
        "source. Or send multipart/form-data with files 'dockerfile' and/or 'context'.",
    )


class BuildLogQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    offset: int = Field(0, ge=0, description="Characters already read.")


class BuildLogOut(BaseModel):
    image_id: int
    offset: int
    next_offset: int
    text: str
    status: str
    building: bool


class DiffQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: int = Field(alias="from", ge=1, le=MAX_ID, description="The older image's id.")
    to: int = Field(ge=1, le=MAX_ID, description="The newer image's id.")


class PackageChanges(BaseModel):
    added: list[dict[str, str]]
    removed: list[dict[str, str]]
    changed: list[dict[str, str]]
    unchanged: int


class ImageDiffOut(BaseModel):
    from_image: str
    to_image: str
    versions: list[dict[str, str | None]]
    kernels: dict[str, list[str]]
    pip_packages: PackageChanges
    r_packages: PackageChanges


# -- answers ----------------------------------------------------------------------------


def image_out(
    image: Image,
    *,
    usage: ImageUsage | None = None,
    events: list[ImageEvent] | None = None,
    full: bool = False,
) -> ImageOut:
    contents = image.contents or {}
    return ImageOut(
        id=image.id,
        reference=image.reference,
        digest=image.digest,
        size_bytes=image.size_bytes,
        description=image.description or "",
        status=image.status.value,
        status_detail=image.status_detail or "",
        for_notebooks=image.for_notebooks,
        for_jobs=image.for_jobs,
        default_for_notebooks=image.default_for_notebooks,
        default_for_jobs=image.default_for_jobs,
        profiles=list(image.profiles or []),
        build_source=describe_source(image.build_context) if image.build_context else None,
        building=build_is_active(image),
        created_by=image.created_by,
        created_at=image.created_at,
        updated_at=image.updated_at,
        inspected_at=image.inspected_at,
        versions=versions_of(image),
        kernels=sorted((contents.get("kernels") or {}).keys()),
        contents=contents if full else None,
        usage=(
            ImageUsageOut(servers=usage.servers, runs=usage.runs, definitions=usage.definitions)
            if usage is not None
            else None
        ),
        events=(
            [
                ImageEventOut(at=e.at, actor=e.actor, action=e.action, detail=e.detail)
                for e in events
            ]
            if events is not None
            else None
        ),
    )


def _form_or_json_create() -> tuple[NewImage, str | None]:
    if request.is_json:
        payload = request.get_json(silent=True)
        if payload is None:
            raise ApiError(400, "Malformed JSON", "The request body is not valid JSON.")
        body = CreateImage.model_validate(payload)
    elif request.mimetype == "multipart/form-data":
        form = request.form
        body = CreateImage.model_validate(
            {
                "reference": form.get("reference", ""),
                "description": form.get("description", ""),
                "for_notebooks": form.get("for_notebooks") in ("true", "on", "1"),
                "for_jobs": form.get("for_jobs") in ("true", "on", "1"),
                "profiles": [p for p in form.getlist("profiles") if p],
                "build_from": form.get("build_from") or None,
            }
        )
    else:
        raise ApiError(
            415,
            "Expected JSON or a form",
            "Send JSON, or multipart/form-data to upload a Dockerfile and context.",
        )
    return body.new_image(), body.build_from


# -- routes ----------------------------------------------------------------------------


@route("/images", tag=TAG, query=ImageListQuery, response=ImageList)
def list_images(query: ImageListQuery) -> ImageList:
    """The image catalog.

    Admins see every image with who uses it; other users see the images they may
    choose (enabled and usable), read-only.
    """
    user = caller()
    session = db()
    images = all_images(session) if user.admin else offered_images(session)
    if query.use:
        images = [i for i in images if getattr(i, f"for_{query.use}")]
    if not user.admin:
        return ImageList(images=[image_out(image) for image in images])
    usage = usage_now(session, settings(), images)
    return ImageList(images=[image_out(i, usage=usage[i.reference]) for i in images])


@route("/images", "POST", tag=TAG, response=ImageOut, status=201, admin=True,
       responses={404: "The engine has no image by that name",
                  409: "The image is already in the catalog"})
def create_image(**_: Any) -> Any:
    """Register an image the engine has, or build a new one.

    JSON: ``{"reference": ...}`` registers an existing image (404 when the engine has
    none by that name); with ``"build_from": "NAME"`` builds images/NAME. A
    multipart/form-data request with files ``dockerfile`` and/or ``context`` builds the
    upload. Builds and the inspection run in the worker; follow ``build-log``.
    """
    actor = acting_admin()
    new, build_from = _form_or_json_create()
    image = create_from_request(new, build_from, actor)
    return image_out(image, full=True)


# The body may be JSON or multipart; the handler parses it, the document shows the JSON.
registry.operations[-1].body = CreateImage


@route("/images/diff", tag=TAG, query=DiffQuery, response=ImageDiffOut,
       responses={404: "No such image in the catalog (or not offered to you)"})
def diff_images(query: DiffQuery) -> ImageDiffOut:
    """What changed between two images: versions, kernels, pip and R packages."""
    return ImageDiffOut(**image_diff(db(), query.from_, query.to, admin=caller().admin))


@route("/images/<int:image_id>", tag=TAG, response=ImageOut)
def get_image_route(image_id: int) -> ImageOut:
    """One image, with what it contains; for admins also who uses it and its history."""
    user = caller()
    session = db()
    image = visible_image(session, image_id, admin=user.admin)
    if not user.admin:
        return image_out(image, full=True)
    usage = usage_now(session, settings(), [image])[image.reference]
    return image_out(image, usage=usage, events=events_of(session, image), full=True)


@route("/images/<int:image_id>", "PATCH", tag=TAG, body=ImagePatch, response=ImageOut, admin=True,
       responses={409: "Not possible in the image's state (retired, building, unusable)"})
def patch_image(image_id: int, body: ImagePatch) -> ImageOut:
    """Change description, uses, defaults, profiles; retire or unretire."""
    actor = acting_admin()
    changes = ImageChanges(
        description=body.description,
        for_notebooks=body.for_notebooks,
        for_jobs=body.for_jobs,
        default_for_notebooks=body.default_for_notebooks,
        default_for_jobs=body.default_for_jobs,
        profiles=tuple(body.profiles) if body.profiles is not None else None,
        status=body.status,
    )
    image = change_image(write_sessions_of_app(), settings(), image_id, changes, actor=actor)
    return image_out(image, events=events_of(db(), image), full=True)


@route("/images/<int:image_id>", "DELETE", tag=TAG, status=204, admin=True,
       responses={409: "Notebook servers, runs or definitions still use it"})
def delete_image_route(image_id: int) -> Any:
    """Remove an image from the catalog; 409 naming who uses it while anything does."""
    delete_unused_image(db(), write_sessions_of_app(), settings(), image_id,
                        actor=acting_admin())
    return "", 204


@route("/images/<int:image_id>/build", "POST", tag=TAG, response=ImageOut, status=202, admin=True,
       responses={409: "The image is retired or already building"})
def build_image(image_id: int, **_: Any) -> Any:
    """Build (or rebuild) the image in the worker.

    JSON ``{"directory": "NAME"}`` builds images/NAME; an empty body rebuilds from the
    last source; multipart/form-data with files ``dockerfile`` and/or ``context``
    builds the upload. Follow ``build-log``.
    """
    actor = acting_admin()
    directory = None
    if request.is_json:
        payload = request.get_json(silent=True)
        if payload is None:
            raise ApiError(400, "Malformed JSON", "The request body is not valid JSON.")
        directory = BuildRequest.model_validate(payload).directory
    elif request.mimetype == "multipart/form-data":
        directory = request.form.get("directory") or None
    image = build_from_request(image_id, directory, actor)
    return image_out(image, full=True)


registry.operations[-1].body = BuildRequest


@route(
    "/images/<int:image_id>/build-log", tag=TAG, query=BuildLogQuery, response=BuildLogOut,
    admin=True,
)
def build_log(image_id: int, query: BuildLogQuery) -> BuildLogOut:
    """The build log from ``offset`` on; ask again with ``next_offset`` while
    ``building`` is true."""
    session = db()
    text, next_offset = build_log_since(session, image_id, query.offset)
    image = get_image(session, image_id)
    return BuildLogOut(
        image_id=image_id,
        offset=min(query.offset, next_offset),
        next_offset=next_offset,
        text=text,
        status=image.status.value,
        building=build_is_active(image),
    )
