"""The notebook run's own program (``python -m dockyard_data.notebook_job``) on its own: a
real papermill and kernel in the project's environment, and in place of Dockyard a small
HTTP server in the test that serves the run's input.ipynb and keeps the output.ipynb the
job sends back, with the run's token checked on both."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import nbformat
import pytest

from dockyard.jobs.notebooks import failed_cell
from tests.jobs.conftest import eventually
from tests.jobs.notebook_support import notebook
from tests.support.ports import free_ports

TOKEN = "run-token-7"
RUN_ID = 7
PREFIX = "/services/dockyard/api/v1/runs/"


class ArtifactServer:
    """The two artifact endpoints a notebook run calls, on a loopback port."""

    def __init__(self) -> None:
        self.inputs: dict[int, bytes] = {}
        self.outputs: dict[int, bytes] = {}
        self.calls: list[tuple[str, str, str | None]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.url = f"http://127.0.0.1:{self.server.server_port}/services/dockyard/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                run_id, name = server.route(self)
                if run_id is None:
                    return
                if name != "input.ipynb" or run_id not in server.inputs:
                    self.answer(404, {"error": "Not found", "detail": "No such artifact."})
                    return
                body = server.inputs[run_id]
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ipynb+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                run_id, name = server.route(self)
                if run_id is None:
                    return
                if name != "output.ipynb":
                    self.answer(404, {"error": "Not found", "detail": "No such artifact."})
                    return
                server.outputs[run_id] = body
                self.send_response(204)
                self.end_headers()

            def answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def route(self, request: Any) -> tuple[int | None, str]:
        """(run id, artifact name) of a request with the run's token; answers the
        request itself (401, 404) and returns no run id otherwise."""
        self.calls.append((request.command, request.path, request.headers.get("Authorization")))
        if request.headers.get("Authorization") != f"token {TOKEN}":
            request.answer(401, {"error": "Unauthorized", "detail": "Unknown token."})
            return None, ""
        run, _, name = request.path.removeprefix(PREFIX).partition("/artifacts/")
        if not request.path.startswith(PREFIX) or not run.isdigit():
            request.answer(404, {"error": "Not found", "detail": "No such page."})
            return None, ""
        return int(run), name

    def output(self, run_id: int = RUN_ID) -> nbformat.NotebookNode:
        return nbformat.reads(self.outputs[run_id].decode(), as_version=4)

    def __enter__(self) -> ArtifactServer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def dockyard() -> Iterator[ArtifactServer]:
    with ArtifactServer() as server:
        yield server


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def job_env(url: str, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DOCKYARD_", "JUPYTERHUB_"))}
    env.update(HOME=str(home), DOCKYARD_URL=url, DOCKYARD_TOKEN=TOKEN,
               DOCKYARD_RUN_ID=str(RUN_ID), DOCKYARD_ATTEMPT="1",
               DOCKYARD_NOTEBOOK_NAME="etl.ipynb", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def run_job(url: str, home: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dockyard_data.notebook_job"],
                          env=job_env(url, home, **extra), cwd=home.parent,
                          capture_output=True, text=True, timeout=300)


def stream_text(cell: Any) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def test_parameters_reach_the_notebook_and_the_executed_copy_is_sent_back(
        dockyard: ArtifactServer, home: Path) -> None:
    dockyard.inputs[RUN_ID] = notebook(
        "result = alpha * 2\nprint(f'{label}: result={result}')",
        "open('written-by-the-notebook.txt', 'w').write(str(result))\nresult + 0.5",
        parameters="alpha = 1\nlabel = 'default'")
    done = run_job(dockyard.url, home,
                   DOCKYARD_NOTEBOOK_PARAMETERS=json.dumps({"alpha": 21, "label": "dockyard"}))
    assert done.returncode == 0, done.stderr
    # The cells' output streams to the run's log as it comes.
    assert "dockyard: result=42\n" in done.stdout
    assert "42.5" in done.stdout
    assert done.stdout.startswith("Running etl.ipynb (run 7, attempt 1) with kernel python3; "
                                  'parameters: {"alpha": 21, "label": "dockyard"}\n')
    assert "notebook failed" not in done.stderr
    # One GET of the snapshot and one PUT of the result, both with the run's token.
    assert dockyard.calls == [
        ("GET", f"{PREFIX}{RUN_ID}/artifacts/input.ipynb", f"token {TOKEN}"),
        ("PUT", f"{PREFIX}{RUN_ID}/artifacts/output.ipynb", f"token {TOKEN}"),
    ]
    out = dockyard.output()
    tags = [cell.metadata.get("tags", []) for cell in out.cells]
    # Papermill's own injection: a cell after the parameters cell, overriding it.
    assert tags[:2] == [["parameters"], ["injected-parameters"]]
    assert "alpha = 21" in out.cells[1].source and 'label = "dockyard"' in out.cells[1].source
    assert stream_text(out.cells[2]) == "dockyard: result=42\n"
    assert out.cells[3].outputs[0]["data"]["text/plain"] == "42.5"
    assert out.metadata.papermill["parameters"] == {"alpha": 21, "label": "dockyard"}
    # The notebook ran in the job's home, as it would in the user's own server.
    assert (home / "written-by-the-notebook.txt").read_text() == "42"


def test_a_notebook_without_a_parameters_cell_gets_one_added(
        dockyard: ArtifactServer, home: Path) -> None:
    dockyard.inputs[RUN_ID] = notebook("print('sum', sum(values))")
    done = run_job(dockyard.url, home, DOCKYARD_NOTEBOOK_PARAMETERS='{"values": [1, 2, 3.5]}')
    assert done.returncode == 0, done.stderr
    assert "sum 6.5\n" in done.stdout
    out = dockyard.output()
    assert out.cells[0].metadata.tags == ["injected-parameters"]
    assert "values = [1, 2, 3.5]" in out.cells[0].source
    assert stream_text(out.cells[1]) == "sum 6.5\n"


def test_a_failing_cell_exits_1_with_one_line_and_keeps_the_partial_notebook(
        dockyard: ArtifactServer, home: Path) -> None:
    dockyard.inputs[RUN_ID] = notebook(
        "print('first cell ran')",
        "x = 1",
        "raise ValueError('boom: the input\\nwas empty')",
        "print('never runs')", parameters="rows = 10")
    done = run_job(dockyard.url, home, DOCKYARD_NOTEBOOK_PARAMETERS='{"rows": 0}')
    assert done.returncode == 1, done.stderr
    # Counted as in the notebook submitted (the parameters cell papermill adds is not), as
    # the run's reason counts them; the error's first line.
    assert done.stderr.splitlines()[-1] == (
        "notebook failed in cell 4: ValueError: boom: the input")
    # The traceback is in the log too, without terminal colours.
    assert "----> 1 raise ValueError" in done.stderr and "\x1b[" not in done.stderr
    out = dockyard.output()
    sources = [cell.source for cell in out.cells]
    failing = sources.index("raise ValueError('boom: the input\\nwas empty')")
    errors = [o for o in out.cells[failing].outputs if o.output_type == "error"]
    assert [(e.ename, e.evalue) for e in errors] == [("ValueError", "boom: the input\nwas empty")]
    assert stream_text(out.cells[sources.index("print('first cell ran')")]) == "first cell ran\n"
    assert out.cells[sources.index("print('never runs')")].outputs == []
    assert out.metadata.papermill["exception"] is True
    # The worker finds the same cell in the notebook for the run's reason.
    reason = failed_cell(dockyard.outputs[RUN_ID])
    assert reason is not None and reason.startswith("cell 4: ")
    assert reason == "cell 4: ValueError: boom: the input"


def test_a_kernel_that_dies_under_a_cell_fails_that_cell(
        dockyard: ArtifactServer, home: Path) -> None:
    dockyard.inputs[RUN_ID] = notebook("print('first cell ran')", "import os\nos._exit(3)",
                                       "print('never runs')")
    done = run_job(dockyard.url, home)
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines()[-1] == "notebook failed in cell 2: DeadKernelError: Kernel died"
    assert "Traceback" not in done.stderr
    out = dockyard.output()
    assert stream_text(out.cells[0]) == "first cell ran\n"
    assert [o.ename for o in out.cells[1].outputs] == ["DeadKernelError"]
    reason = failed_cell(dockyard.outputs[RUN_ID])
    assert reason is not None and reason.startswith("cell 2: ")
    assert reason == "cell 2: DeadKernelError: Kernel died"


def test_the_notebooks_own_kernel_is_used_and_a_missing_one_is_named(
        dockyard: ArtifactServer, home: Path) -> None:
    dockyard.inputs[RUN_ID] = notebook("print('ran')", kernel="no-such-kernel")
    missing = run_job(dockyard.url, home)
    assert missing.returncode == 2
    assert missing.stderr.splitlines()[-1] == (
        "The kernel 'no-such-kernel' is not installed in this image (it has: python3).")
    # Dockyard names the kernel the image has; it wins over the notebook's metadata.
    done = run_job(dockyard.url, home, DOCKYARD_NOTEBOOK_KERNEL="python3")
    assert done.returncode == 0, done.stderr
    assert "ran\n" in done.stdout


@pytest.mark.parametrize(("dockyard_url", "token", "run_id", "said"), [
    ("unreachable", TOKEN, RUN_ID, "cannot be reached (ConnectionError"),
    ("served", "wrong-token", RUN_ID, "Dockyard answered 401 Unauthorized for GET"),
    ("served", TOKEN, 999, "Dockyard answered 404 Not Found for GET"),
    ("wrong-path", TOKEN, RUN_ID, "Dockyard answered 404 Not Found for GET"),
    ("", TOKEN, RUN_ID, "Dockyard's address is not set: set DOCKYARD_URL"),
])
def test_when_the_snapshot_cannot_be_fetched_it_exits_2_with_a_sentence(
        dockyard: ArtifactServer, home: Path, dockyard_url: str, token: str, run_id: int,
        said: str) -> None:
    dockyard.inputs[RUN_ID] = notebook("print('ran')")
    url = {"unreachable": f"http://127.0.0.1:{free_ports(1)[0]}/services/dockyard/",
           "served": dockyard.url,
           "wrong-path": dockyard.url.replace("/services/dockyard/", "/elsewhere/"),
           "": ""}[dockyard_url]
    done = run_job(url, home, DOCKYARD_TOKEN=token, DOCKYARD_RUN_ID=str(run_id))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert said in line and line.endswith("."), line
    assert dockyard.outputs == {}


def test_bad_parameters_exit_2_before_anything_is_fetched(
        dockyard: ArtifactServer, home: Path) -> None:
    done = run_job(dockyard.url, home, DOCKYARD_NOTEBOOK_PARAMETERS="[1, 2]")
    assert done.returncode == 2
    assert done.stderr.strip() == ("DOCKYARD_NOTEBOOK_PARAMETERS should be a JSON object such "
                                   'as {"alpha": 0.5}, not [1, 2].')
    assert dockyard.calls == []


def test_without_papermill_the_client_imports_and_the_job_says_what_is_missing(
        dockyard: ArtifactServer, home: Path) -> None:
    dockyard.inputs[RUN_ID] = notebook("print('ran')")
    # An environment without papermill, as a plain `pip install dockyard-data` is.
    without = ("import sys; sys.modules['papermill'] = None; import runpy, dockyard_data; "
               "runpy.run_module('dockyard_data.notebook_job', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", without], env=job_env(dockyard.url, home),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == ("This image cannot run notebooks: papermill is not "
                                            "installed (pip install papermill).")


def test_sigterm_stops_the_kernel_sends_the_notebook_so_far_and_exits_143(
        dockyard: ArtifactServer, home: Path) -> None:
    dockyard.inputs[RUN_ID] = notebook(
        "print('first cell ran')",
        "import os, time\nprint('kernel pid', os.getpid(), flush=True)\ntime.sleep(600)",
        "print('never runs')")
    job = subprocess.Popen([sys.executable, "-m", "dockyard_data.notebook_job"],
                           env=job_env(dockyard.url, home), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    # A safety net only: a job that never reaches the sleeping cell must not hang the suite.
    guard = threading.Timer(240, job.kill)
    guard.start()
    try:
        kernel_pid = None
        assert job.stdout is not None
        for line in job.stdout:
            if line.startswith("kernel pid "):
                kernel_pid = int(line.split()[-1])
                break
        assert kernel_pid is not None, job.stderr.read() if job.stderr else ""
        job.send_signal(signal.SIGTERM)
        rest, stderr = job.communicate()
    finally:
        guard.cancel()
        if job.poll() is None:
            job.kill()
            job.wait()
    assert job.returncode == 143, stderr
    assert ("The run was stopped (SIGTERM): keeping the notebook as far as it ran."
            in stderr.splitlines())
    out = dockyard.output()
    # The running cell's output so far is kept; the cells after it never ran.
    assert stream_text(out.cells[0]) == "first cell ran\n"
    assert stream_text(out.cells[1]) == f"kernel pid {kernel_pid}\n"
    assert out.cells[2].outputs == []
    # The kernel (in a session of its own, out of the signal's reach) went with the job.
    eventually(lambda: not process_alive(kernel_pid))


def process_alive(pid: int) -> bool:
    """Running or sleeping; a killed process its new parent has not reaped yet is dead."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")
