"""Per-request access to the database and settings, set up once by create_app()."""

from __future__ import annotations

from flask import current_app, g
from sqlalchemy.orm import Session, sessionmaker

from dockyard.data import Catalog
from dockyard.jobs.artifacts import ArtifactStore
from dockyard.jobs.notebooks import HomeFiles
from dockyard.settings import Settings


def settings() -> Settings:
    return current_app.extensions["dockyard.settings"]


def db() -> Session:
    """The request's database session; closed when the request ends."""
    if "db" not in g:
        factory: sessionmaker[Session] = current_app.extensions["dockyard.sessions"]
        g.db = factory()
    return g.db


def write_db() -> Session:
    """The request's session for read-modify-write work (see ``dockyard.db.write_sessions``:
    on SQLite it holds the write lock from its first read); closed when the request ends."""
    if "write_db" not in g:
        g.write_db = write_sessions_of_app()()
    return g.write_db


def write_sessions_of_app() -> sessionmaker[Session]:
    """The app's factory of write sessions, for code that opens its own transactions."""
    return current_app.extensions["dockyard.write_sessions"]


def catalog() -> Catalog:
    """The app's data catalog, over the app's database sessions."""
    return current_app.extensions["dockyard.catalog"]


def artifacts() -> ArtifactStore:
    """Where runs keep their files (notebook snapshots and executed notebooks)."""
    return current_app.extensions["dockyard.artifacts"]


def homes() -> HomeFiles:
    """Users' homes, as their notebook servers see them (to submit a notebook by path)."""
    return current_app.extensions["dockyard.homes"]


def close_db(_exc: BaseException | None = None) -> None:
    for name in ("db", "write_db"):
        session = g.pop(name, None)
        if session is not None:
            session.close()
