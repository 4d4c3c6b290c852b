"""Image catalog pages: admins manage the catalog; users see what they may choose.

Parse, call the catalog (dockyard.images), render. Builds run in the worker; the image
page polls the build log with htmx (``hx-get`` on a placeholder that replaces itself with
the new text and the next placeholder), so a reload simply resumes from the stored log.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, redirect, render_template, request, url_for
from pydantic import ValidationError

from dockyard.errors import DockyardError, Invalid, NotFound
from dockyard.images.catalog import (
    all_images,
    build_is_active,
    build_log_since,
    events_of,
    get_image,
    offered_images,
    visible_image,
)
from dockyard.images.commands import ImageChanges, change_image, delete_unused_image
from dockyard.images.curated import curated_reference
from dockyard.images.diff import image_diff
from dockyard.images.engine import image_engine
from dockyard.images.sources import describe_source
from dockyard.images.usage import usage_now
from dockyard.web.auth import page_login_required, require_admin
from dockyard.web.context import db, settings, write_sessions_of_app
from dockyard.web.errors import ApiError, status_of, validation_detail
from dockyard.web.image_requests import (
    CreateImage,
    acting_admin,
    build_from_request,
    caller,
    create_from_request,
)
from dockyard.web.jobs import url_number

bp = Blueprint("images", __name__, url_prefix="/images")

LOG_POLL_SECONDS = 1


@bp.app_template_filter("image_size")
def image_size(size: int | None) -> str:
    if not size:
        return "—"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


@bp.app_template_filter("image_source")
def image_source(source: str | None) -> str:
    return describe_source(source)


def buildable_directories() -> dict[str, str]:
    """images/NAME directories an admin may build, with what each image is."""
    return image_engine(settings()).buildable_directories()


def _checked(form_value: str | None) -> bool:
    return form_value in ("on", "true", "1", "yes")


# A refusal a page shows above its form: the catalog's, or the upload's size (ApiError).
Refusal = DockyardError | ApiError


def _status(exc: Refusal) -> int:
    return exc.status if isinstance(exc, ApiError) else status_of(exc)


def _problem(exc: Refusal) -> list[str]:
    """The refusal's detail as lines for a page."""
    detail = exc.detail
    if isinstance(detail, list):
        return [f"{item['field']}: {item['message']}" for item in detail]
    if isinstance(detail, dict):
        return [str(detail.get("message", exc.error))]
    return [str(detail or exc.error)]


@bp.get("/")
@page_login_required
def images_page() -> Any:
    user = caller()
    session = db()
    if not user.admin:
        return render_template("images/offered.html", images=offered_images(session))
    images = all_images(session)
    return render_template(
        "images/list.html", images=images, usage=usage_now(session, settings(), images),
        curated_image=curated_reference(settings()),
    )


@bp.get("/new")
@page_login_required
def new_image_page() -> Any:
    require_admin()
    return _render_new()


def _render_new(errors: list[str] | None = None, status: int = 200, **values: Any) -> Any:
    return (
        render_template(
            "images/new.html",
            directories=buildable_directories(),
            profiles=settings().notebook_profiles,
            upload_max_mb=settings().image_upload_max_mb,
            errors=errors or [],
            values=values,
        ),
        status,
    )


@bp.post("/new")
@page_login_required
def create_image_page() -> Any:
    actor = acting_admin()
    form = request.form
    mode = form.get("mode", "register")
    values = {
        "reference": form.get("reference", ""),
        "description": form.get("description", ""),
        "for_notebooks": _checked(form.get("for_notebooks")),
        "for_jobs": _checked(form.get("for_jobs")),
        "profiles": [p for p in form.getlist("profiles") if p],
        "build_from": (form.get("build_from") or None) if mode == "directory" else None,
    }
    try:
        body = CreateImage.model_validate(values)
        if mode == "upload" and not request.files:
            raise Invalid(
                [{"field": "dockerfile", "message": "choose a Dockerfile or a context archive"}]
            )
        if mode == "directory" and not body.build_from:
            raise Invalid([{"field": "build_from", "message": "choose an image directory"}])
        image = create_from_request(body.new_image(), body.build_from, actor)
    except ValidationError as exc:
        lines = [f"{d['field']}: {d['message']}" for d in validation_detail(exc)]
        return _render_new(lines, 422, mode=mode, **values)
    except (DockyardError, ApiError) as exc:
        return _render_new(_problem(exc), _status(exc), mode=mode, **values)
    return redirect(url_for("images.image_page", image_id=image.id), code=303)


@bp.get("/<int:image_id>")
@page_login_required
def image_page(image_id: int) -> Any:
    return _render_image(image_id)


def _render_image(image_id: int, errors: list[str] | None = None, status: int = 200) -> Any:
    user = caller()
    session = db()
    try:
        image = visible_image(session, image_id, admin=user.admin)
    except NotFound as exc:
        return render_template("error.html", status=404, error="Not Found",
                               detail=exc.detail), 404
    context: dict[str, Any] = {"image": image, "errors": errors or [], "admin": user.admin}
    if user.admin:
        context.update(
            usage=usage_now(session, settings(), [image])[image.reference],
            events=events_of(session, image),
            building=build_is_active(image),
            log_length=len(image.build_log or ""),
            directories=buildable_directories(),
            profiles=settings().notebook_profiles,
            upload_max_mb=settings().image_upload_max_mb,
            others=[i for i in all_images(session) if i.id != image.id],
        )
    else:
        context["others"] = [i for i in offered_images(session) if i.id != image.id]
    return render_template("images/detail.html", **context), status


@bp.post("/<int:image_id>/settings")
@page_login_required
def change_image_page(image_id: int) -> Any:
    actor = acting_admin()
    form = request.form
    changes = ImageChanges(
        description=form.get("description", ""),
        for_notebooks=_checked(form.get("for_notebooks")),
        for_jobs=_checked(form.get("for_jobs")),
        default_for_notebooks=_checked(form.get("default_for_notebooks")),
        default_for_jobs=_checked(form.get("default_for_jobs")),
        profiles=tuple(p for p in form.getlist("profiles") if p),
    )
    return _change(image_id, changes, actor)


@bp.post("/<int:image_id>/retire")
@page_login_required
def retire_image_page(image_id: int) -> Any:
    return _change(image_id, ImageChanges(status="retired"), acting_admin())


@bp.post("/<int:image_id>/unretire")
@page_login_required
def unretire_image_page(image_id: int) -> Any:
    return _change(image_id, ImageChanges(status="active"), acting_admin())


def _change(image_id: int, changes: ImageChanges, actor: str) -> Any:
    try:
        change_image(write_sessions_of_app(), settings(), image_id, changes, actor=actor)
    except DockyardError as exc:
        if isinstance(exc, NotFound):
            raise
        return _render_image(image_id, _problem(exc), _status(exc))
    return redirect(url_for("images.image_page", image_id=image_id), code=303)


@bp.post("/<int:image_id>/build")
@page_login_required
def build_image_page(image_id: int) -> Any:
    actor = acting_admin()
    directory = request.form.get("directory") or None
    try:
        build_from_request(image_id, directory, actor)
    except (DockyardError, ApiError) as exc:
        if isinstance(exc, NotFound):
            raise
        return _render_image(image_id, _problem(exc), _status(exc))
    return redirect(url_for("images.image_page", image_id=image_id), code=303)


@bp.post("/<int:image_id>/delete")
@page_login_required
def delete_image_page(image_id: int) -> Any:
    actor = acting_admin()
    try:
        delete_unused_image(db(), write_sessions_of_app(), settings(), image_id, actor=actor)
    except DockyardError as exc:
        if isinstance(exc, NotFound):
            raise
        return _render_image(image_id, _problem(exc), _status(exc))
    return redirect(url_for("images.images_page"), code=303)


@bp.get("/<int:image_id>/log")
@page_login_required
def build_log_fragment(image_id: int) -> Any:
    """The log text after ``offset`` and, while the build goes on, the next poller.
    When the build has finished, the page reloads to show the outcome."""
    require_admin()
    offset = request.args.get("offset", "0")
    offset_value = url_number(offset) or 0
    session = db()
    try:
        text, next_offset = build_log_since(session, image_id, offset_value)
        image = get_image(session, image_id)
    except NotFound as exc:
        return Response(str(exc.detail), status=status_of(exc), mimetype="text/plain")
    building = build_is_active(image)
    html = render_template(
        "images/_log_chunk.html",
        image=image,
        text=text,
        next_offset=next_offset,
        building=building,
        poll_seconds=LOG_POLL_SECONDS,
    )
    response = Response(html, mimetype="text/html")
    if not building:
        response.headers["HX-Refresh"] = "true"
    return response


@bp.get("/diff")
@page_login_required
def diff_page() -> Any:
    user = caller()
    session = db()
    images = all_images(session) if user.admin else offered_images(session)
    chosen_from = request.args.get("from", "")
    chosen_to = request.args.get("to", "")
    diff = None
    errors: list[str] = []
    status = 200
    if chosen_from and chosen_to:
        first, second = url_number(chosen_from), url_number(chosen_to)
        if first is None or second is None:
            errors, status = ["Choose two images to compare."], 422
        else:
            try:
                diff = image_diff(session, first, second, admin=user.admin)
            except DockyardError as exc:
                errors, status = _problem(exc), _status(exc)
    return (
        render_template(
            "images/diff.html",
            images=images,
            chosen_from=chosen_from,
            chosen_to=chosen_to,
            diff=diff,
            errors=errors,
        ),
        status,
    )
