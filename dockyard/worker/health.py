"""The worker's /health and /metrics, on a small HTTP listener of its own.

The worker has no web server, yet compose, load balancers and Prometheus need to ask it
whether it is alive and what it is doing. ``/health`` answers 200 only while the loop
keeps beating and the database answers; ``/metrics`` serves the process's Prometheus
registry plus the number of runs in each state, counted when scraped.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine

from dockyard.settings import Settings

log = logging.getLogger(__name__)

# A loop that has not come round for this many poll intervals (and at least this many
# seconds) is reported as stuck.
_STUCK_POLLS = 20
_STUCK_MIN_SECONDS = 30.0
DB_CHECK_SECONDS = 3.0


class WorkerHealth:
    """What /health reports: the last time the worker loop came round, and the database."""

    def __init__(self, engine: Engine, poll_seconds: float) -> None:
        self.engine = engine
        self.stuck_after = max(_STUCK_MIN_SECONDS, _STUCK_POLLS * poll_seconds)
        self.started = time.monotonic()
        self.last_beat = time.monotonic()
        self.last_beat_wall = time.time()

    def beat(self) -> None:
        """Called by the worker loop on every pass."""
        self.last_beat = time.monotonic()
        self.last_beat_wall = time.time()

    def report(self) -> tuple[int, dict[str, Any]]:
        since = time.monotonic() - self.last_beat
        body: dict[str, Any] = {"status": "ok", "seconds_since_loop": round(since, 3)}
        if since > self.stuck_after:
            body.update(status="stuck", detail=f"the worker loop has not run for {since:.0f} s")
        problem = self._database_problem()
        if problem:
            body.update(status="database unreachable", detail=problem)
        return (200 if body["status"] == "ok" else 503), body

    def _database_problem(self) -> str | None:
        """None when the database answers within DB_CHECK_SECONDS, else why not. The probe
        runs on its own thread: a connect to a vanished host can hang for minutes, and a
        health check must answer in time to be of use."""
        outcome: list[str | None] = []

        def probe() -> None:
            try:
                with self.engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
                outcome.append(None)
            except Exception as exc:  # any database failure makes the worker unhealthy
                reason = str(getattr(exc, "orig", exc)).strip().splitlines()
                outcome.append(reason[0] if reason else type(exc).__name__)

        thread = threading.Thread(target=probe, name="health-db-probe", daemon=True)
        thread.start()
        thread.join(DB_CHECK_SECONDS)
        if not outcome:
            return f"the database did not answer within {DB_CHECK_SECONDS:.0f} s"
        return outcome[0]


class RunStateCollector(Collector):
    """``dockyard_runs{state=...}``: runs per status, read from the database at scrape time."""

    def __init__(self, engine: Engine, health: WorkerHealth) -> None:
        self.engine = engine
        self.health = health

    def collect(self) -> Iterable[GaugeMetricFamily]:
        from dockyard.models import Run

        runs = GaugeMetricFamily("dockyard_runs", "Runs in each state.", labels=["state"])
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(select(Run.status, func.count()).group_by(Run.status)).all()
            for state, count in rows:
                runs.add_metric([getattr(state, "value", str(state))], count)
        except Exception as exc:  # a scrape must not fail because the database blinked
            log.warning("Could not count runs for /metrics: %s", exc)
        yield runs
        yield GaugeMetricFamily(
            "dockyard_worker_last_loop_timestamp_seconds",
            "When the worker loop last came round (Unix time).",
            value=self.health.last_beat_wall,
        )


def _handler(health: WorkerHealth, scrape: Callable[[], bytes]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            if self.path.split("?")[0] == "/health":
                status, body = health.report()
                self._send(status, "application/json", json.dumps(body).encode())
            elif self.path.split("?")[0] == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, scrape())
            else:
                self._send(404, "application/json", b'{"error": "Not found", "detail": '
                           b'"the worker answers /health and /metrics"}')

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the checker gave up waiting; nothing to tell it

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("health listener: " + format, *args)

    return Handler


class HealthServer:
    """The listener, on a daemon thread; ``stop()`` closes it."""

    def __init__(self, server: ThreadingHTTPServer, health: WorkerHealth,
                 collector: Collector) -> None:
        self.server = server
        self.health = health
        self.collector = collector
        self.thread = threading.Thread(
            target=server.serve_forever, name="worker-health", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def beat(self) -> None:
        self.health.beat()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        REGISTRY.unregister(self.collector)


class _NoHealthServer:
    """Stands in when the listener is switched off, so the loop can always call beat()."""

    port = 0

    def beat(self) -> None:
        pass

    def stop(self) -> None:
        pass


def start_health_server(settings: Settings, engine: Engine) -> HealthServer | _NoHealthServer:
    """Listen on worker_health_ip:worker_health_port (0: switched off)."""
    if not settings.worker_health_port:
        return _NoHealthServer()
    health = WorkerHealth(engine, settings.worker_poll_seconds)
    collector = RunStateCollector(engine, health)
    REGISTRY.register(collector)
    try:
        server = ThreadingHTTPServer(
            (settings.worker_health_ip, settings.worker_health_port),
            _handler(health, lambda: generate_latest(REGISTRY)),
        )
    except OSError:
        REGISTRY.unregister(collector)
        raise
    server.daemon_threads = True
    running = HealthServer(server, health, collector)
    running.thread.start()
    log.info(
        "Worker health on http://%s:%d/health and /metrics",
        settings.worker_health_ip,
        running.port,
    )
    return running
