"""Tools for the fault tests: a TCP proxy that can cut a database off (so a fault hits
only this test's Dockyard, never the machine's PostgreSQL), and the data package's
fixtures (a live web app for the real data client)."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from hub.migrate import upgrade
from tests.data.conftest import connect, data_app, live_url, tokens  # noqa: F401
from tests.support.requirements import require_postgres


class PausableProxy:
    """Forwards 127.0.0.1:<port> to a server; ``cut()`` drops every connection and
    refuses new ones (what clients see when a database goes away), ``restore()`` listens
    again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener: socket.socket | None = None
        self.port = 0
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._lock = threading.Lock()
        self.connections = 0

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by cut()
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            pair = (client, server)
            with self._lock:
                self._pairs.add(pair)
                self.connections += 1
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink, pair),
                                 daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket,
              pair: tuple[socket.socket, socket.socket]) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._close(pair)

    def _close(self, pair: tuple[socket.socket, socket.socket]) -> None:
        with self._lock:
            self._pairs.discard(pair)
        for end in pair:
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            end.close()

    def cut(self) -> None:
        if self._listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would not,
            # and that thread would go on accepting on the old socket.
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            self._close(pair)

    def restore(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                self.start()
                return
            except OSError:  # the old socket may linger a moment
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


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
