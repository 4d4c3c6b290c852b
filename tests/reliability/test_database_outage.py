"""The database goes away for 10 seconds while runs are going on (PostgreSQL, cut off
through a proxy so that only this test's Dockyard loses it).

While it is gone the web app answers 503 with a message a person can act on, quickly,
to the API and the pages alike; the worker keeps trying. When it is back, every run that
was accepted before the outage reaches its final state, once, with its output, and the
web app answers as before: nothing is lost."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from dockyard.models import ImageStatus, RunState
from dockyard.settings import Settings
from dockyard.web import create_app
from tests.conftest import USERS, TokenTable, auth
from tests.jobs.conftest import RunsDb, ThreadedWorker, add_images, log_file
from tests.support.proxy import PausableProxy

pytestmark = pytest.mark.postgres

ALICE = auth("tok-alice")
OUTAGE_SECONDS = 10
SHELL_IMAGE = "debian:bookworm-slim"
FINAL = (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.TIMED_OUT)


@pytest.mark.timeout(300)
def test_web_says_503_worker_waits_nothing_is_lost(
        postgres_via_proxy: tuple[str, PausableProxy], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    url, proxy = postgres_via_proxy
    for var in [v for v in __import__("os").environ if v.startswith("DOCKYARD_")]:
        monkeypatch.delenv(var)
    home = tmp_path / "home"
    home.mkdir()
    settings = Settings(home=home, database_url=url, job_backend="local",
                        job_namespace="reldb", worker_name="outage-worker",
                        worker_poll_seconds=0.2, max_runs_per_user=10,
                        job_dockyard_url="http://127.0.0.1:9/services/dockyard/")
    add_images(url, (SHELL_IMAGE, True, ImageStatus.READY))
    app = create_app(settings, identity=TokenTable(dict(USERS)))
    app.config["TESTING"] = False  # errors go through the handlers, as in production
    client = app.test_client()
    db = RunsDb(url)

    def submit(command: str) -> int:
        made = client.post("/api/v1/runs", headers=ALICE,
                           json={"image": SHELL_IMAGE, "command": command})
        assert made.status_code == 201, made.get_data(as_text=True)
        return int(made.json["id"])

    with ThreadedWorker(settings) as worker:
        # Some runs end while the database is away, some after it is back.
        during = [submit(f"sleep 2; echo during-{n}") for n in range(3)]
        after = [submit(f"sleep {OUTAGE_SECONDS + 4}; echo after-{n}") for n in range(3)]
        for run_id in during + after:
            db.wait_for(run_id, RunState.RUNNING, timeout=60)
        before_outage = len(client.get("/api/v1/runs", headers=ALICE).json["runs"])

        proxy.cut()
        cut_at = time.monotonic()
        answers: list[tuple[str, int, float, Any]] = []
        while time.monotonic() - cut_at < OUTAGE_SECONDS:
            for what, call in (
                ("api list", lambda: client.get("/api/v1/runs", headers=ALICE)),
                ("api submit", lambda: client.post("/api/v1/runs", headers=ALICE, json={
                    "image": SHELL_IMAGE, "command": "echo lost"})),
                ("page", lambda: client.get("/jobs/", headers=ALICE)),
                ("health", lambda: client.get("/health")),
            ):
                started = time.monotonic()
                response = call()
                answers.append((what, response.status_code, time.monotonic() - started,
                                response))
            time.sleep(0.5)
        proxy.restore()

        assert answers
        wrong = [(what, code) for what, code, _, _ in answers if code != 503]
        assert not wrong, f"answers while the database was away: {wrong}"
        slowest = max(seconds for _, _, seconds, _ in answers)
        assert slowest < 5, f"an answer took {slowest:.1f}s"
        api = next(r for what, _, _, r in answers if what == "api list").json
        assert api["error"] == "Database unavailable" and "try again" in api["detail"]
        page = next(r for what, _, _, r in answers if what == "page").get_data(as_text=True)
        assert "Database unavailable" in page and "try again" in page
        assert worker.thread.is_alive(), "the worker gave up"

        # Back: the web app answers at once, and takes new work.
        deadline = time.monotonic() + 15
        while client.get("/api/v1/runs", headers=ALICE).status_code != 200:
            assert time.monotonic() < deadline, "the web app did not come back"
            time.sleep(0.2)
        late = submit("echo after-the-outage")
        runs = {run_id: db.wait_for(run_id, *FINAL, timeout=90)
                for run_id in during + after + [late]}

    outputs = {run_id: log_file(settings, run_id).read_text() for run_id in runs}
    for index, run_id in enumerate(during):
        assert runs[run_id].status == RunState.SUCCEEDED, (runs[run_id].status,
                                                           runs[run_id].reason)
        assert outputs[run_id] == f"during-{index}\n"
    for index, run_id in enumerate(after):
        assert runs[run_id].status == RunState.SUCCEEDED
        assert outputs[run_id] == f"after-{index}\n"
    assert runs[late].status == RunState.SUCCEEDED
    for run_id in runs:
        transitions = [e.to_status for e in db.events(run_id) if e.from_status != e.to_status]
        # Started once, ended once (a job quicker than the worker's look may go from
        # PENDING to its end without being seen RUNNING).
        expected = ["QUEUED", "PENDING", "RUNNING", "SUCCEEDED"]
        if run_id == late and "RUNNING" not in transitions:
            expected.remove("RUNNING")
        assert transitions == expected, (run_id, transitions)
    # What was refused during the outage was not saved: the 503 said so.
    assert len(db.runs()) == before_outage + 1
    db.close()
    app.extensions["dockyard.engine"].dispose()
