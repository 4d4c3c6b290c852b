"""Fixtures for the data catalog: the web app on a real loopback port (so the Python
client speaks real HTTP), a moto S3 server process, and a fresh PostgreSQL schema."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from werkzeug.serving import make_server

from dockyard.migrate import upgrade
from dockyard.models import Run
from dockyard.settings import Settings
from dockyard.web import create_app
from dockyard.web.auth import User
from tests.conftest import USERS, TokenTable
from tests.support.moto import moto_server as run_moto_server
from tests.support.requirements import require_postgres

S3_BUCKET = "dockyard-data-tests"


@pytest.fixture
def tokens() -> dict[str, User]:
    """The app's token table; tests add run-scoped tokens to it."""
    return dict(USERS)


@pytest.fixture
def data_app(migrated: Settings, tokens: dict[str, User]) -> Flask:
    app = create_app(migrated, identity=TokenTable(tokens))
    app.config["TESTING"] = True
    return app


@pytest.fixture
def api(data_app: Flask) -> FlaskClient:
    return data_app.test_client()


@contextmanager
def served(app: Flask) -> Iterator[str]:
    """The app on a free loopback port, in a thread; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)


@pytest.fixture
def live_url(data_app: Flask) -> Iterator[str]:
    """The app on a free loopback port: the client's base URL (it appends /api/v1)."""
    with served(data_app) as url:
        yield url


@pytest.fixture
def connect(live_url: str) -> Callable[[str], object]:
    """A dockyard_data.Client for one of the token table's tokens."""
    from dockyard_data import Client, ClientConfig

    def make(token: str) -> Client:
        return Client(config=ClientConfig(url=live_url, token=token))

    return make


def add_run(settings: Settings, owner: str) -> int:
    """A job run row, as the jobs area would have created it, for lineage tests."""
    from dockyard.db import make_engine, make_session_factory, transaction

    engine = make_engine(settings.db_url)
    try:
        with transaction(make_session_factory(engine)) as session:
            run = Run(owner=owner, image="dockyard/test:latest", command=["true"], cpu=1.0,
                      memory_mb=256)
            session.add(run)
            session.flush()
            return run.id
    finally:
        engine.dispose()


# -- S3 through a moto server process --------------------------------------------------


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_moto_server(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


@pytest.fixture
def s3_settings(tmp_path: Path, moto_endpoint: str,
                monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings whose data root is a fresh prefix in a bucket of the moto server;
    credentials come from the standard AWS environment variables."""
    import boto3

    for var in [v for v in os.environ if v.startswith(("DOCKYARD_", "AWS_"))]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    try:
        s3.create_bucket(Bucket=S3_BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    home = tmp_path / "s3-home"
    home.mkdir()
    settings = Settings(home=home, data_root=f"s3://{S3_BUCKET}/{uuid.uuid4().hex[:12]}",
                        data_s3_endpoint_url=moto_endpoint, data_s3_region="us-east-1")
    upgrade(settings.db_url)
    return settings


# -- PostgreSQL ------------------------------------------------------------------------


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A migrated, empty schema of its own in the test PostgreSQL, dropped afterwards."""
    base = require_postgres()
    schema = f"dy_data_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    text = url.render_as_string(hide_password=False)
    try:
        upgrade(text)
        yield text
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()
