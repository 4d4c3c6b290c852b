"""The catalog's database work on PostgreSQL: the build log appended in SQL, the worker's
compare-and-swap claim, moving a default; with a real build on the engine."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from hub.images.service import ImageWorkRunner
from hub.migrate import upgrade
from hub.settings import Settings
from hub.web import create_app
from tests.conftest import USERS, TokenTable
from tests.images_admin.conftest import ADMIN, SHELL_IMAGE, slow_dockerfile, tar_of
from tests.support.requirements import require_image, require_postgres

pytestmark = [pytest.mark.postgres, pytest.mark.docker]


@pytest.fixture
def pg_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    base_url = make_url(require_postgres())
    require_image(SHELL_IMAGE)
    for var in [v for v in __import__("os").environ if v.startswith("DOCKYARD_")]:
        monkeypatch.delenv(var)
    name = f"dockyard_img_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = base_url.set(database=name).render_as_string(hide_password=False)
        settings = Settings(home=tmp_path, database_url=url)
        upgrade(settings.db_url)
        app = create_app(settings, identity=TokenTable(USERS))
        yield app
        app.extensions["dockyard.engine"].dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_build_claim_log_and_defaults_on_postgres(
    pg_app: Flask, our_tag: Callable[[str], str]
) -> None:
    client = pg_app.test_client()
    settings = pg_app.extensions["dockyard.settings"]
    sessions = pg_app.extensions["dockyard.sessions"]
    data = {
        "reference": our_tag("pg"),
        "context": (tar_of({"Dockerfile": slow_dockerfile("pg"), "notes.txt": b"x"}), "c.tar"),
    }
    created = client.post("/api/v1/images", data=data, headers=ADMIN,
                          content_type="multipart/form-data")
    assert created.status_code == 201, created.json
    image_id = created.json["id"]

    first, second = ImageWorkRunner(), ImageWorkRunner()
    assert first.tick(sessions, settings) == [image_id]
    assert second.tick(sessions, settings) == []  # claimed once only
    assert first.wait(300)
    image = client.get(f"/api/v1/images/{image_id}", headers=ADMIN).json
    assert image["status"] == "ready", image["status_detail"]
    log = client.get(f"/api/v1/images/{image_id}/build-log?offset=10", headers=ADMIN).json
    assert "pg-step-two-done" in log["text"] and log["offset"] == 10
    assert log["next_offset"] == 10 + len(log["text"])

    other = client.post("/api/v1/images", json={"reference": SHELL_IMAGE},
                        headers=ADMIN).json["id"]
    for chosen in (image_id, other):
        assert client.patch(f"/api/v1/images/{chosen}", json={"default_for_jobs": True},
                            headers=ADMIN).status_code == 200
    defaults = [i["id"] for i in client.get("/api/v1/images", headers=ADMIN).json["images"]
                if i["default_for_jobs"]]
    assert defaults == [other]
