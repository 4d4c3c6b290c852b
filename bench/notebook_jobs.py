"""Notebook jobs benchmark: a 10-cell notebook run as a Dockyard job against the same
notebook run by papermill in a bare container of the same image, in the same run.

- Dockyard: the notebook is uploaded through the REST API (multipart POST /api/v1/runs,
  a real HTTP server at the Docker gateway, SQLite as with ``make up``) and run by the
  worker (its own process, Docker backend). The job container fetches its snapshot
  through the API, runs papermill and sends the executed notebook back. Timed from the
  submit until the run is SUCCEEDED (its output.ipynb is stored by then: the job sends it
  before it exits; checked after each run, untimed).
- Baseline: ``docker run --rm IMAGE papermill in.ipynb out.ipynb -p ...`` through the
  Docker SDK (create and start, wait, remove), the notebook bind-mounted and the output
  written back into the same directory, with the limits and hardening a job container
  gets (CPU, memory, pids, init, user, capabilities). Timed from the start call until
  ``wait`` returns (the output is written then); the removal after it is not timed, as
  Dockyard records SUCCEEDED before it removes its container.

Same image, same notebook, same parameters. The two sides alternate run by run (which
goes first alternates too), after one untimed warm-up run each; prints p50 / p95 / max
and the ratio of the p50s (goal: Dockyard ≤ 1.15× the baseline).

    .venv/bin/python bench/notebook_jobs.py [--runs 10] [--image dockyard/notebook:latest]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import nbformat
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.report import Results, percentile  # noqa: E402
from dockyard.containers import container_gateway  # noqa: E402
from dockyard.settings import Settings  # noqa: E402

TOKEN = "bench-alice"
CPU, MEMORY_MB = 1.0, 1024
PARAMETERS = {"alpha": 0.5, "name": "bench", "n": 100}
#: The notebook: a parameters cell, then nine light cells ending with a print.
CELLS = [
    "alpha = 0.1\nname = 'default'\nn = 10",
    "import json\nimport math\nimport statistics",
    "import random\nrandom.seed(n)",
    "values = [random.random() * alpha for _ in range(n)]",
    "total = sum(values)",
    "mean = statistics.mean(values)",
    "squares = [v * v for v in values]",
    "root = math.sqrt(sum(squares))",
    "summary = {'name': name, 'alpha': alpha, 'total': round(total, 6), 'root': round(root, 6)}",
    "print(json.dumps(summary, sort_keys=True))",
]
FINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")
RUN_LIMIT = 300.0  # seconds one run may take before the benchmark stops


class BenchIdentity:
    """One fixed token instead of a hub (the hub's token check is not what is measured)."""

    def user_for_token(self, token: str) -> Any:
        from dockyard.web.auth import User

        return User("alice") if token == TOKEN else None

    def login_redirect(self, next_url: str) -> Any:  # pragma: no cover - API only
        raise NotImplementedError

    def finish_login(self, code: str, state: str | None) -> tuple[str, str]:  # pragma: no cover
        raise NotImplementedError


def write_notebook(path: Path) -> bytes:
    cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    cells[0].metadata["tags"] = ["parameters"]
    notebook = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {
        "name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}})
    nbformat.write(notebook, path)
    return path.read_bytes()


def printed(executed: bytes) -> str:
    """What the executed notebook's cells printed: both sides must print the same."""
    notebook = json.loads(executed)
    return "".join("".join(output.get("text", "")) for cell in notebook["cells"]
                   for output in cell.get("outputs", []) if output.get("output_type") == "stream")


def row(label: str, values: list[float]) -> str:
    return (f"  {label:<30} p50 {percentile(values, 0.5):6.2f} s   p95 "
            f"{percentile(values, 0.95):6.2f} s   max {max(values):6.2f} s   (n={len(values)})")


# -- the baseline: papermill in a bare container -------------------------------------------
class Bare:
    def __init__(self, engine: Any, image: str, work: Path, label: str, pids_limit: int) -> None:
        self.engine = engine
        self.image = image
        self.work = work
        self.label = label
        self.pids_limit = pids_limit
        config = engine.images.get(image).attrs.get("Config") or {}
        user = (config.get("User") or "").strip()
        # As a job runs: the image's user, never root.
        self.user = user if user and user.split(":")[0] not in ("root", "0") else "1000:1000"

    def run_one(self, notebook: bytes) -> tuple[float, bytes]:
        (self.work / "out.ipynb").unlink(missing_ok=True)
        (self.work / "in.ipynb").write_bytes(notebook)
        argv = ["papermill", "/work/in.ipynb", "/work/out.ipynb", "-k", "python3",
                "--log-output", "--no-progress-bar"]
        for name, value in PARAMETERS.items():
            argv += ["-p", name, str(value)]
        started = time.perf_counter()
        container = self.engine.containers.run(
            self.image, argv, detach=True, user=self.user, init=True,
            volumes={str(self.work): {"bind": "/work", "mode": "rw"}},
            mem_limit=f"{MEMORY_MB}m", memswap_limit=f"{MEMORY_MB}m",
            nano_cpus=int(CPU * 1e9), pids_limit=self.pids_limit,
            security_opt=["no-new-privileges"], cap_drop=["ALL"],
            environment={"TINI_SUBREAPER": "1"},  # as a job container has it
            labels={"dockyard.bench": self.label})
        try:
            result = container.wait(timeout=RUN_LIMIT)
            seconds = time.perf_counter() - started
            if result.get("StatusCode") != 0:
                raise RuntimeError("papermill in a bare container failed:\n"
                                   + container.logs().decode("utf-8", "replace")[-2000:])
        finally:
            container.remove(force=True)
        return seconds, (self.work / "out.ipynb").read_bytes()


# -- Dockyard: the notebook as a job -------------------------------------------------------
class Dockyard:
    def __init__(self, url: str, db_path: Path, image: str) -> None:
        self.url = url
        self.db_path = db_path
        self.image = image
        self.api = requests.Session()
        self.api.headers["Authorization"] = f"token {TOKEN}"
        self.run_ids: list[int] = []

    def run_one(self, notebook: bytes) -> tuple[float, bytes]:
        form = {"image": self.image, "cpu": str(CPU), "memory_mb": str(MEMORY_MB),
                "parameters": json.dumps(PARAMETERS)}
        started = time.perf_counter()
        response = self.api.post(f"{self.url}/api/v1/runs", data=form, timeout=60, files={
            "notebook": ("bench.ipynb", notebook, "application/x-ipynb+json")})
        if response.status_code != 201:
            raise RuntimeError(f"submit refused: {response.status_code} {response.text}")
        run_id = response.json()["id"]
        status = self.wait_final(run_id)
        seconds = time.perf_counter() - started
        self.run_ids.append(run_id)
        run = self.api.get(f"{self.url}/api/v1/runs/{run_id}", timeout=30).json()
        if status != "SUCCEEDED":
            raise RuntimeError(f"run {run_id} {status}: {run.get('reason')}; see the worker log")
        output = self.api.get(f"{self.url}/api/v1/runs/{run_id}/artifacts/output.ipynb",
                              timeout=30)
        if output.status_code != 200:
            raise RuntimeError(f"run {run_id} SUCCEEDED without its output.ipynb "
                               f"({output.status_code})")
        return seconds, output.content

    def wait_final(self, run_id: int) -> str:
        """The run's final status, as soon as the worker records it (read from the
        database, so that polling the API is not what is measured)."""
        deadline = time.monotonic() + RUN_LIMIT
        with sqlite3.connect(self.db_path) as conn:
            while time.monotonic() < deadline:
                (status,) = conn.execute("SELECT status FROM runs WHERE id = ?",
                                         (run_id,)).fetchone()
                if status in FINAL:
                    return str(status)
                time.sleep(0.02)
        raise TimeoutError(f"run {run_id} did not end in {RUN_LIMIT:.0f} s")

    def phases(self) -> tuple[list[float], list[float]]:
        """Per run: queued → RUNNING (the worker's start), and RUNNING → finished (the
        container's life as the worker recorded it)."""
        waits, lives = [], []
        marks = ",".join("?" * len(self.run_ids))
        with sqlite3.connect(self.db_path) as conn:
            rows = conn.execute(
                f"SELECT queued_at, started_at, finished_at FROM runs "  # noqa: S608
                f"WHERE id IN ({marks})", self.run_ids).fetchall()
        for queued, started, finished in rows:
            if started and finished:
                waits.append((_time(started) - _time(queued)).total_seconds())
                lives.append((_time(finished) - _time(started)).total_seconds())
        return waits, lives


def _time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def serve(app: Any, host: str) -> tuple[str, Any]:
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log in the output
    server = make_server(host, 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://{host}:{server.server_port}", server


def start_worker(home: Path, namespace: str, job_url: str) -> Any:
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    env.update(DOCKYARD_HOME=str(home), DOCKYARD_JOB_BACKEND="docker",
               DOCKYARD_JOB_NAMESPACE=namespace, DOCKYARD_LOG_LEVEL="WARNING",
               DOCKYARD_JOB_DOCKYARD_URL=job_url)
    log = open(home / "worker.log", "ab")  # noqa: SIM115 - lives with the process
    return subprocess.Popen([sys.executable, "-m", "dockyard.cli", "worker"], env=env,
                            stdout=log, stderr=subprocess.STDOUT)


def add_image(settings: Settings, reference: str) -> None:
    """The image in the catalog for jobs, with its contents as the worker's inspection
    records them (submit checks papermill and the notebook's kernel against them)."""
    from dockyard.db import make_engine, make_session_factory
    from dockyard.models import Image, ImageStatus, utcnow
    from spawner.images.inspect import inspect_image

    contents = inspect_image(reference, timeout_seconds=120)
    engine = make_engine(settings.db_url)
    try:
        with make_session_factory(engine)() as session:
            session.add(Image(reference=reference, for_jobs=True, status=ImageStatus.READY,
                              contents=contents, inspected_at=utcnow(), created_by="admin"))
            session.commit()
    finally:
        engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="timed runs per side")
    parser.add_argument("--image", default="dockyard/notebook:latest")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home "
                        "(database, worker log, artifacts) and print where it is")
    parser.add_argument("--quick", action="store_true", help="3 timed runs per side")
    args = parser.parse_args()
    if args.quick:
        args.runs = min(args.runs, 3)

    from dockyard.migrate import upgrade
    from dockyard.web import create_app

    home = Path(tempfile.mkdtemp(prefix="dockyard-bench-notebooks-"))
    work = home / "bare"
    work.mkdir()
    work.chmod(0o777)  # the container's user writes out.ipynb here
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    label = namespace
    settings = Settings(home=home)
    db_path = home / "dockyard.sqlite"
    notebook = write_notebook(home / "bench.ipynb")
    engine = docker.from_env(timeout=RUN_LIMIT + 30)
    server = worker = None
    try:
        upgrade(settings.db_url)
        add_image(settings, args.image)
        # Containers call the API: it listens where they reach this machine.
        gateway = container_gateway(settings)
        url, server = serve(create_app(settings, identity=BenchIdentity()), gateway)
        worker = start_worker(home, namespace, url + "/")
        print(f"Notebook jobs benchmark: {len(CELLS)}-cell notebook in {args.image}, "
              f"{args.runs} runs per side, interleaved; {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.2f}; API at {url}, SQLite at {db_path}")
        bare = Bare(engine, args.image, work, label, settings.job_pids_limit)
        ours = Dockyard(url, db_path, args.image)
        times: dict[str, list[float]] = {"bare": [], "dockyard": []}
        outputs: dict[str, str] = {}
        for index in range(args.runs + 1):
            order = [("bare", bare), ("dockyard", ours)]
            for side, runner in order if index % 2 == 0 else reversed(order):
                seconds, executed = runner.run_one(notebook)
                outputs.setdefault(side, printed(executed))
                if index:  # the first run of each side warms caches and is not counted
                    times[side].append(seconds)
            print(f"  run {index or 'warm-up'}: bare {seconds_of(times, 'bare', index)}, "
                  f"Dockyard {seconds_of(times, 'dockyard', index)}; load average "
                  f"{os.getloadavg()[0]:.2f}", flush=True)
            if not index:
                ours.run_ids.clear()  # the warm-up run is not in the phases either
        if outputs["bare"] != outputs["dockyard"] or "bench" not in outputs["bare"]:
            raise RuntimeError(f"the two sides printed different things: {outputs}")

        waits, lives = ours.phases()
        print()
        print(row("docker run papermill (SDK)", times["bare"]))
        print(row("Dockyard notebook job", times["dockyard"]))
        print(row("  of which queued → RUNNING", waits))
        print(row("  of which RUNNING → ended", lives))
        ratio = percentile(times["dockyard"], 0.5) / percentile(times["bare"], 0.5)
        ratio95 = percentile(times["dockyard"], 0.95) / percentile(times["bare"], 0.95)
        print(f"\n  Dockyard / bare: {ratio:.2f}× (p50), {ratio95:.2f}× (p95)   goal ≤ 1.15× "
              f"on p50: {'met' if ratio <= 1.15 else 'NOT met'}")
        print(f"  both printed: {outputs['bare'].strip()}")
        results = Results("notebook_jobs")
        for name, fraction in (("p50", 0.5), ("p95", 0.95)):
            results.add(f"{len(CELLS)}-cell notebook run as a job, {name}",
                        percentile(times["dockyard"], fraction), unit="s",
                        baseline=percentile(times["bare"], fraction),
                        baseline_name="papermill in a bare container (SDK)",
                        goal_ratio=1.15 if fraction == 0.5 else None)
        results.write()
        print(f"  load average {os.getloadavg()[0]:.2f} at the end")
        return 0
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=60)
        if server is not None:
            server.shutdown()
        for filters in ({"label": f"dockyard.bench={label}"},
                        {"label": f"dockyard.namespace={namespace}"}):
            for container in engine.containers.list(all=True, filters=filters):
                container.remove(force=True)
        engine.close()
        if args.keep:
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


def seconds_of(times: dict[str, list[float]], side: str, index: int) -> str:
    return f"{times[side][-1]:.2f} s" if index else "done"


if __name__ == "__main__":
    sys.exit(main())
