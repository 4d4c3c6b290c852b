"""Change reports for engines without an event stream one can trust (Swarm, ECS).

One batched listing per pool every few seconds, compared with the last one: the worker
is told which runs changed instead of asking about every run itself.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from spawner.jobs.base import JobStatus

log = logging.getLogger(__name__)


def watch_by_polling(list_jobs: Callable[[], dict[int, JobStatus]],
                     notify: Callable[[int], None], stop: threading.Event, *,
                     interval: float, what: str) -> None:
    """Call ``notify(run_id)`` for every job whose state, handle or reason changed (or
    that appeared or went) between two listings, until ``stop`` is set. A failed listing
    is logged and tried again at the next interval: the watcher never dies of it."""
    previous: dict[int, tuple[object, ...]] | None = None
    while not stop.is_set():
        try:
            current = {run_id: (status.state, status.handle, status.reason, status.node)
                       for run_id, status in list_jobs().items()}
        except Exception as exc:  # the engine is away or throttling: look again later
            log.warning("Could not list the jobs on %s (%s); trying again", what, exc)
            stop.wait(interval)
            continue
        if previous is not None:
            for run_id in current.keys() | previous.keys():
                if current.get(run_id) != previous.get(run_id):
                    notify(run_id)
        previous = current
        stop.wait(interval)
