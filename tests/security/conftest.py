"""Fixtures for the security suite: a seeded installation and a fresh copy of it for
every request that changes something, credentials by token or by cookie session."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from dockyard.migrate import upgrade
from dockyard.settings import Settings
from dockyard.web import create_app
from tests.conftest import USERS, TokenTable
from tests.security.world import World, seed

_CSRF_META = re.compile(r'name="csrf-token" content="([^"]+)"')

#: The roles of the matrix and the token of each (the TokenTable's users).
ROLE_TOKENS = {"owner": "tok-alice", "other": "tok-bob", "admin": "tok-admin"}


@dataclass
class Seeded:
    """A migrated, seeded home that copies of the installation start from."""

    settings: Settings
    world: World

    def app(self, home: Path | None = None) -> Flask:
        """The web app on this home, or on a fresh copy of it at ``home``."""
        settings = self.settings
        if home is not None:
            shutil.copytree(self.settings.home, home)
            settings = self.settings.model_copy(update={"home": home})
        app = create_app(settings, identity=TokenTable(dict(USERS)))
        app.config["TESTING"] = True
        return app


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    with pytest.MonkeyPatch.context() as patch:
        import os

        for var in [v for v in os.environ if v.startswith("DOCKYARD_")]:
            patch.delenv(var)
        home = tmp_path_factory.mktemp("security") / "home"
        home.mkdir()
        settings = Settings(home=home)
        upgrade(settings.db_url)
        app = create_app(settings, identity=TokenTable(dict(USERS)))
        app.config["TESTING"] = True
        world = seed(app, settings)
        app.extensions["dockyard.engine"].dispose()
        yield Seeded(settings, world)


def log_in_with_cookie(client: FlaskClient, token: str) -> str:
    """Give the client a Dockyard session as after the hub's OAuth; returns the page's
    CSRF token for that session."""
    with client.session_transaction() as session:
        session["token"] = token
    page = client.get("/jobs/definitions")
    match = _CSRF_META.search(page.get_data(as_text=True))
    assert match, page.status_code
    return match.group(1)
