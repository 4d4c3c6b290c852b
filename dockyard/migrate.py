"""Apply Dockyard's Alembic migrations (``dockyard db upgrade``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

from dockyard.db import make_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# Migrating twice at once (two replicas starting together) must be safe: on PostgreSQL
# an advisory lock serialises the upgraders; SQLite's file lock does the same.
_ADVISORY_LOCK_KEY = 0x646F636B  # "dock"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    engine: Engine = make_engine(url)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_lock({_ADVISORY_LOCK_KEY})")
            try:
                command.upgrade(alembic_config(url), revision)
            finally:
                if engine.dialect.name == "postgresql":
                    conn.exec_driver_sql(f"SELECT pg_advisory_unlock({_ADVISORY_LOCK_KEY})")
                    conn.commit()
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
