"""What the spawner reads from the catalog: images offered, and the check at start."""

from __future__ import annotations

import pytest

from dockyard.db import make_engine, make_session_factory, transaction
from dockyard.models import Image, ImageStatus
from dockyard.settings import Settings
from hub.notebook_images import NotebookImages
from spawner.notebooks.images import ImageNotOffered

FALLBACK = "dockyard/notebook:latest"


def add(settings: Settings, reference: str, **fields: object) -> None:
    values = {"status": ImageStatus.READY, "for_notebooks": True, "created_by": "admin",
              **fields}
    with transaction(make_session_factory(make_engine(settings.db_url))) as session:
        session.add(Image(reference=reference, **values))


def test_empty_catalog_offers_the_configured_image(migrated: Settings) -> None:
    images = NotebookImages(migrated.db_url, FALLBACK)
    [offered] = images.offered()
    assert offered.reference == FALLBACK and offered.default
    assert images.resolve(FALLBACK) == offered
    with pytest.raises(ImageNotOffered, match=f"the only image available is '{FALLBACK}'"):
        images.resolve("debian:bookworm-slim")


def test_catalog_images_replace_the_fallback_default_first(migrated: Settings) -> None:
    add(migrated, "team/a:1", description="A")
    add(migrated, "team/b:1", description="B", default_for_notebooks=True, profiles=["large"])
    add(migrated, "team/jobs:1", for_notebooks=False, for_jobs=True)
    add(migrated, "team/old:1", status=ImageStatus.RETIRED)
    add(migrated, "team/broken:1", status=ImageStatus.FAILED)
    images = NotebookImages(migrated.db_url, FALLBACK)

    offered = images.offered()
    assert [i.reference for i in offered] == ["team/b:1", "team/a:1"]
    assert offered[0].default and offered[0].profiles == ("large",)
    assert images.resolve("team/a:1").description == "A"

    for reference, reason in [("team/old:1", "retired"),
                              ("team/jobs:1", "not enabled for notebooks"),
                              ("team/broken:1", "not enabled"),
                              (FALLBACK, "not in Dockyard's catalog")]:
        with pytest.raises(ImageNotOffered, match=reason):
            images.resolve(reference)


def test_a_retired_fallback_image_is_refused_even_with_an_empty_catalog(
    migrated: Settings,
) -> None:
    add(migrated, FALLBACK, status=ImageStatus.RETIRED)
    images = NotebookImages(migrated.db_url, FALLBACK)
    assert images.offered() == []
    with pytest.raises(ImageNotOffered, match="retired"):
        images.resolve(FALLBACK)


def test_catalog_changes_show_without_a_new_reader(migrated: Settings) -> None:
    images = NotebookImages(migrated.db_url, FALLBACK)
    assert images.offered()[0].reference == FALLBACK
    add(migrated, "team/new:1", default_for_notebooks=True)
    assert images.offered()[0].reference == "team/new:1"
