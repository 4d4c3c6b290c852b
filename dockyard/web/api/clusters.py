"""REST API: Spark and Ray clusters a user starts, scales and stops. Thin: parse, call
dockyard.clusters.service, shape the answer."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from dockyard.clusters import service
from dockyard.clusters.schemas import CLUSTER_NAME, ClusterIn, ClusterScaleIn, PlainText
from dockyard.clusters.service import ClusterLimits, cluster_as_dict
from dockyard.models import MAX_ID, Cluster
from dockyard.web.api import route
from dockyard.web.auth import User, current_user
from dockyard.web.context import db, settings, write_db
from dockyard.web.errors import ApiError


class ClusterOut(BaseModel):
    id: int
    name: str
    owner: str
    kind: str = Field(description="ray or spark.")
    image: str
    pool: str
    status: str = Field(description="queued, starting, running, stopping, stopped or failed.")
    reason: str = Field(description="Why it failed or stopped, in a sentence (empty while "
                        "all is well).")
    workers: int
    worker_cpu: float
    worker_memory_mb: int
    address: str | None = Field(description="What a notebook server connects to: "
                                "ray://<head>:10001 or spark://<head>:7077, <head> the name "
                                "of the cluster's head (empty until running).")
    run_id: int | None = Field(description="The run the cluster belongs to (started and "
                               "removed with it); null for a cluster started by hand.")
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    last_activity_at: datetime | None
    idle_timeout_seconds: int = Field(description="Stopped after this long with no driver "
                                      "connected and no use through Dockyard (0: never).")
    dashboard: str | None = Field(description="The path of its dashboard through Dockyard "
                                  "(Spark master UI, Ray dashboard); null when not running "
                                  "or not reachable.")

    @classmethod
    def of(cls, cluster: Cluster, viewer: User) -> ClusterOut:
        return cls.model_validate(cluster_as_dict(cluster, viewer=viewer.name))


class ClusterPageOut(BaseModel):
    clusters: list[ClusterOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null "
                                    "on the last page.")


class ClustersQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: Literal["live", "ended", "all"] = Field(
        "live", description="live (queued, starting, running, stopping), ended (stopped, "
        "failed) or all.")
    name: str | None = Field(None, pattern=CLUSTER_NAME,
                             description="Only the cluster of this name.")
    owner: PlainText | None = Field(None, max_length=64,
                                    description="Admins: someone's clusters.")
    cursor: str | None = Field(None, max_length=20, pattern="^[0-9]+$")
    limit: int = Field(50, ge=1, description="Page size (at most DOCKYARD_API_PAGE_SIZE_MAX).")


def _caller() -> User:
    user = current_user()
    assert user is not None  # the route decorator has authenticated
    return user


def _limits() -> ClusterLimits:
    return ClusterLimits.from_settings(settings())


@route("/clusters", tag="clusters", query=ClustersQuery, response=ClusterPageOut)
def list_clusters(query: ClustersQuery) -> ClusterPageOut:
    """Your clusters, newest first (admins: everyone's, or ?owner='s), a page at a time."""
    cap = settings().api_page_size_max
    limit = query.limit if "limit" in query.model_fields_set else min(query.limit, cap)
    if limit > cap:
        raise ApiError(422, "Invalid query parameters",
                       [{"field": "limit", "message": f"at most {cap} per page"}])
    caller = _caller()
    # A cursor beyond any id is the first page (the database cannot compare it).
    before = min(int(query.cursor), MAX_ID + 1) if query.cursor else None
    found = service.list_clusters(db(), caller, state=query.state, name=query.name,
                                  owner=query.owner, before=before, limit=limit + 1)
    page = found[:limit]
    return ClusterPageOut(clusters=[ClusterOut.of(c, caller) for c in page],
                          next_cursor=str(page[-1].id) if len(found) > limit else None)


@route("/clusters", "POST", tag="clusters", body=ClusterIn, response=ClusterOut, status=201,
       responses={409: "You already have a live cluster of that name",
                  422: "A field is refused: the pool cannot host clusters, the image has "
                       "no Ray or Spark, more workers than you have left, …"})
def create_cluster(body: ClusterIn) -> ClusterOut:
    """Start a Spark or Ray cluster: a head and N workers from a catalog image, on a job
    pool of the Docker engine or Swarm. It is queued now; the worker starts it."""
    caller = _caller()
    return ClusterOut.of(service.create_cluster(write_db(), caller, body, _limits()), caller)


@route("/clusters/<int:cluster_id>", tag="clusters", response=ClusterOut)
def get_cluster(cluster_id: int) -> ClusterOut:
    """One cluster: its status, address and dashboard. Reading it counts as using it (the
    idle timeout starts again) when you own it."""
    caller = _caller()
    cluster = service.get_cluster(db(), caller, cluster_id)
    if cluster.owner == caller.name:
        service.touch(write_db(), cluster.id)
    return ClusterOut.of(cluster, caller)


@route("/clusters/<int:cluster_id>", "PATCH", tag="clusters", body=ClusterScaleIn,
       response=ClusterOut, responses={409: "The cluster has ended or is stopping",
                                       422: "More workers than you have left"})
def scale_cluster(cluster_id: int, body: ClusterScaleIn) -> ClusterOut:
    """Scale a cluster to {"workers": N}; the worker adds or removes workers."""
    caller = _caller()
    return ClusterOut.of(service.scale_cluster(write_db(), caller, cluster_id, body,
                                               _limits()), caller)


@route("/clusters/<int:cluster_id>", "DELETE", tag="clusters", response=ClusterOut,
       status=202)
def stop_cluster(cluster_id: int) -> ClusterOut:
    """Stop a cluster: a queued one at once, a started one by the worker, which removes
    every container and its network."""
    caller = _caller()
    return ClusterOut.of(service.request_stop(write_db(), caller, cluster_id), caller)
