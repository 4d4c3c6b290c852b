"""The Docker engine restarts while runs are going on.

Runs whose containers the restart stopped end FAILED with a reason (or, when they may
be retried, come back as a new attempt that succeeds); runs still queued start once the
engine is back; nothing is left RUNNING or PENDING, and the worker goes on by itself.

Restarting the engine stops every container on it, so this test needs an engine to
itself: with anything else running it skips (under CI=true: fails) rather than break
someone's work. It always leaves an engine running, also when it fails.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from dockyard.models import ImageStatus, RunState
from dockyard.settings import Settings
from dockyard.web import create_app
from spawner.jobs.base import LABEL_NAMESPACE
from tests.conftest import USERS, TokenTable, auth
from tests.jobs.conftest import RunsDb, ThreadedWorker, add_images, log_file
from tests.support.requirements import missing, require_image
from tests.support.swarm import swarm_active, swarm_lock

pytestmark = pytest.mark.docker

SHELL_IMAGE = "debian:bookworm-slim"
ALICE = auth("tok-alice")
FINAL = (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.TIMED_OUT)
DOCKERD_LOG = Path("/var/log/dockerd.log")


def _dockerd_pid() -> int | None:
    found = subprocess.run(["pidof", "dockerd"], capture_output=True, text=True)
    return int(found.stdout.split()[0]) if found.returncode == 0 and found.stdout.split() \
        else None


def _engine_answers(timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client = docker.from_env(timeout=5)
            client.ping()
            client.close()
            return True
        except Exception:  # not up yet
            time.sleep(0.5)
    return False


def start_dockerd() -> None:
    """Start the engine as .ci/run does, detached from this test process."""
    with open(DOCKERD_LOG, "ab") as log:
        subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    assert _engine_answers(90), "dockerd did not come back:\n" + DOCKERD_LOG.read_text()[-2000:]


def restart_dockerd() -> None:
    pid = _dockerd_pid()
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while _dockerd_pid() == pid:
        assert time.monotonic() < deadline, "dockerd did not stop"
        time.sleep(0.2)
    start_dockerd()


def other_test_runs() -> list[int]:
    """pytest processes on this machine other than this one, its parents and children."""
    mine = {os.getpid()}
    pid = os.getpid()
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        mine.add(pid)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if b"pytest" in command and parent not in mine:
            found.append(int(entry.name))
    return sorted(found)


@pytest.fixture
def engine_to_ourselves() -> Iterator[None]:
    require_image(SHELL_IMAGE)
    if _dockerd_pid() is None or os.geteuid() != 0:
        missing("A dockerd this test may restart", "run as root with dockerd started as in "
                ".ci/run (not under systemd).")
    # Holding the swarm tests' lock keeps them from turning swarm mode on or starting
    # services meanwhile. A swarm with no services survives a restart untouched, so swarm
    # mode being on (a machine's own, or one a killed test run left) is no reason to stop.
    with swarm_lock():
        engine = docker.from_env(timeout=30)
        others = [c.name for c in engine.containers.list()]
        services = ([s.name for s in engine.services.list()]
                    if swarm_active(engine) else [])
        engine.close()
        if others or services:
            missing("A Docker engine to itself", "containers or swarm services are running ("
                    f"{', '.join((others + services)[:5])}); restarting the engine would "
                    "stop them.")
        runs = other_test_runs()
        if runs:
            missing("A Docker engine to itself", f"other test runs are going on (pids {runs})"
                    " and may start containers at any moment.")
        try:
            yield
        finally:
            if not _engine_answers(5):
                start_dockerd()


@pytest.mark.timeout(400)
def test_runs_end_with_a_reason_or_retry_and_none_is_stuck(
        engine_to_ourselves: None, migrated: Settings, tmp_path: Path) -> None:
    namespace = "rd" + secrets.token_hex(5)
    settings = migrated.model_copy(update=dict(
        job_backend="docker", job_namespace=namespace, worker_name="restart-worker",
        worker_poll_seconds=0.2, max_concurrent_runs=5, max_runs_per_user=5,
        job_dockyard_url="http://127.0.0.1:9/services/dockyard/"))
    add_images(settings.db_url, (SHELL_IMAGE, True, ImageStatus.READY))
    app = create_app(settings, identity=TokenTable(dict(USERS)))
    app.config["TESTING"] = True
    client = app.test_client()
    db = RunsDb(settings.db_url)

    def submit(command: str, **fields: Any) -> int:
        made = client.post("/api/v1/runs", headers=ALICE, json={
            "image": SHELL_IMAGE, "command": command, "memory_mb": 32, "cpu": 0.2, **fields})
        assert made.status_code == 201, made.json
        return int(made.json["id"])

    try:
        with ThreadedWorker(settings) as worker:
            doomed = [submit("sleep 120") for _ in range(3)]
            # The first attempt waits (and is cut off); the second finishes at once.
            retried = [submit('if [ "$DOCKYARD_ATTEMPT" = 1 ]; then sleep 120; fi; '
                              'echo attempt-$DOCKYARD_ATTEMPT', max_retries=1)
                       for _ in range(2)]
            # Beyond the five at once: still queued when the engine goes.
            queued = [submit("echo queued-ran") for _ in range(2)]
            for run_id in doomed + retried:
                db.wait_for(run_id, RunState.RUNNING, timeout=60)
            assert all(db.run(r).status == RunState.QUEUED for r in queued)

            restart_dockerd()

            runs = {r: db.wait_for(r, *FINAL, timeout=120) for r in doomed + retried + queued}
            # The reason says the job was stopped from outside (SIGTERM from the engine's
            # shutdown, or SIGKILL when it did not stop in time) or that it vanished.
            for run_id in doomed:
                run = runs[run_id]
                assert run.status == RunState.FAILED, (run.status, run.reason)
                assert "killed by SIG" in run.reason or "vanished" in run.reason, run.reason
            # Those that may be retried come back as a second attempt, which succeeds.
            attempts = {r.retry_of_id: r for r in db.runs() if r.retry_of_id in retried}
            assert set(attempts) == set(retried)
            for run_id in retried:
                assert runs[run_id].status == RunState.FAILED and runs[run_id].reason, runs[run_id]
                second = db.wait_for(attempts[run_id].id, *FINAL, timeout=60)
                assert second.status == RunState.SUCCEEDED and second.attempt == 2
                assert log_file(settings, second.id).read_text() == "attempt-2\n"
            for run_id in queued:
                assert runs[run_id].status == RunState.SUCCEEDED, (runs[run_id].status,
                                                                   runs[run_id].reason)
                assert log_file(settings, run_id).read_text() == "queued-ran\n"
            # Nothing is left half-way, and the worker is still at work.
            stuck = [(r.id, r.status) for r in db.runs() if r.status not in FINAL]
            assert not stuck, stuck
            assert worker.thread.is_alive()
            reasons = {runs[r].reason for r in doomed + retried}
            print(f"\nreasons after the engine restart: {reasons}")
    finally:
        engine = docker.from_env(timeout=60)
        for container in engine.containers.list(
                all=True, filters={"label": f"{LABEL_NAMESPACE}={namespace}"}):
            container.remove(force=True)
        engine.close()
        db.close()
        app.extensions["dockyard.engine"].dispose()
