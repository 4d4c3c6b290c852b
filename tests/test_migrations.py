"""Migrations apply on SQLite and PostgreSQL, and match the models (drift test)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from dockyard.db import make_engine
from dockyard.migrate import current_revision, upgrade
from dockyard.models import Base
from dockyard.settings import Settings
from tests.support.postgres import fresh_database


def assert_no_drift(url: str) -> None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert diff == [], f"models and migrations differ; regenerate the migration: {diff}"


def test_sqlite_upgrade_creates_every_table(settings: Settings) -> None:
    upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    try:
        tables = set(inspect(engine).get_table_names())
        with engine.connect() as conn:
            journal = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
            foreign_keys = conn.exec_driver_sql("PRAGMA foreign_keys").scalar()
    finally:
        engine.dispose()
    assert set(Base.metadata.tables) <= tables
    assert journal == "wal"
    assert foreign_keys == 1


def test_sqlite_upgrade_is_idempotent_and_matches_models(settings: Settings) -> None:
    upgrade(settings.db_url)
    first = current_revision(settings.db_url)
    upgrade(settings.db_url)
    assert current_revision(settings.db_url) == first is not None
    assert_no_drift(settings.db_url)


@pytest.fixture
def postgres_database() -> Iterator[str]:
    with fresh_database("dockyard_mig") as url:
        yield url


@pytest.mark.postgres
def test_postgres_upgrade_matches_models(postgres_database: str) -> None:
    upgrade(postgres_database)
    upgrade(postgres_database)  # a second upgrade (e.g. a second replica) is a no-op
    assert current_revision(postgres_database) is not None
    assert_no_drift(postgres_database)


@pytest.mark.postgres
def test_an_image_over_2_gib_is_kept_on_postgres(postgres_database: str) -> None:
    # The notebook image passed 2 GiB; INTEGER overflowed and registering it was a 500.
    from sqlalchemy.orm import Session

    from dockyard.models import Image

    upgrade(postgres_database)
    engine = make_engine(postgres_database)
    try:
        with Session(engine) as session:
            session.add(Image(reference="dockyard/notebook:big", size_bytes=3 * 2**30,
                              created_by="admin"))
            session.commit()
            kept = session.query(Image.size_bytes).filter_by(reference="dockyard/notebook:big")
            assert kept.scalar() == 3 * 2**30
    finally:
        engine.dispose()
