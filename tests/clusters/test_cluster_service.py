"""The clusters service on a real database (SQLite and PostgreSQL): what a cluster request
may ask for, whose clusters one sees, and the moves scale and stop may make; and the
``cluster`` of a run or definition as the jobs service checks it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from dockyard.clusters import states
from dockyard.clusters.schemas import ClusterIn, ClusterScaleIn
from dockyard.clusters.service import (
    ClusterConflict,
    ClusterLimits,
    ClusterNotFound,
    InvalidCluster,
    cluster_as_dict,
    cluster_for_run,
    cluster_of_run,
    create_cluster,
    dashboard_path,
    get_cluster,
    list_clusters,
    request_stop,
    scale_cluster,
    touch,
    workers_in_use,
)
from dockyard.db import make_engine, make_session_factory
from dockyard.jobs.schemas import DefinitionIn, InvalidJob, JobLimits, RunIn
from dockyard.jobs.service import (
    create_definition,
    create_run,
    new_attempt,
    run_from_definition,
)
from dockyard.migrate import upgrade
from dockyard.models import Cluster, ClusterState, Image, ImageStatus, Run, RunState, utcnow
from dockyard.settings import Settings
from dockyard.web.auth import User
from tests.support.postgres import fresh_database

BOTH = "team/both:1"  # Ray and Spark
SPARK_ONLY = "team/spark:1"
NEITHER = "team/plain:1"
UNINSPECTED = "team/new:1"
ALICE, BOB, ADMIN = User("alice"), User("bob"), User("admin", admin=True)
ECS_POOL = {"backend": "ecs", "cluster": "batch", "log_group": "/dockyard/jobs",
            "launch_type": "EC2"}


def _images() -> list[Image]:
    now = utcnow()

    def image(reference: str, contents: dict[str, str | None], inspected: bool = True,
              default: bool = False) -> Image:
        return Image(reference=reference, for_jobs=True, default_for_jobs=default,
                     status=ImageStatus.READY, created_by="admin", contents=contents,
                     inspected_at=now if inspected else None)

    return [
        image(BOTH, {"ray": "2.40.0", "spark": "3.5.3", "python": "3.11"}, default=True),
        image(SPARK_ONLY, {"ray": None, "spark": "3.5.3"}),
        image(NEITHER, {"python": "3.11"}),
        image(UNINSPECTED, {}, inspected=False),
    ]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'dockyard.sqlite'}"
    else:
        with fresh_database("dockyard_clusters") as url:
            yield url


@pytest.fixture
def settings(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for var in [v for v in __import__("os").environ if v.startswith("DOCKYARD_")]:
        monkeypatch.delenv(var)
    home = tmp_path / "home"
    home.mkdir()
    upgrade(db_url)
    return Settings(home=home, database_url=db_url, job_backend="docker",
                    job_pools={"swarm": {"backend": "swarm"}, "ecs": ECS_POOL,
                               "laptop": {"backend": "local"},
                               "team": {"backend": "docker", "users": ["bob"]}},
                    max_cluster_workers_per_user=4, job_max_cpu=2, job_max_memory_mb=4096)


@pytest.fixture
def session(settings: Settings) -> Iterator[Session]:
    engine = make_engine(settings.db_url)
    with make_session_factory(engine)() as session:
        session.add_all(_images())
        session.commit()
        yield session
    engine.dispose()


@pytest.fixture
def limits(settings: Settings) -> ClusterLimits:
    return ClusterLimits.from_settings(settings)


@pytest.fixture
def job_limits(settings: Settings) -> JobLimits:
    return JobLimits.from_settings(settings)


def fields_of(problems: InvalidCluster | InvalidJob) -> dict[str, str]:
    return {item["field"]: item["message"] for item in problems.detail}


def new(session: Session, limits: ClusterLimits, caller: User = ALICE, **body: object) -> Cluster:
    return create_cluster(session, caller, ClusterIn.model_validate(
        {"name": "work", "kind": "ray", "workers": 2, **body}), limits)


# -- refusals, each a field and a sentence ---------------------------------------------------
def test_a_cluster_is_queued_with_the_default_image_and_a_head_of_a_workers_size(
        session: Session, limits: ClusterLimits) -> None:
    cluster = new(session, limits, worker_cpu=0.5, worker_memory_mb=1024)
    assert (cluster.status, cluster.image, cluster.owner, cluster.backend) == (
        ClusterState.QUEUED, BOTH, "alice", "docker")
    # A Ray head also runs Ray's own services: never below 2048 MB.
    assert (cluster.head_cpu, cluster.head_memory_mb) == (0.5, 2048)
    shown = cluster_as_dict(cluster, viewer="alice")
    assert shown["status"] == "queued" and shown["kind"] == "ray"
    assert shown["dashboard"] is None  # not running yet
    assert shown["idle_timeout_seconds"] == 3600 and shown["run_id"] is None
    large = new(session, limits, name="large", workers=1, worker_memory_mb=3072)
    assert (large.head_cpu, large.head_memory_mb) == (1.0, 3072)
    spark = new(session, limits, name="spark", kind="spark", workers=1,
                worker_memory_mb=1024)
    assert (spark.head_cpu, spark.head_memory_mb) == (1.0, 1024)


def test_too_many_workers_is_refused_counting_live_clusters(
        session: Session, limits: ClusterLimits) -> None:
    with pytest.raises(InvalidCluster) as refused:
        new(session, limits, workers=5)
    assert fields_of(refused.value) == {
        "workers": "at most 4 cluster workers per user; ask for 4 or fewer"}
    new(session, limits, name="first", workers=3)
    with pytest.raises(InvalidCluster) as refused:
        new(session, limits, name="second", workers=2)
    assert fields_of(refused.value)["workers"] == (
        "alice may have 4 cluster workers at once and has 3 in use; ask for 1 or fewer")
    # Another user's clusters are theirs.
    new(session, limits, caller=BOB, name="second", workers=4)


def test_an_image_without_the_engine_is_refused_saying_what_it_has(
        session: Session, limits: ClusterLimits) -> None:
    with pytest.raises(InvalidCluster) as refused:
        new(session, limits, image=SPARK_ONLY)
    assert fields_of(refused.value) == {"kind": (
        f"image '{SPARK_ONLY}' has no Ray; it has Spark 3.5.3: ask for a Spark cluster, "
        "or choose an image with Ray")}
    with pytest.raises(InvalidCluster) as refused:
        new(session, limits, image=NEITHER, kind="spark")
    assert "has no Spark; it has neither Ray nor Spark" in fields_of(refused.value)["kind"]
    with pytest.raises(InvalidCluster) as refused:
        new(session, limits, image=UNINSPECTED)
    assert "has not been inspected yet" in fields_of(refused.value)["kind"]
    assert new(session, limits, image=SPARK_ONLY, kind="spark").image == SPARK_ONLY


@pytest.mark.parametrize(("pool", "backend"), [("ecs", "ecs"), ("laptop", "local")])
def test_a_pool_that_cannot_host_a_cluster_is_refused(
        session: Session, limits: ClusterLimits, pool: str, backend: str) -> None:
    with pytest.raises(InvalidCluster) as refused:
        new(session, limits, pool=pool)
    assert fields_of(refused.value) == {"pool": (
        f"pool '{pool}' runs on {backend}, which cannot host a cluster; choose a pool on "
        "Docker or Swarm (default, swarm, team)")}


def test_over_cpu_memory_unknown_or_foreign_pool_and_run_names_are_refused(
        session: Session, limits: ClusterLimits) -> None:
    with pytest.raises(InvalidCluster) as refused:
        new(session, limits, name="run-7", worker_cpu=3, worker_memory_mb=8192, pool="team")
    assert fields_of(refused.value) == {
        "name": "names starting with 'run-' are kept for the clusters of runs; choose another",
        "pool": "you may not use pool 'team'; your pools: default, swarm, ecs, laptop",
        "worker_cpu": "at most 2 CPUs per worker",
        "worker_memory_mb": "at most 4096 MB per worker",
    }
    with pytest.raises(InvalidCluster) as refused:
        new(session, limits, pool="nowhere", image="team/absent:1")
    assert fields_of(refused.value) == {
        "pool": "unknown pool 'nowhere'; choose one of: default, swarm, ecs, laptop",
        "image": "Image 'team/absent:1' is not in Dockyard's catalog; choose one of the "
                 "images offered, or ask an admin to add it."}
    assert new(session, limits, caller=BOB, pool="team").pool == "team"


def test_a_spark_worker_too_small_for_an_executor_is_refused(
        session: Session, limits: ClusterLimits) -> None:
    with pytest.raises(InvalidCluster) as refused:
        new(session, limits, kind="spark", worker_memory_mb=768)
    assert fields_of(refused.value) == {"worker_memory_mb": (
        "a Spark worker needs at least 1024 MB (its daemon and one executor); ask for more "
        "memory per worker")}
    assert new(session, limits, kind="spark", worker_memory_mb=1024).worker_memory_mb == 1024
    # Ray workers that small are fine.
    assert new(session, limits, name="small", worker_memory_mb=768).kind == "ray"


def test_a_live_name_is_taken_until_the_cluster_ends(
        session: Session, limits: ClusterLimits) -> None:
    first = new(session, limits, workers=1)
    with pytest.raises(ClusterConflict) as taken:
        new(session, limits, workers=1)
    assert taken.value.detail == [{"field": "name", "message": "you already have a live "
                                   "cluster named 'work'; stop it or choose another name"}]
    new(session, limits, caller=BOB, workers=1)  # names are per user
    request_stop(session, ALICE, first.id)
    assert new(session, limits, workers=1).id != first.id


# -- who sees what ---------------------------------------------------------------------------
def test_another_users_cluster_does_not_exist_for_them(
        session: Session, limits: ClusterLimits) -> None:
    mine = new(session, limits)
    theirs = new(session, limits, caller=BOB, name="other")
    with pytest.raises(ClusterNotFound):
        get_cluster(session, BOB, mine.id)
    for act in (lambda: scale_cluster(session, BOB, mine.id, ClusterScaleIn(workers=1), limits),
                lambda: request_stop(session, BOB, mine.id)):
        with pytest.raises(ClusterNotFound):
            act()
    assert get_cluster(session, ADMIN, mine.id).owner == "alice"
    assert [c.id for c in list_clusters(session, ALICE)] == [mine.id]
    assert list_clusters(session, ALICE, owner="bob") == []
    assert [c.id for c in list_clusters(session, ADMIN)] == [theirs.id, mine.id]
    assert [c.id for c in list_clusters(session, ADMIN, owner="bob")] == [theirs.id]
    assert [c.id for c in list_clusters(session, ALICE, name="work")] == [mine.id]
    request_stop(session, ALICE, mine.id)
    assert list_clusters(session, ALICE) == []
    assert [c.id for c in list_clusters(session, ALICE, state="ended")] == [mine.id]
    assert [c.id for c in list_clusters(session, ALICE, state="all")] == [mine.id]


# -- scale and stop --------------------------------------------------------------------------
def test_scale_counts_the_other_clusters_but_not_the_one_scaled(
        session: Session, limits: ClusterLimits) -> None:
    cluster = new(session, limits, workers=2)
    new(session, limits, name="small", workers=1)
    assert scale_cluster(session, ALICE, cluster.id, ClusterScaleIn(workers=3),
                         limits).workers == 3
    with pytest.raises(InvalidCluster) as refused:
        scale_cluster(session, ALICE, cluster.id, ClusterScaleIn(workers=4), limits)
    assert fields_of(refused.value) == {"workers": "alice may have 4 cluster workers at once "
                                        "and has 1 in use; ask for 3 or fewer"}
    assert scale_cluster(session, ALICE, cluster.id, ClusterScaleIn(workers=1),
                         limits).workers == 1


def test_stop_ends_a_queued_cluster_at_once_and_asks_the_worker_for_a_started_one(
        session: Session, limits: ClusterLimits) -> None:
    queued = new(session, limits, name="queued", workers=1)
    stopped = request_stop(session, ALICE, queued.id)
    assert stopped.status == ClusterState.STOPPED and stopped.ended_at is not None
    assert stopped.reason == "stopped by alice before it started"
    with pytest.raises(ClusterConflict, match="has already ended"):
        request_stop(session, ALICE, queued.id)
    with pytest.raises(ClusterConflict, match="is stopped"):
        scale_cluster(session, ALICE, queued.id, ClusterScaleIn(workers=2), limits)

    running = new(session, limits, name="running", workers=1)
    assert states.move(session, running.id, ClusterState.STARTING)
    assert states.move(session, running.id, ClusterState.RUNNING, address="ray://head:10001",
                       dashboard_url="http://172.18.0.2:8265")
    session.commit()
    session.refresh(running)
    assert cluster_as_dict(running, viewer="alice")["dashboard"] == \
        dashboard_path(running.id) == f"/services/dockyard/clusters/{running.id}/dashboard"
    # The dashboard is its owner's alone: an admin's JSON has none (the proxy says 404).
    assert cluster_as_dict(running, viewer="admin")["dashboard"] is None
    asked = request_stop(session, ALICE, running.id)
    assert (asked.status, asked.stop_requested) == (ClusterState.RUNNING, True)
    with pytest.raises(ClusterConflict, match="is stopping"):
        scale_cluster(session, ALICE, running.id, ClusterScaleIn(workers=2), limits)
    # The status only moves forward: a stopped cluster never runs again.
    assert states.move(session, running.id, ClusterState.STOPPED)
    assert not states.move(session, running.id, ClusterState.RUNNING)
    assert not states.move(session, running.id, ClusterState.FAILED)
    session.commit()


def test_touch_restarts_the_idle_clock(session: Session, limits: ClusterLimits) -> None:
    cluster = new(session, limits, workers=1)
    before = cluster.last_activity_at
    touch(session, cluster.id)
    session.refresh(cluster)
    assert cluster.last_activity_at > before


def test_an_idle_stop_loses_to_a_use_after_the_worker_looked(
        session: Session, limits: ClusterLimits) -> None:
    cluster = new(session, limits, workers=1)
    assert states.move(session, cluster.id, ClusterState.STARTING)
    assert states.move(session, cluster.id, ClusterState.RUNNING)
    session.commit()
    session.refresh(cluster)
    # The worker found it idle since this moment; then its owner opened its page.
    looked = cluster.last_activity_at
    touch(session, cluster.id)
    assert not states.stop_if_idle(session, cluster.id, looked)
    session.commit()
    session.refresh(cluster)
    assert cluster.status == ClusterState.RUNNING
    # Unused since: it stops.
    assert states.stop_if_idle(session, cluster.id, cluster.last_activity_at)
    session.commit()
    session.refresh(cluster)
    assert cluster.status == ClusterState.STOPPING
    assert not states.stop_if_idle(session, cluster.id, utcnow())  # stopping already


# -- a run's cluster, through the jobs service -----------------------------------------------
def run_body(**fields: object) -> RunIn:
    return RunIn.model_validate({"command": ["python", "-c", "print(1)"], **fields})


def test_a_runs_cluster_is_checked_with_field_names_under_cluster(
        session: Session, job_limits: JobLimits) -> None:
    with pytest.raises(InvalidJob) as refused:
        create_run(session, ALICE, run_body(image=SPARK_ONLY, cluster={
            "kind": "ray", "workers": 9, "worker_cpu": 4}), job_limits)
    found = fields_of(refused.value)
    assert set(found) == {"cluster.kind", "cluster.workers", "cluster.worker_cpu"}
    with pytest.raises(InvalidJob) as refused:
        create_run(session, ALICE, run_body(cluster={"kind": "spark", "worker_memory_mb": 512}),
                   job_limits)
    assert "at least 1024 MB" in fields_of(refused.value)["cluster.worker_memory_mb"]
    assert found["cluster.workers"] == "at most 4 cluster workers per user; ask for 4 or fewer"
    with pytest.raises(InvalidJob) as refused:
        create_run(session, ALICE, run_body(pool="ecs", cluster={"kind": "spark"}), job_limits)
    assert fields_of(refused.value) == {"pool": (
        "pool 'ecs' runs on ecs, which cannot host a cluster; choose a pool on Docker or "
        "Swarm (default, swarm, team)")}


def test_active_runs_count_until_their_cluster_row_exists(
        session: Session, job_limits: JobLimits, limits: ClusterLimits) -> None:
    run = create_run(session, ALICE, run_body(cluster={"kind": "ray", "workers": 3}),
                     job_limits)
    assert run.cluster == {"kind": "ray", "workers": 3, "worker_cpu": 1.0,
                           "worker_memory_mb": 2048}
    assert workers_in_use(session, "alice") == 3
    with pytest.raises(InvalidCluster):
        new(session, limits, workers=2)
    # The worker makes the run's cluster: it is counted once, as a cluster.
    session.add(cluster_for_run(run))
    session.commit()
    found = cluster_of_run(session, run.id)
    assert found is not None and (found.name, found.run_id, found.workers) == (
        f"run-{run.id}", run.id, 3)
    assert found.idle_timeout_seconds == 0  # a run's cluster ends with its run
    assert workers_in_use(session, "alice") == 3
    with pytest.raises(ClusterConflict, match="cancel the run instead"):
        request_stop(session, ALICE, found.id)
    with pytest.raises(ClusterConflict, match="its size is the run's"):
        scale_cluster(session, ALICE, found.id, ClusterScaleIn(workers=1), limits)
    # A run that ended counts no more.
    session.execute(Run.__table__.update().where(Run.id == run.id).values(
        status=RunState.SUCCEEDED.name))
    assert states.move(session, found.id, ClusterState.STOPPED)
    session.commit()
    assert workers_in_use(session, "alice") == 0


def test_a_retried_runs_new_cluster_is_not_refused_for_the_old_ones_workers(
        session: Session, job_limits: JobLimits) -> None:
    """A run with a cluster of all the owner's workers fails and is retried: the attempt
    is queued before the failed run's cluster is removed, and that cluster (its run has
    ended) must not count against the attempt."""
    run = create_run(session, ALICE, run_body(cluster={"kind": "ray", "workers": 4},
                                              max_retries=1), job_limits)
    old = cluster_for_run(run)
    session.add(old)
    session.flush()
    assert states.move(session, old.id, ClusterState.STARTING)
    assert states.move(session, old.id, ClusterState.RUNNING)
    session.execute(Run.__table__.update().where(Run.id == run.id).values(
        status=RunState.FAILED.name))
    retry = new_attempt(session, session.get(Run, run.id), actor="worker", reason="retry")
    session.commit()
    session.refresh(old)
    assert old.status == ClusterState.RUNNING  # still on the engine, being removed
    # The worker, about to make the attempt's cluster, counts the clusters there are;
    # a request counts the attempt's ask too, but never the old cluster.
    assert workers_in_use(session, "alice", asked_by_runs=False) == 0
    assert workers_in_use(session, "alice") == 4
    made = cluster_for_run(retry)
    session.add(made)
    session.commit()
    assert made.id != old.id and made.name == f"run-{retry.id}"
    assert cluster_of_run(session, retry.id).id == made.id
    assert workers_in_use(session, "alice", asked_by_runs=False) == 4


def test_a_definition_keeps_its_cluster_and_its_runs_copy_it(
        session: Session, job_limits: JobLimits) -> None:
    body = DefinitionIn.model_validate({"name": "nightly", "command": "python job.py",
                                        "cluster": {"kind": "spark", "workers": 4}})
    # Saving only says what its runs will ask for: the workers in use do not count yet.
    create_run(session, ALICE, run_body(cluster={"kind": "ray", "workers": 4}), job_limits)
    definition = create_definition(session, ALICE, body, job_limits)
    assert definition.cluster == {"kind": "spark", "workers": 4, "worker_cpu": 1.0,
                                  "worker_memory_mb": 2048}
    fired = run_from_definition(session, definition, trigger=None, actor="alice",
                                reason="test")
    session.commit()
    assert fired.cluster == definition.cluster
    with pytest.raises(InvalidJob) as refused:
        create_run(session, ALICE, RunIn(definition_id=definition.id), job_limits)
    assert set(fields_of(refused.value)) == {"cluster.workers"}
    with pytest.raises(InvalidJob) as refused:
        create_definition(session, ALICE, DefinitionIn.model_validate({
            "name": "wrong", "command": "true", "image": NEITHER, "pool": "laptop",
            "cluster": {"kind": "ray", "workers": 5}}), job_limits)
    assert set(fields_of(refused.value)) == {"pool", "cluster.kind", "cluster.workers"}


def test_the_partial_unique_index_holds_in_the_database(session: Session,
                                                         limits: ClusterLimits) -> None:
    """Two live clusters of one name cannot exist even when two requests race past the
    service's own check."""
    new(session, limits, workers=1)
    twin = Cluster(name="work", owner="alice", kind="ray", image=BOTH, workers=1,
                   worker_cpu=1, worker_memory_mb=1024, head_cpu=1, head_memory_mb=1024)
    session.add(twin)
    with pytest.raises(Exception, match="(?i)unique"):
        session.commit()
    session.rollback()
    twin = Cluster(name="work", owner="alice", kind="ray", image=BOTH, workers=1,
                   worker_cpu=1, worker_memory_mb=1024, head_cpu=1, head_memory_mb=1024,
                   status=ClusterState.FAILED)
    session.add(twin)
    session.commit()
    assert len(session.scalars(select(Cluster).where(Cluster.name == "work")).all()) == 2
