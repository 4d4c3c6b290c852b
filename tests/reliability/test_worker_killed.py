"""The worker killed with SIGKILL, twice, while 50 runs are queued or running on the
real Docker engine; the user cancels some while no worker is there.

Every run reaches the final state it should (succeeded, failed with its exit code,
cancelled), keeps its output, and none is started twice: the engine's own event log
shows at most one container created per run."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from flask import Flask

from dockyard.models import ImageStatus, RunState
from dockyard.settings import Settings
from dockyard.web import create_app
from spawner.jobs.base import LABEL_NAMESPACE, LABEL_RUN_ID
from tests.conftest import USERS, TokenTable, auth
from tests.jobs.conftest import RunsDb, add_images, log_file
from tests.support.requirements import require_image

pytestmark = pytest.mark.docker

SHELL_IMAGE = "debian:bookworm-slim"
ALICE, BOB = auth("tok-alice"), auth("tok-bob")
FINAL = (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.TIMED_OUT)


class WorkerProcess:
    def __init__(self, settings: Settings, namespace: str, log: Path) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
        self.env.update(
            DOCKYARD_HOME=str(settings.home), DOCKYARD_JOB_BACKEND="docker",
            DOCKYARD_JOB_NAMESPACE=namespace, DOCKYARD_WORKER_NAME="killed-worker",
            DOCKYARD_WORKER_POLL_SECONDS="0.2", DOCKYARD_MAX_CONCURRENT_RUNS="10",
            DOCKYARD_MAX_RUNS_PER_USER="10",
            DOCKYARD_JOB_DOCKYARD_URL="http://127.0.0.1:9/services/dockyard/",
        )
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "dockyard.cli", "worker"],
                                            env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        assert self.process is not None and self.process.poll() is None, self.log.read_text()
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.kills += 1

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def setup(migrated: Settings, tmp_path: Path) -> Iterator[tuple[Flask, RunsDb, str, Any]]:
    require_image(SHELL_IMAGE)
    add_images(migrated.db_url, (SHELL_IMAGE, True, ImageStatus.READY))
    namespace = "rk" + secrets.token_hex(5)
    app = create_app(migrated, identity=TokenTable(dict(USERS)))
    app.config["TESTING"] = True
    db = RunsDb(migrated.db_url)
    engine = docker.from_env(timeout=60)
    try:
        yield app, db, namespace, engine
    finally:
        for container in engine.containers.list(
                all=True, filters={"label": f"{LABEL_NAMESPACE}={namespace}"}):
            container.remove(force=True)
        engine.close()
        db.close()
        app.extensions["dockyard.engine"].dispose()


class CreateCounter:
    """Containers created per run, counted from the engine's event stream as they happen
    (the engine keeps only its last few hundred events for later questions)."""

    def __init__(self, engine: Any, namespace: str) -> None:
        self.counts: dict[int, int] = {}
        self.stream = engine.events(decode=True, filters={
            "type": "container", "event": "create",
            "label": [f"{LABEL_NAMESPACE}={namespace}"]})
        self.thread = threading.Thread(target=self._count, daemon=True)
        self.thread.start()

    def _count(self) -> None:
        try:
            for event in self.stream:
                # The installation's other containers (an image inspection) carry its
                # namespace too, but no run.
                run_id = event["Actor"]["Attributes"].get(LABEL_RUN_ID)
                if run_id is not None:
                    self.counts[int(run_id)] = self.counts.get(int(run_id), 0) + 1
        except Exception:  # the stream is closed at the end
            pass

    def close(self) -> dict[int, int]:
        time.sleep(0.5)  # let the last events arrive
        self.stream.close()
        return dict(self.counts)


@pytest.mark.timeout(400)
def test_fifty_runs_survive_two_kill_9s(setup: tuple[Flask, RunsDb, str, Any],
                                        migrated: Settings, tmp_path: Path) -> None:
    app, db, namespace, engine = setup
    client = app.test_client()
    counter = CreateCounter(engine, namespace)
    worker = WorkerProcess(migrated, namespace, tmp_path / "worker.log")

    def submit(headers: dict[str, str], command: str) -> int:
        made = client.post("/api/v1/runs", headers=headers, json={
            "image": SHELL_IMAGE, "command": command, "memory_mb": 32, "cpu": 0.1})
        assert made.status_code == 201, made.json
        return int(made.json["id"])

    expected: dict[int, tuple[RunState, int | None, str | None]] = {}
    worker.start()
    # Long runs first, so that some of those to be cancelled are running at the kill.
    to_cancel = [submit(BOB, "sleep 60") for _ in range(5)]
    for run_id in to_cancel:
        expected[run_id] = (RunState.CANCELLED, None, None)
    for n in range(40):
        headers = ALICE if n % 2 else BOB
        run_id = submit(headers, f"sleep 1; echo ok-{n}")
        expected[run_id] = (RunState.SUCCEEDED, 0, f"ok-{n}")
    for n in range(5):
        run_id = submit(ALICE, f"echo failing-{n}; exit 3")
        expected[run_id] = (RunState.FAILED, 3, f"failing-{n}")
    assert len(expected) == 50

    def count(*states: RunState) -> int:
        return sum(1 for run in db.runs() if run.status in states)

    deadline = time.monotonic() + 90
    while count(RunState.RUNNING) < 8 or count(RunState.SUCCEEDED) < 3:
        assert time.monotonic() < deadline, worker.log.read_text()[-3000:]
        time.sleep(0.1)
    worker.kill()
    queued_at_kill = count(RunState.QUEUED, RunState.PENDING)
    running_at_kill = count(RunState.RUNNING)
    # No worker: the user cancels; jobs on the engine go on and end.
    for run_id in to_cancel:
        response = client.post(f"/api/v1/runs/{run_id}/cancel", headers=BOB)
        assert response.status_code == 202, response.json
    time.sleep(2)
    worker.start()
    time.sleep(3)  # it reconciles, starts more, ...
    worker.kill()  # ... and dies again mid-way
    worker.start()

    runs = {run_id: db.wait_for(run_id, *FINAL, timeout=240) for run_id in expected}
    worker.close()
    creates = counter.close()

    wrong = []
    for run_id, (state, exit_code, output) in expected.items():
        run = runs[run_id]
        if run.status != state or (exit_code is not None and run.exit_code != exit_code):
            wrong.append((run_id, run.status, run.exit_code, run.reason))
        transitions = [e.to_status for e in db.events(run_id) if e.from_status != e.to_status]
        if transitions.count("RUNNING") > 1 or creates.get(run_id, 0) > 1:
            wrong.append((run_id, "started twice", transitions, creates.get(run_id)))
        if output is not None and output not in log_file(migrated, run_id).read_text():
            wrong.append((run_id, "output lost"))
        if state != RunState.CANCELLED and creates.get(run_id) != 1:
            wrong.append((run_id, "never ran", creates.get(run_id)))
    assert not wrong, wrong
    assert not [r for r in db.runs() if r.id not in expected], "a run appeared from nowhere"
    assert worker.kills == 2 and running_at_kill >= 8 and queued_at_kill >= 10, (
        running_at_kill, queued_at_kill)
    leftovers = engine.containers.list(all=True,
                                       filters={"label": f"{LABEL_NAMESPACE}={namespace}"})
    assert leftovers == [], "every job container is removed once its run has ended"
