"""A real Dockyard for the data benchmarks (``bench/data.py``, ``bench/tables.py``).

``dockyard up`` on free loopback ports (JupyterHub, its proxy, the web service under
gunicorn, the worker), an admin signed in through the login form and a JupyterHub API
token made through the hub's REST API: every API call a benchmark makes is checked by the
hub, exactly as a notebook's or a job's call is. The data client talks to the web service
directly, as it does from a notebook or job container (``DOCKYARD_URL`` there is the web
service's own address, not the proxy's).
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dockyard.settings import Settings  # noqa: E402
from tests.support.hubproc import RunningHub, start_hub  # noqa: E402


@dataclass(frozen=True)
class CatalogService:
    hub: RunningHub
    #: The data client's DOCKYARD_URL: the web service, directly.
    url: str
    #: A real JupyterHub API token of the admin.
    token: str
    #: The settings the service runs with (its database and data root).
    settings: Settings

    def client(self) -> Any:
        from dockyard_data import Client, ClientConfig

        return Client(config=ClientConfig(url=self.url, token=self.token))


def stop_on_sigterm() -> None:
    """``make bench`` stops a benchmark that runs too long with SIGTERM: leave through
    the ``finally`` blocks, so that what it started is removed."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


@contextmanager
def running_dockyard(database_url: str | None = None) -> Iterator[CatalogService]:
    """A fresh ``dockyard up`` in its own home; afterwards it, everything it started and
    its home are gone."""
    root = Path(tempfile.mkdtemp(prefix="dockyard-bench-"))
    home = root / "home"
    overrides = {"DOCKYARD_DATABASE_URL": database_url} if database_url else {}
    hub: RunningHub | None = None
    try:
        hub = start_hub(home, **overrides)
        admin = hub.login()
        token = hub.hub_token(admin, hub.admin)
        settings = Settings(home=home, **({"database_url": database_url} if database_url
                                          else {}))
        url = f"http://127.0.0.1:{hub.env['DOCKYARD_WEB_PORT']}/services/dockyard/"
        yield CatalogService(hub, url, token, settings)
    finally:
        if hub is not None:
            hub.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def postgres_database() -> Iterator[str]:
    """A new, empty database on the PostgreSQL server of DOCKYARD_TEST_POSTGRES_URL,
    dropped afterwards."""
    from tests.support.postgres import fresh_database

    with fresh_database("dockyard_bench") as url:
        yield url
