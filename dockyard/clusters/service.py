"""What may happen to clusters, on behalf of whom. No Flask here.

The web pages and the API call these functions; the jobs service calls
``check_cluster_request`` for a run's or definition's ``cluster``, and the worker
``cluster_for_run``, ``workers_in_use`` and ``cluster_spec``'s ``dashboard_path``.
Everyone sees and acts on their own clusters only (admins on all); another user's cluster
is reported as missing, never as forbidden.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dockyard.clusters import states
from dockyard.clusters.schemas import ClusterIn, ClusterScaleIn, ClusterSizeIn
from dockyard.errors import Conflict, Invalid, NotFound
from dockyard.images.catalog import ImageNotAllowed, default_image, resolve_image
from dockyard.models import (
    FINAL_STATES,
    Cluster,
    ClusterKind,
    ClusterState,
    Image,
    Run,
    utcnow,
)
from dockyard.settings import Settings
from dockyard.settings.job_pools import DEFAULT_POOL
from spawner.clusters import CLUSTER_BACKENDS
from spawner.clusters.commands import RAY_HEAD_MIN_MEMORY_MB, SPARK_MIN_WORKER_MEMORY_MB

#: Pool backends that can host a cluster. "auto" is the default pool before the worker
#: has decided (Docker when an engine answers); the worker refuses it if it turns local.
HOSTING_BACKENDS = frozenset({*CLUSTER_BACKENDS, "auto"})
ENGINE_NAMES = {ClusterKind.RAY: "Ray", ClusterKind.SPARK: "Spark"}
#: What a user's own cluster may not be called: the clusters of runs are "run-<id>".
RUN_CLUSTER_PREFIX = "run-"


class Caller(Protocol):
    """Who is asking (the web layer's User fits)."""

    @property
    def name(self) -> str: ...

    @property
    def admin(self) -> bool: ...


@dataclass(frozen=True)
class ClusterLimits:
    """The admin's limits on clusters, from the settings."""

    max_workers_per_user: int
    idle_timeout_seconds: int
    #: Most CPUs and memory of one worker (or head): a job's limits.
    max_cpu: float
    max_memory_mb: int
    #: Pool name → its backend (docker, swarm, ecs, local; "auto" for an undecided default).
    pool_backends: dict[str, str]
    #: Pool name → who may use it (None: everyone); admins may use every pool.
    pool_users: dict[str, tuple[str, ...] | None] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> ClusterLimits:
        backends: dict[str, str] = {DEFAULT_POOL: settings.job_backend}
        users: dict[str, tuple[str, ...] | None] = {DEFAULT_POOL: None}
        for name, config in settings.job_pools.items():
            backends[name] = config.backend
            users[name] = tuple(config.users) if config.users is not None else None
        return cls(
            max_workers_per_user=settings.max_cluster_workers_per_user,
            idle_timeout_seconds=settings.cluster_idle_timeout,
            max_cpu=settings.job_max_cpu, max_memory_mb=settings.job_max_memory_mb,
            pool_backends=backends, pool_users=users,
        )

    def pool_problem(self, pool: str, caller: Caller) -> str | None:
        """Why ``caller`` may not use pool ``pool`` (None: they may)."""
        yours = [name for name, users in self.pool_users.items()
                 if caller.admin or users is None or caller.name in users]
        if pool not in self.pool_backends:
            return f"unknown pool '{pool[:64]}'; choose one of: {', '.join(yours) or 'none'}"
        if pool not in yours:
            return f"you may not use pool '{pool}'; your pools: {', '.join(yours) or 'none'}"
        return None

    def hosting_pools(self) -> list[str]:
        return [name for name, backend in self.pool_backends.items()
                if backend in HOSTING_BACKENDS]


class InvalidCluster(Invalid):
    """Field-level problems with a cluster request: ``detail`` is [{"field", "message"}]."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__([{"field": name, "message": message} for name, message in problems])
        # Pages show it in one line (a flash message).
        self.args = ("; ".join(f"{name}: {message}" for name, message in problems),)
        self.problems = problems


class ClusterNotFound(NotFound):
    """No such cluster, or not the caller's."""

    def __init__(self, cluster_id: int) -> None:
        super().__init__(f"no cluster #{cluster_id}, or it belongs to someone else.")


class ClusterConflict(Conflict):
    """The cluster is not in a state that allows this (scale a stopped one …)."""


def _field(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# -- what a request may ask for -------------------------------------------------------------
def workers_in_use(session: Session, owner: str, *, replacing: int | None = None,
                   asked_by_runs: bool = True) -> int:
    """The workers ``owner`` has now: those of their live clusters (but a cluster whose
    run has ended: it is on its way out, and a retry of that run must not wait for it),
    and with ``asked_by_runs`` those asked for by their active runs that have no live
    cluster yet. The cluster ``replacing`` (being scaled) does not count.

    A request (submit, create, scale) counts the runs' asks too, so that queued runs
    cannot together promise more than the limit. The worker, about to make a run's
    cluster, counts only clusters that exist (``asked_by_runs=False``): runs waiting for
    their clusters would otherwise count each other and all wait forever."""
    live = session.execute(
        select(Cluster.id, Cluster.run_id, Cluster.workers)
        .outerjoin(Run, Run.id == Cluster.run_id)
        .where(Cluster.owner == owner, Cluster.status.in_(states.LIVE_STATES),
               or_(Cluster.run_id.is_(None), Run.status.not_in(FINAL_STATES)))
    ).all()
    total = sum(workers for cluster_id, _, workers in live if cluster_id != replacing)
    if not asked_by_runs:
        return total
    runs_with_cluster = {run_id for _, run_id, _ in live if run_id is not None}
    asked = session.execute(
        select(Run.id, Run.cluster)
        .where(Run.owner == owner, Run.status.not_in(FINAL_STATES), Run.cluster.is_not(None))
    ).all()
    for run_id, size in asked:
        if run_id not in runs_with_cluster and isinstance(size, Mapping):
            total += int(size.get("workers") or 0)
    return total


def check_cluster_request(session: Session, owner: str, size: ClusterSizeIn, *, image: str,
                          pool: str, limits: ClusterLimits, field: str = "cluster",
                          replacing: int | None = None,
                          in_use: bool = True) -> list[tuple[str, str]]:
    """Every reason ``owner`` may not have a cluster of ``size`` from ``image`` on
    ``pool``, as (field, sentence); the fields are named under ``field`` ("" for a cluster
    request of its own), but for the pool's. An unknown pool or an image outside the
    catalog is left to the caller, who names those problems already. Without ``in_use``
    the workers the owner has now are not counted (a definition only says what its runs
    will ask for)."""
    problems: list[tuple[str, str]] = []
    backend = limits.pool_backends.get(pool)
    if backend is not None and backend not in HOSTING_BACKENDS:
        hosts = ", ".join(limits.hosting_pools()) or "none here"
        problems.append(("pool", f"pool '{pool}' runs on {backend}, which cannot host a "
                         f"cluster; choose a pool on Docker or Swarm ({hosts})"))
    problems += _check_image_has(session, image, ClusterKind(size.kind), _field(field, "kind"))
    if size.worker_cpu > limits.max_cpu:
        problems.append((_field(field, "worker_cpu"),
                         f"at most {limits.max_cpu:g} CPUs per worker"))
    if size.worker_memory_mb > limits.max_memory_mb:
        problems.append((_field(field, "worker_memory_mb"),
                         f"at most {limits.max_memory_mb} MB per worker"))
    elif size.kind == ClusterKind.SPARK and size.worker_memory_mb < SPARK_MIN_WORKER_MEMORY_MB:
        # Besides the worker daemon an executor needs 450 MB of heap and its JVM's own
        # overhead: a smaller worker registers but never runs a task.
        problems.append((_field(field, "worker_memory_mb"),
                         f"a Spark worker needs at least {SPARK_MIN_WORKER_MEMORY_MB} MB "
                         "(its daemon and one executor); ask for more memory per worker"))
    if limits.max_workers_per_user == 0:
        problems.append((_field(field, "workers"), "this installation offers no clusters "
                         "(DOCKYARD_MAX_CLUSTER_WORKERS_PER_USER is 0)"))
    else:
        used = workers_in_use(session, owner, replacing=replacing) if in_use else 0
        left = max(limits.max_workers_per_user - used, 0)
        if size.workers > left:
            problems.append((_field(field, "workers"), _too_many(owner, size.workers, used,
                                                                 left, limits)))
    return problems


def _too_many(owner: str, wanted: int, used: int, left: int, limits: ClusterLimits) -> str:
    most = limits.max_workers_per_user
    if used == 0:
        return f"at most {most} cluster workers per user; ask for {most} or fewer"
    return (f"{owner} may have {most} cluster workers at once and has {used} in use; ask "
            f"for {left} or fewer" if left else
            f"{owner} may have {most} cluster workers at once and all are in use; stop a "
            "cluster (or wait for a run with one to end) first")


def _check_image_has(session: Session, reference: str, kind: ClusterKind,
                     field_name: str) -> list[tuple[str, str]]:
    """The image must have the cluster's engine, as its inspection found it."""
    if not reference:
        return []  # no image: a local pool, refused above
    image = session.scalar(select(Image).where(Image.reference == reference))
    if image is None:
        return []  # not in the catalog: the caller's image check says so
    engine = ENGINE_NAMES[kind]
    if image.inspected_at is None:
        return [(field_name, f"image '{reference}' has not been inspected yet, so Dockyard "
                 f"cannot tell whether it has {engine}; ask an admin to inspect it")]
    contents = image.contents or {}
    if contents.get(kind.value):
        return []
    has = [f"{ENGINE_NAMES[other]} {contents[other.value]}" for other in ClusterKind
           if other != kind and contents.get(other.value)]
    instead = (f"it has {has[0]}: ask for a {has[0].split()[0]} cluster, or choose an "
               f"image with {engine}") if has else (
        f"it has neither Ray nor Spark; choose an image with {engine} (Dockyard's "
        "notebook image has both)")
    return [(field_name, f"image '{reference}' has no {engine}; {instead}")]


def head_size(size: ClusterSizeIn | Mapping[str, Any]) -> tuple[float, int]:
    """The head's CPUs and memory: one worker's (the Ray head runs tasks too, the Spark
    master schedules), and for Ray at least ``RAY_HEAD_MIN_MEMORY_MB``: its head also runs
    Ray's own services, which do not fit in a small worker's memory."""
    if isinstance(size, ClusterSizeIn):
        kind, cpu, memory_mb = size.kind, size.worker_cpu, size.worker_memory_mb
    else:
        kind, cpu, memory_mb = (size["kind"], float(size["worker_cpu"]),
                                int(size["worker_memory_mb"]))
    if kind == "ray":
        memory_mb = max(memory_mb, RAY_HEAD_MIN_MEMORY_MB)
    return cpu, memory_mb


# -- a user's own clusters ---------------------------------------------------------------
def create_cluster(session: Session, caller: Caller, body: ClusterIn,
                   limits: ClusterLimits) -> Cluster:
    """A new cluster of the caller's, queued: the worker starts it."""
    problems: list[tuple[str, str]] = []
    if body.name.startswith(RUN_CLUSTER_PREFIX):
        problems.append(("name", f"names starting with '{RUN_CLUSTER_PREFIX}' are kept for "
                         "the clusters of runs; choose another"))
    pool_problem = limits.pool_problem(body.pool, caller)
    if pool_problem:
        problems.append(("pool", pool_problem))
    image, image_problem = _cluster_image(session, body.image)
    if image_problem:
        problems.append(("image", image_problem))
    problems += check_cluster_request(session, caller.name, body, image=image, pool=body.pool,
                                      limits=limits, field="")
    if problems:
        raise InvalidCluster(problems)
    head_cpu, head_memory_mb = head_size(body)
    now = utcnow()
    cluster = Cluster(
        name=body.name, owner=caller.name, kind=ClusterKind(body.kind), image=image,
        pool=body.pool, backend=limits.pool_backends.get(body.pool), workers=body.workers,
        worker_cpu=body.worker_cpu, worker_memory_mb=body.worker_memory_mb,
        head_cpu=head_cpu, head_memory_mb=head_memory_mb, status=ClusterState.QUEUED,
        reason="", idle_timeout_seconds=limits.idle_timeout_seconds, created_at=now,
        last_activity_at=now,
    )
    session.add(cluster)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise ClusterConflict([{"field": "name", "message": f"you already have a live "
                                f"cluster named '{body.name}'; stop it or choose another "
                                "name"}]) from None
    return cluster


def _cluster_image(session: Session, reference: str | None) -> tuple[str, str | None]:
    """The image a cluster runs (the jobs default when none is given) and why it may
    not be used (None: it may)."""
    if reference:
        try:
            resolve_image(session, reference, "jobs")
        except ImageNotAllowed as exc:
            return reference, str(exc)
        return reference, None
    default = default_image(session, "jobs")
    if default is None:
        return "", "no image is enabled for jobs yet; choose an image, or ask an admin to " \
            "add one"
    return default.reference, None


def cluster_for_run(run: Run) -> Cluster:
    """The cluster row a run's ``cluster`` asks for (not yet added to a session): named
    ``run-<id>``, owned by the run's owner, on its pool, from its image."""
    size = run.cluster or {}
    head_cpu, head_memory_mb = head_size(size)
    now = utcnow()
    return Cluster(
        name=f"{RUN_CLUSTER_PREFIX}{run.id}", owner=run.owner, kind=ClusterKind(size["kind"]),
        image=run.image, pool=run.pool, backend=run.backend, workers=int(size["workers"]),
        worker_cpu=float(size["worker_cpu"]), worker_memory_mb=int(size["worker_memory_mb"]),
        head_cpu=head_cpu, head_memory_mb=head_memory_mb, status=ClusterState.QUEUED,
        reason="", run_id=run.id, worker=run.worker, idle_timeout_seconds=0, created_at=now,
        last_activity_at=now,
    )


def list_clusters(session: Session, caller: Caller, *, state: str = "live",
                  name: str | None = None, owner: str | None = None,
                  before: int | None = None, limit: int | None = None) -> list[Cluster]:
    """The caller's clusters (admins: everyone's, or ``owner``'s), newest first; ``state``
    is live (not ended), ended or all. A page: at most ``limit``, with ids below
    ``before``."""
    query = select(Cluster).order_by(Cluster.id.desc())
    if not caller.admin:
        if owner and owner != caller.name:
            return []  # other people's clusters do not exist for you
        query = query.where(Cluster.owner == caller.name)
    elif owner:
        query = query.where(Cluster.owner == owner)
    if state == "live":
        query = query.where(Cluster.status.in_(states.LIVE_STATES))
    elif state == "ended":
        query = query.where(Cluster.status.not_in(states.LIVE_STATES))
    elif state != "all":
        raise InvalidCluster([("state", "one of live, ended or all")])
    if name is not None:
        query = query.where(Cluster.name == name)
    if before is not None:
        query = query.where(Cluster.id < before)
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def get_cluster(session: Session, caller: Caller, cluster_id: int) -> Cluster:
    cluster = session.get(Cluster, cluster_id)
    if cluster is None or not (caller.admin or cluster.owner == caller.name):
        raise ClusterNotFound(cluster_id)
    return cluster


def scale_cluster(session: Session, caller: Caller, cluster_id: int, body: ClusterScaleIn,
                  limits: ClusterLimits) -> Cluster:
    """Ask for ``body.workers`` workers from now on; the worker adds or removes them."""
    cluster = get_cluster(session, caller, cluster_id)
    if cluster.run_id is not None:
        raise ClusterConflict(f"cluster #{cluster.id} belongs to run #{cluster.run_id}; its "
                              "size is the run's")
    if cluster.status.is_final or cluster.status == ClusterState.STOPPING \
            or cluster.stop_requested:
        raise ClusterConflict(f"cluster #{cluster.id} is {_state_words(cluster)}; start a "
                              "new one instead")
    if body.workers == cluster.workers:
        return cluster
    size = ClusterSizeIn(kind=cluster.kind.value, workers=body.workers,
                         worker_cpu=cluster.worker_cpu,
                         worker_memory_mb=cluster.worker_memory_mb)
    # Only the workers count when scaling: the image and pool were checked at creation.
    problems = [problem for problem in check_cluster_request(
        session, cluster.owner, size, image=cluster.image, pool=cluster.pool, limits=limits,
        field="", replacing=cluster.id) if problem[0] == "workers"]
    if problems:
        raise InvalidCluster(problems)
    result = session.execute(
        update(Cluster).where(Cluster.id == cluster.id, Cluster.status.in_(
            (ClusterState.QUEUED, ClusterState.STARTING, ClusterState.RUNNING)),
            Cluster.stop_requested.is_(False))
        .values(workers=body.workers, last_activity_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.commit()
    session.refresh(cluster)
    if result.rowcount != 1:
        raise ClusterConflict(f"cluster #{cluster.id} is {_state_words(cluster)}; start a "
                              "new one instead")
    return cluster


def request_stop(session: Session, caller: Caller, cluster_id: int) -> Cluster:
    """Stop the cluster: a queued one at once, a started one by the worker (which removes
    its containers and network). Asking again changes nothing."""
    cluster = get_cluster(session, caller, cluster_id)
    if cluster.run_id is not None and not cluster.status.is_final:
        raise ClusterConflict(f"cluster #{cluster.id} belongs to run #{cluster.run_id} and "
                              "ends with it; cancel the run instead")
    if cluster.status.is_final:
        raise ClusterConflict(f"cluster #{cluster.id} has already ended "
                              f"({cluster.status.value})")
    if states.move(session, cluster.id, ClusterState.STOPPED,
                   reason=f"stopped by {caller.name} before it started",
                   stop_requested=True, expected=(ClusterState.QUEUED,)):
        session.commit()
    else:
        session.execute(
            update(Cluster).where(Cluster.id == cluster.id,
                                  Cluster.status.in_(states.LIVE_STATES))
            .values(stop_requested=True).execution_options(synchronize_session=False)
        )
        session.commit()
    session.refresh(cluster)
    return cluster


def _state_words(cluster: Cluster) -> str:
    if cluster.stop_requested and not cluster.status.is_final:
        return "stopping"
    return cluster.status.value


def touch(session: Session, cluster_id: int) -> None:
    """Someone used the cluster through Dockyard (read it, opened its dashboard): its idle
    timeout starts again."""
    session.execute(
        update(Cluster).where(Cluster.id == cluster_id, Cluster.status.in_(states.LIVE_STATES))
        .values(last_activity_at=utcnow()).execution_options(synchronize_session=False)
    )
    session.commit()


def cluster_of_run(session: Session, run_id: int) -> Cluster | None:
    """The run's cluster (its latest, should the worker have made a second after a
    restart)."""
    return session.scalar(
        select(Cluster).where(Cluster.run_id == run_id).order_by(Cluster.id.desc()).limit(1)
    )


def clusters_of_runs(session: Session, run_ids: list[int]) -> dict[int, int]:
    """Run id → the id of its (latest) cluster, for those of ``run_ids`` that have one:
    one query for a page of runs."""
    if not run_ids:
        return {}
    found = session.execute(
        select(Cluster.run_id, func.max(Cluster.id))
        .where(Cluster.run_id.in_(run_ids)).group_by(Cluster.run_id)
    ).all()
    return {run_id: cluster_id for run_id, cluster_id in found if run_id is not None}


def dashboard_path(cluster_id: int) -> str:
    """Where Dockyard serves the cluster's dashboard (the web service's own prefix)."""
    return f"/services/dockyard/clusters/{cluster_id}/dashboard"


def cluster_as_dict(cluster: Cluster, *, viewer: str) -> dict[str, Any]:
    """The API's JSON of a cluster, as ``viewer`` (a user's name) sees it: the dashboard
    is its owner's only (the proxy answers anyone else, admins too, 404), so for others
    it is null."""
    reachable = cluster.status == ClusterState.RUNNING and bool(cluster.dashboard_url)
    return {
        "id": cluster.id, "name": cluster.name, "owner": cluster.owner,
        "kind": cluster.kind.value, "image": cluster.image, "pool": cluster.pool,
        "status": cluster.status.value, "reason": cluster.reason, "workers": cluster.workers,
        "worker_cpu": cluster.worker_cpu, "worker_memory_mb": cluster.worker_memory_mb,
        "address": cluster.address, "run_id": cluster.run_id,
        "created_at": cluster.created_at, "started_at": cluster.started_at,
        "ended_at": cluster.ended_at, "last_activity_at": cluster.last_activity_at,
        "idle_timeout_seconds": cluster.idle_timeout_seconds,
        "dashboard": dashboard_path(cluster.id)
        if reachable and viewer == cluster.owner else None,
    }
