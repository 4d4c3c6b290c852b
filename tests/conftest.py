"""Shared fixtures: settings on a temporary home, the web app with a table of tokens,
and a real running Dockyard (JupyterHub + service + worker) for end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from dockyard.migrate import upgrade
from dockyard.settings import Settings
from dockyard.web import create_app
from dockyard.web.auth import User
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


def web_app(settings: Settings) -> Flask:
    """The web app on ``settings``, its users known by the tokens of USERS."""
    app = create_app(settings, identity=TokenTable(USERS))
    app.config["TESTING"] = True
    return app


def client_for(settings: Settings) -> FlaskClient:
    return web_app(settings).test_client()


@pytest.fixture
def app(migrated: Settings) -> Flask:
    return web_app(migrated)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="session")
def running_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    """One real Dockyard for the session (local processes for notebooks and jobs)."""
    hub = start_hub(tmp_path_factory.mktemp("dockyard-home"))
    yield hub
    hub.stop()


# -- nothing outlives the suite -----------------------------------------------------------
_engine_at_start: object = None


def pytest_sessionstart(session: pytest.Session) -> None:
    global _engine_at_start
    from tests.support.leftovers import become_subreaper, engine_snapshot

    become_subreaper()
    engine = _engine_or_none()
    if engine is not None:
        _engine_at_start = engine_snapshot(engine)
        engine.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when a process or an engine object that a test started is still there:
    every fixture must stop what it started, whatever the outcome."""
    from tests.support.leftovers import (
        describe,
        living_descendants,
        new_engine_objects,
        other_test_runs,
    )

    leftovers = [describe(process) for process in living_descendants()]
    engine = _engine_or_none() if _engine_at_start is not None else None
    others = other_test_runs()
    if engine is not None and others:
        # What appeared on the shared engine may be theirs: only our processes are checked.
        print(f"\nEngine objects not checked for leftovers: {len(others)} other test run(s) "
              "share this Docker engine.")
    elif engine is not None:
        leftovers += new_engine_objects(engine, _engine_at_start)  # type: ignore[arg-type]
        engine.close()
    if not leftovers:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = ["The suite left these running (a fixture did not stop what it started):",
             *(f"  {line}" for line in leftovers)]
    for line in lines:
        if reporter is not None:
            reporter.write_line(line, red=True)
        else:
            print(line)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _engine_or_none():  # noqa: ANN202 - docker is imported lazily
    try:
        import docker

        engine = docker.from_env(timeout=10)
        engine.ping()
        return engine
    except Exception:
        return None
