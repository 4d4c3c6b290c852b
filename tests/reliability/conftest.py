"""Tools for the fault tests: a database reached through a proxy that can cut it off (so a
fault hits only this test's Dockyard, never the machine's PostgreSQL), and the data
package's fixtures (a live web app for the real data client)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from dockyard.migrate import upgrade
from tests.data.conftest import connect, data_app, live_url, tokens  # noqa: F401
from tests.support.proxy import PausableProxy
from tests.support.requirements import require_postgres


@pytest.fixture
def postgres_via_proxy() -> Iterator[tuple[str, PausableProxy]]:
    """A migrated schema of its own in the test PostgreSQL, and a URL reaching it only
    through a PausableProxy."""
    base = require_postgres()
    schema = f"dy_rel_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    direct = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    upgrade(direct.render_as_string(hide_password=False))
    proxy = PausableProxy((direct.host or "127.0.0.1", direct.port or 5432))
    proxy.start()
    proxied = direct.set(host="127.0.0.1", port=proxy.port)
    try:
        yield proxied.render_as_string(hide_password=False), proxy
    finally:
        proxy.cut()
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()
