"""The catalog's database work on PostgreSQL: the build log appended in SQL, the worker's
compare-and-swap claim, moving a default; with a real build on the engine."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask

from dockyard.images.builds import ImageWorkRunner
from dockyard.migrate import upgrade
from dockyard.settings import Settings
from tests.conftest import web_app
from tests.images_admin.conftest import ADMIN, SHELL_IMAGE, slow_dockerfile, tar_of
from tests.support.postgres import fresh_database
from tests.support.requirements import require_image

pytestmark = [pytest.mark.postgres, pytest.mark.docker]


@pytest.fixture
def pg_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    require_image(SHELL_IMAGE)
    with fresh_database("dockyard_img") as url:
        # Only then: the test server's URL is one of the variables.
        for var in [v for v in __import__("os").environ if v.startswith("DOCKYARD_")]:
            monkeypatch.delenv(var)
        settings = Settings(home=tmp_path, database_url=url)
        upgrade(settings.db_url)
        app = web_app(settings)
        try:
            yield app
        finally:
            app.extensions["dockyard.engine"].dispose()


def test_build_claim_log_and_defaults_on_postgres(
    pg_app: Flask, our_tag: Callable[[str], str]
) -> None:
    client = pg_app.test_client()
    settings = pg_app.extensions["dockyard.settings"]
    writes = pg_app.extensions["dockyard.write_sessions"]
    data = {
        "reference": our_tag("pg"),
        "context": (tar_of({"Dockerfile": slow_dockerfile("pg"), "notes.txt": b"x"}), "c.tar"),
    }
    created = client.post("/api/v1/images", data=data, headers=ADMIN,
                          content_type="multipart/form-data")
    assert created.status_code == 201, created.json
    image_id = created.json["id"]

    first, second = ImageWorkRunner(), ImageWorkRunner()
    assert first.tick(writes, settings) == [image_id]
    assert second.tick(writes, settings) == []  # claimed once only
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
