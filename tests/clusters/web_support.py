"""What the cluster web, API, CLI and client tests share: catalog images whose inspection
found Ray and Spark (or neither), cluster rows moved as the worker would move them, a
real HTTP server standing in for a head's dashboard, and a cookie login for the pages."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import update

from dockyard.db import make_engine, make_session_factory
from dockyard.models import Cluster, ClusterState, Image, ImageStatus, utcnow
from dockyard.settings import Settings
from tests.conftest import auth

#: In the catalog for jobs, inspected: it has Ray and Spark (as the notebook image has).
ENGINES_IMAGE = "team/engines:1"
#: In the catalog for jobs, inspected: neither Ray nor Spark.
PLAIN_IMAGE = "debian:bookworm-slim"
ALICE, BOB, ADMIN = auth("tok-alice"), auth("tok-bob"), auth("tok-admin")
CSRF = re.compile(r'name="csrf-token" content="([^"]+)"')


def add_engine_images(settings: Settings) -> None:
    engine = make_engine(settings.db_url)
    try:
        with make_session_factory(engine)() as session:
            now = utcnow()
            session.add_all([
                Image(reference=ENGINES_IMAGE, status=ImageStatus.READY, for_jobs=True,
                      created_by="admin", inspected_at=now,
                      contents={"ray": "2.40.0", "spark": "3.5.3"}),
                Image(reference=PLAIN_IMAGE, status=ImageStatus.READY, for_jobs=True,
                      created_by="admin", inspected_at=now, contents={}),
            ])
            session.commit()
    finally:
        engine.dispose()


def set_cluster(settings: Settings, cluster_id: int, **values: Any) -> None:
    """Change a cluster row as the worker would (status, address, dashboard_url …)."""
    engine = make_engine(settings.db_url)
    try:
        with make_session_factory(engine)() as session:
            session.execute(update(Cluster).where(Cluster.id == cluster_id).values(**values))
            session.commit()
    finally:
        engine.dispose()


def cluster_row(settings: Settings, cluster_id: int) -> Cluster:
    engine = make_engine(settings.db_url)
    try:
        with make_session_factory(engine)() as session:
            cluster = session.get(Cluster, cluster_id)
            assert cluster is not None
            session.expunge(cluster)
            return cluster
    finally:
        engine.dispose()


def running(settings: Settings, cluster_id: int, dashboard_url: str | None = None,
            kind: str = "ray") -> None:
    address = "ray://head:10001" if kind == "ray" else "spark://head:7077"
    set_cluster(settings, cluster_id, status=ClusterState.RUNNING, address=address,
                dashboard_url=dashboard_url, started_at=utcnow())


def create(client: FlaskClient, headers: dict[str, str] = ALICE, **fields: Any) -> Any:
    body = {"name": "big-join", "kind": "ray", "workers": 2, "image": ENGINES_IMAGE, **fields}
    return client.post("/api/v1/clusters", json=body, headers=headers)


def browser(client: FlaskClient, token: str = "tok-alice") -> str:
    """Log the test client in with a session cookie; return the page's CSRF token."""
    with client.session_transaction() as session:
        session["token"] = token
    page = client.get("/clusters/")
    assert page.status_code == 200, page.data[:300]
    match = CSRF.search(page.data.decode())
    assert match
    return match.group(1)


class DashboardServer:
    """A real HTTP server on a loopback port standing in for a head's web UI: it answers
    every path with what it was asked, and a few paths with redirects and headers a
    proxy must not pass on."""

    def __init__(self, pages: dict[str, tuple[str, str]] | None = None) -> None:
        #: path -> (content type, body) served as they are.
        self.pages = dict(pages or {})
        self.requests: list[dict[str, Any]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._answer(with_body=True)

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer(with_body=False)

            def _answer(self, with_body: bool) -> None:
                server.requests.append({"method": self.command, "path": self.path,
                                        "cookie": self.headers.get("Cookie"),
                                        "authorization": self.headers.get("Authorization")})
                if self.path == "/jump-inside":
                    return self._redirect("/static/app.js?v=1")
                if self.path == "/jump-absolute":
                    return self._redirect(f"{server.url}/cluster")
                if self.path == "/jump-away":
                    return self._redirect("http://example.invalid/steal")
                kind, body = server.pages.get(self.path, (
                    "text/html; charset=utf-8",
                    f"<html><body>dashboard {self.command} {self.path}</body></html>"))
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Set-Cookie", "dockyard-session=hijack; Path=/")
                self.send_header("Content-Security-Policy", "default-src *")
                self.send_header("Keep-Alive", "timeout=5")
                self.send_header("X-Dashboard", "ray")
                self.end_headers()
                if with_body:
                    self.wfile.write(data)

            def _redirect(self, location: str) -> None:
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> DashboardServer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@contextmanager
def dashboard_server(pages: dict[str, tuple[str, str]] | None = None,
                     ) -> Iterator[DashboardServer]:
    with DashboardServer(pages) as server:
        yield server
