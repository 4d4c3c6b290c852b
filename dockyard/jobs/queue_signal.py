"""A queued run wakes the worker at once on PostgreSQL (``NOTIFY``/``LISTEN``), rather than
at the worker's next poll (DOCKYARD_WORKER_POLL_SECONDS, 0.25 s by default: half of it on
average between a submit and its start).

Any session that flushes a new queued run sends ``NOTIFY dockyard_runs_queued`` in the same
transaction, so the worker hears it only once the run is committed (PostgreSQL sends
notifications at commit, one per channel per transaction). The worker listens on its own
connection. The poll stays as it was: a lost connection, SQLite (no notifications across
processes) or a missed notification costs at most the poll interval, never a run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import psycopg
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from dockyard.models import Run, RunState

log = logging.getLogger(__name__)

CHANNEL = "dockyard_runs_queued"
#: How long the listener waits for a notification before it looks at ``stop`` again.
LISTEN_TURN_SECONDS = 1.0
#: After a lost connection, how long before the listener connects again.
RECONNECT_SECONDS = 5.0


@event.listens_for(Session, "after_flush")
def _notify_queued_runs(session: Session, _flush_context: Any) -> None:
    # session.new still lists what this flush inserted.
    if not any(isinstance(obj, Run) and obj.status == RunState.QUEUED for obj in session.new):
        return
    connection = session.connection(bind_arguments={"mapper": Run})
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"NOTIFY {CHANNEL}")


def listen_for_queued_runs(database_url: str, wake: Callable[[], None],
                           stop: threading.Event) -> None:
    """Call ``wake`` whenever a run is queued, until ``stop`` is set (PostgreSQL only)."""
    url = make_url(database_url)
    # The connection parameters exactly as SQLAlchemy's own connections get them (query
    # options included); TCP keepalives so that a silently dropped connection is noticed
    # and made again, rather than waited on for ever.
    _, params = url.get_dialect()().create_connect_args(url)
    params.update(keepalives=1, keepalives_idle=30, keepalives_interval=10,
                  keepalives_count=3)
    failing = False
    while not stop.is_set():
        try:
            with psycopg.connect(**params, autocommit=True) as connection:
                connection.execute(f"LISTEN {CHANNEL}")
                failing = False
                wake()  # anything queued while this connection was being made
                while not stop.is_set():
                    for _ in connection.notifies(timeout=LISTEN_TURN_SECONDS):
                        wake()
        except (psycopg.Error, OSError) as exc:
            # Said once per outage: the poll keeps runs moving meanwhile.
            (log.debug if failing else log.warning)(
                "Not listening for queued runs (%s); polling meanwhile", exc)
            failing = True
            stop.wait(RECONNECT_SECONDS)


def start_listening(database_url: str, wake: Callable[[], None],
                    stop: threading.Event) -> threading.Thread:
    thread = threading.Thread(target=listen_for_queued_runs, args=(database_url, wake, stop),
                              name="queued-runs", daemon=True)
    thread.start()
    return thread
