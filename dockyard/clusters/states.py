"""How a cluster's status may change:

    queued → starting → running → stopping → stopped
       ↘ stopped (stopped before it started)   any live status ↘ failed | stopped

A change is a compare-and-swap on the row (``UPDATE … WHERE status IN <where it may come
from>``), so the web service and the worker (or two workers) can never move a cluster
back, or end it twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, update
from sqlalchemy.orm import Session

from dockyard.models import FINAL_CLUSTER_STATES, Cluster, ClusterState, utcnow

log = logging.getLogger(__name__)

_NEXT: dict[ClusterState, frozenset[ClusterState]] = {
    ClusterState.QUEUED: frozenset({ClusterState.STARTING, ClusterState.STOPPED,
                                    ClusterState.FAILED}),
    ClusterState.STARTING: frozenset({ClusterState.RUNNING, ClusterState.STOPPING,
                                      ClusterState.STOPPED, ClusterState.FAILED}),
    ClusterState.RUNNING: frozenset({ClusterState.STOPPING, ClusterState.STOPPED,
                                     ClusterState.FAILED}),
    ClusterState.STOPPING: frozenset({ClusterState.STOPPED, ClusterState.FAILED}),
    ClusterState.STOPPED: frozenset(),
    ClusterState.FAILED: frozenset(),
}
#: Every status a cluster is still alive in (it has, or may soon have, containers).
LIVE_STATES = tuple(state for state in ClusterState if state not in FINAL_CLUSTER_STATES)


def move(session: Session, cluster_id: int, target: ClusterState, *, reason: str | None = None,
         expected: Iterable[ClusterState] | None = None,
         when: Iterable[ColumnElement[bool]] = (), **values: Any) -> bool:
    """Move the cluster to ``target`` from wherever it may come from (only from
    ``expected`` when given, and only while the row meets every condition of ``when``);
    False (nothing changed) when it is elsewhere already. Sets
    ``started_at`` on running and ``ended_at`` on a final status. The caller commits;
    objects already loaded in the session keep their old values until refreshed."""
    sources = [state for state, targets in _NEXT.items() if target in targets
               and (expected is None or state in expected)]
    now = utcnow()
    if target == ClusterState.RUNNING:
        values.setdefault("started_at", now)
        values.setdefault("last_activity_at", now)
    if target in FINAL_CLUSTER_STATES:
        values.setdefault("ended_at", now)
    if reason is not None:
        values["reason"] = reason
    result = session.execute(
        update(Cluster).where(Cluster.id == cluster_id, Cluster.status.in_(sources), *when)
        .values(status=target, **values).execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return False
    log.info("Cluster %s -> %s%s", cluster_id, target.value, f": {reason}" if reason else "")
    return True


def stop_if_idle(session: Session, cluster_id: int, idle_since: datetime) -> bool:
    """Begin stopping a running cluster nobody used after ``idle_since`` (running →
    stopping); False when it was used meanwhile (a page view or an API read touched it
    after the worker looked) or is no longer running: the use wins. The caller commits."""
    return move(session, cluster_id, ClusterState.STOPPING, expected=(ClusterState.RUNNING,),
                when=(Cluster.last_activity_at <= idle_since,))
