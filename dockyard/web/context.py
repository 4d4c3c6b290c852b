"""Per-request access to the database and settings, set up by create_app()."""

from __future__ import annotations

from flask import current_app, g
from sqlalchemy.orm import Session, sessionmaker

from dockyard.settings import Settings


def settings() -> Settings:
    return current_app.extensions["dockyard.settings"]


def db() -> Session:
    """The request's database session; closed when the request ends."""
    if "db" not in g:
        factory: sessionmaker[Session] = current_app.extensions["dockyard.sessions"]
        g.db = factory()
    return g.db


def close_db(_exc: BaseException | None = None) -> None:
    session = g.pop("db", None)
    if session is not None:
        session.close()
