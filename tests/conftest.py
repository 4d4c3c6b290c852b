"""Shared fixtures: settings on a temporary home, the web app with a table of tokens,
and a real running Dockyard (JupyterHub + service + worker) for end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from hub.migrate import upgrade
from hub.settings import Settings
from hub.web import create_app
from hub.web.auth import User
from tests.support.hubproc import RunningHub, start_hub


class TokenTable:
    """An Identity for testing the web app alone: fixed tokens, no hub."""

    def __init__(self, users: dict[str, User]) -> None:
        self.users = users

    def user_for_token(self, token: str) -> User | None:
        return self.users.get(token)

    def login_redirect(self, next_url: str):  # pragma: no cover - pages use a real hub
        from flask import redirect

        return redirect("/hub/login?next=" + next_url)

    def finish_login(self, code: str, state: str | None) -> tuple[str, str]:
        if code not in self.users:
            raise PermissionError("unknown code")
        return code, state or "/"


USERS = {
    "tok-admin": User("admin", admin=True),
    "tok-alice": User("alice"),
    "tok-bob": User("bob"),
}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"}


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for var in [v for v in __import__("os").environ if v.startswith("DOCKYARD_")]:
        monkeypatch.delenv(var)
    home = tmp_path / "home"
    home.mkdir()
    return Settings(home=home)


@pytest.fixture
def migrated(settings: Settings) -> Settings:
    upgrade(settings.db_url)
    return settings


@pytest.fixture
def app(migrated: Settings) -> Flask:
    app = create_app(migrated, identity=TokenTable(USERS))
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="session")
def running_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    """One real Dockyard for the session (local processes for notebooks and jobs)."""
    hub = start_hub(tmp_path_factory.mktemp("dockyard-home"))
    yield hub
    hub.stop()
