"""An admin's page forms on an image that is not in the catalog (deleted in another tab,
a stale link): a 404 page naming the image, never the 500 "Internal error" page, and
nothing recorded or stored on the way."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from dockyard.images.sources import uploads_dir
from dockyard.models import Image, ImageEvent, ImageStatus
from dockyard.settings import Settings

KNOWN, MISSING = 1, 999

FORMS: dict[str, dict[str, Any]] = {
    "settings": {"description": "changed", "for_jobs": "on"},
    "retire": {},
    "unretire": {},
    "build": {"directory": "base"},
    "delete": {},
}


@pytest.fixture
def admin_page(app: Flask) -> Iterator[FlaskClient]:
    """An admin's browser: a session cookie, not a token, so every form needs its CSRF
    token."""
    with app.extensions["dockyard.sessions"]() as session:
        session.add(Image(id=KNOWN, reference="team/known:1", status=ImageStatus.READY,
                          created_by="admin"))
        session.commit()
    client = app.test_client()
    with client.session_transaction() as session:
        session["token"] = "tok-admin"
    yield client


def _csrf_token(client: FlaskClient) -> str:
    page = client.get("/images/").get_data(as_text=True)
    return page.split('name="csrf-token" content="')[1].split('"')[0]


def _catalog(app: Flask) -> tuple[int, int]:
    with app.extensions["dockyard.sessions"]() as session:
        images = session.scalar(select(func.count()).select_from(Image))
        events = session.scalar(select(func.count()).select_from(ImageEvent))
    return images or 0, events or 0


def _assert_not_found_page(response: Any) -> None:
    text = response.get_data(as_text=True)
    assert response.status_code == 404, text[:300]
    assert response.mimetype == "text/html"
    assert "404 · Not Found" in text
    assert f"No image #{MISSING} in the catalog." in text
    assert "Internal error" not in text


@pytest.mark.parametrize("action", list(FORMS))
def test_a_form_on_a_missing_image_answers_404(admin_page: FlaskClient, app: Flask,
                                               action: str) -> None:
    before = _catalog(app)
    token = _csrf_token(admin_page)
    response = admin_page.post(f"/images/{MISSING}/{action}",
                               data={"csrf_token": token, **FORMS[action]})
    _assert_not_found_page(response)
    assert _catalog(app) == before


def test_an_upload_for_a_missing_image_answers_404_and_is_not_kept(
    admin_page: FlaskClient, app: Flask, migrated: Settings,
) -> None:
    before = _catalog(app)
    token = _csrf_token(admin_page)
    response = admin_page.post(
        f"/images/{MISSING}/build",
        data={"csrf_token": token,
              "dockerfile": (io.BytesIO(b"FROM scratch\n"), "Dockerfile")},
        content_type="multipart/form-data",
    )
    _assert_not_found_page(response)
    assert _catalog(app) == before
    uploads = uploads_dir(migrated)
    assert not uploads.exists() or list(uploads.iterdir()) == []
