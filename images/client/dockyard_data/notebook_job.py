"""A notebook run inside its container: ``python -m dockyard_data.notebook_job`` fetches the
run's notebook snapshot from Dockyard, executes it with papermill and sends the executed copy
back, also when a cell fails or the run is stopped.

Exit status: 0 when every cell ran; 1 when a cell failed (its last line of output is
``notebook failed in cell N: Ename: evalue``); 2 when the notebook could not be run at all
(snapshot, kernel or Dockyard out of reach; a sentence on stderr says which); 143 when the run
was stopped (SIGTERM).

Papermill is imported only here, at run time: the data client works without it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import requests

from dockyard_data.config import ClientConfig
from dockyard_data.errors import NotConfigured
from dockyard_data.http import CatalogAPI

EXIT_SUCCEEDED = 0
EXIT_CELL_FAILED = 1
EXIT_CANNOT_RUN = 2
EXIT_STOPPED = 128 + signal.SIGTERM  # what a process ended by SIGTERM reports: 143

INPUT = "input.ipynb"
OUTPUT = "output.ipynb"
NOTEBOOK_MEDIA_TYPE = "application/x-ipynb+json"
# A stopped run has only the engine's grace period to send its notebook back.
STOPPING_UPLOAD_TIMEOUT = (3.0, 8.0)

class CannotRun(Exception):
    """The notebook could not be run at all; the message says why, in a sentence."""


class TransferFailed(Exception):
    """A run artifact could not be fetched from or sent to Dockyard."""


@dataclass(frozen=True)
class NotebookJob:
    """What Dockyard tells a notebook run through its environment."""

    config: ClientConfig
    run_id: int
    attempt: str
    parameters: dict[str, Any]
    # None: the kernel named in the notebook itself.
    kernel: str | None
    name: str

    @classmethod
    def from_env(cls) -> NotebookJob:
        """Read DOCKYARD_URL, DOCKYARD_TOKEN, DOCKYARD_RUN_ID, DOCKYARD_ATTEMPT and the
        DOCKYARD_NOTEBOOK_* variables; raises CannotRun when one is missing or malformed."""
        config = ClientConfig.from_env()
        if config.run_id is None:
            raise CannotRun("DOCKYARD_RUN_ID is not set: dockyard_data.notebook_job runs "
                            "inside a Dockyard notebook run, which sets it.")
        text = os.environ.get("DOCKYARD_NOTEBOOK_PARAMETERS", "").strip() or "{}"
        try:
            parameters = json.loads(text)
        except ValueError as exc:
            raise CannotRun(f"DOCKYARD_NOTEBOOK_PARAMETERS is not JSON ({exc}); it should "
                            'be an object such as {"alpha": 0.5}.') from None
        if not isinstance(parameters, dict):
            raise CannotRun("DOCKYARD_NOTEBOOK_PARAMETERS should be a JSON object such as "
                            f'{{"alpha": 0.5}}, not {text[:100]}.')
        return cls(
            config=config,
            run_id=config.run_id,
            attempt=os.environ.get("DOCKYARD_ATTEMPT", ""),
            parameters=parameters,
            kernel=os.environ.get("DOCKYARD_NOTEBOOK_KERNEL", "").strip() or None,
            name=os.environ.get("DOCKYARD_NOTEBOOK_NAME", "").strip() or INPUT,
        )


class RunArtifacts:
    """The run's own files on Dockyard (/api/v1/runs/{id}/artifacts/...), reached with the
    run's token and the data client's session (its auth header and connection retries)."""

    def __init__(self, config: ClientConfig, run_id: int) -> None:
        try:
            api = CatalogAPI(config)
        except NotConfigured as exc:
            raise CannotRun(str(exc)) from None
        self.dockyard = config.url
        self.session = api.session
        self.url = f"{api.base}/runs/{run_id}/artifacts"
        self.timeout = (10.0, config.timeout)

    def fetch(self, name: str) -> bytes:
        response = self._call("GET", name, timeout=self.timeout)
        return response.content

    def send(self, name: str, content: bytes,
             timeout: tuple[float, float] | None = None) -> None:
        self._call("PUT", name, data=content, timeout=timeout or self.timeout,
                   headers={"Content-Type": NOTEBOOK_MEDIA_TYPE})

    def _call(self, method: str, name: str, **kwargs: Any) -> requests.Response:
        url = f"{self.url}/{name}"
        try:
            response = self.session.request(method, url, **kwargs)
        except requests.RequestException as exc:
            raise TransferFailed(f"Dockyard at {self.dockyard} cannot be reached "
                                 f"({type(exc).__name__}: {_why(exc)})") from None
        if response.status_code >= 400:
            raise TransferFailed(f"Dockyard answered {response.status_code} "
                                 f"{response.reason} for {method} {url}"
                                 f"{_detail(response)}")
        return response


def _why(exc: requests.RequestException) -> str:
    """The operating system's words for a failed connection ("[Errno 111] Connection
    refused") rather than urllib3's whole retry story, when it has them."""
    found = re.search(r"\[Errno -?\d+\] [^'\")]+", str(exc))
    return found.group(0).strip() if found else str(exc)


def _detail(response: requests.Response) -> str:
    """The refusal's own words, when Dockyard gave any."""
    try:
        body = response.json()
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    detail = body.get("detail") or body.get("error")
    if isinstance(detail, list):
        detail = "; ".join(f"{d.get('field', '?')}: {d.get('message', '')}"
                           if isinstance(d, dict) else str(d) for d in detail)
    return f": {detail}" if detail else ""


class NotebookRun:
    """One attempt of a notebook run in this process: fetch, execute, send back.

    It also holds what the SIGTERM handler needs to stop the execution part way: the
    notebook papermill is filling in (the same object, updated in place as cells run) and
    the kernel's manager."""

    def __init__(self, job: NotebookJob, artifacts: RunArtifacts, workdir: Path) -> None:
        self.job = job
        self.artifacts = artifacts
        self.workdir = workdir
        self.input_path = workdir / INPUT
        self.output_path = workdir / OUTPUT
        self.notebook: Any = None
        self.kernel_manager: Any = None
        # The running cell's number in the notebook as submitted (from 1).
        self.current_cell: int | None = None
        self.running_cell: Any = None
        self.sent = False

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        code = EXIT_CANNOT_RUN
        try:
            code = self.fetch_and_execute()
        except CannotRun as exc:
            _say(str(exc), sys.stderr)
        finally:
            # Also after a failed cell or an unexpected error: the partial notebook is
            # what a user needs to see what happened.
            if not self.send_output() and code == EXIT_SUCCEEDED:
                code = EXIT_CANNOT_RUN
        return code

    def fetch_and_execute(self) -> int:
        try:
            snapshot = self.artifacts.fetch(INPUT)
        except TransferFailed as exc:
            raise CannotRun(f"The notebook of run {self.job.run_id} could not be fetched: "
                            f"{exc}.") from None
        self.input_path.write_bytes(snapshot)
        kernel = self.job.kernel or _notebook_kernel(snapshot) or "the notebook's kernel"
        _say(f"Running {self.job.name} (run {self.job.run_id}"
             f"{', attempt ' + self.job.attempt if self.job.attempt else ''}) with kernel "
             f"{kernel}; parameters: {json.dumps(self.job.parameters, sort_keys=True)}",
             sys.stdout)
        return self.execute(kernel)

    def execute(self, kernel: str) -> int:
        try:
            import papermill
            from jupyter_client.kernelspec import NoSuchKernel
            from papermill.exceptions import PapermillExecutionError
        except ImportError as exc:
            raise CannotRun(f"This image cannot run notebooks: {exc.name or exc} is not "
                            "installed (pip install papermill).") from None
        try:
            papermill.execute_notebook(
                str(self.input_path), str(self.output_path),
                parameters=self.job.parameters,
                kernel_name=self.job.kernel,
                log_output=True,
                progress_bar=False,
                cwd=str(working_directory(self.workdir)),
                kernel_manager_class=self.kernel_manager_class(),
                on_notebook_start=self.notebook_started,
                on_cell_start=self.cell_started,
            )
        except PapermillExecutionError as error:
            lines = "\n".join(error.traceback or [])
            if lines:
                _say(_strip_ansi(lines), sys.stderr)
            # Papermill stops at the first failing cell: the one that started last.
            _say(failure_line(self.current_cell, error.ename, error.evalue), sys.stderr)
            return EXIT_CELL_FAILED
        except NoSuchKernel as error:
            raise CannotRun(f"The kernel '{error.name}' is not installed in this image "
                            f"(it has: {', '.join(installed_kernels()) or 'none'}).") from None
        except Exception as error:
            if self.notebook is None:
                # The kernel never answered: nothing of the notebook ran.
                raise CannotRun(f"The notebook could not be started with kernel {kernel}: "
                                f"{type(error).__name__}: {error}") from None
            # The kernel died under a cell (out of memory, os._exit) or papermill broke:
            # the cell it was in is the one to look at, in the log and in the notebook.
            if type(error).__name__ != "DeadKernelError":
                traceback.print_exc()
            self.mark_failed_cell(type(error).__name__, str(error))
            _say(failure_line(self.current_cell, type(error).__name__, str(error)),
                 sys.stderr)
            return EXIT_CELL_FAILED
        return EXIT_SUCCEEDED

    def kernel_manager_class(self) -> type:
        """nbclient's own kernel manager, remembered as it is made so that stop() can
        kill the kernel (it runs in a session of its own, so no signal of ours reaches it)."""
        from jupyter_client.manager import AsyncKernelManager

        run = self

        class RememberedKernelManager(AsyncKernelManager):  # type: ignore[misc]
            def __init__(self, **kwargs: Any) -> None:
                super().__init__(**kwargs)
                run.kernel_manager = self

        return RememberedKernelManager

    def notebook_started(self, notebook: Any, **_: Any) -> None:
        self.notebook = notebook

    def cell_started(self, cell: Any, cell_index: int, **_: Any) -> None:
        self.running_cell = cell
        cells = self.notebook.cells[:cell_index + 1] if self.notebook is not None else []
        self.current_cell = sum(1 for c in cells if not _added_by_papermill(c))

    def mark_failed_cell(self, ename: str, evalue: str) -> None:
        """Give the cell that was running an error output, as a cell that raised has, so
        the executed notebook (and the run's reason, read from it) shows where it ended."""
        if self.running_cell is None or self.notebook is None:
            return
        try:
            import nbformat

            self.running_cell.setdefault("outputs", []).append(nbformat.v4.new_output(
                "error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"]))
            nbformat.write(self.notebook, str(self.output_path))
        except Exception as exc:  # noqa: BLE001 - the notebook as papermill left it is kept
            _say(f"Could not mark the failed cell in the notebook: {exc}", sys.stderr)

    def send_output(self, content: bytes | None = None,
                    timeout: tuple[float, float] | None = None) -> bool:
        """Send the executed notebook (by default what papermill last wrote) to Dockyard;
        False when it could not be kept."""
        if content is None:
            if not self.output_path.exists():
                return True  # nothing ran, nothing to keep
            content = self.output_path.read_bytes()
        try:
            self.artifacts.send(OUTPUT, content, timeout=timeout)
        except TransferFailed as exc:
            _say(f"The executed notebook could not be kept: {exc}.", sys.stderr)
            return False
        self.sent = True
        return True

    def stop(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM (a cancel, a timeout, the engine stopping the job): end the kernel,
        send the notebook as far as it ran, and exit 143."""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _say("The run was stopped (SIGTERM): keeping the notebook as far as it ran.",
             sys.stderr)
        self.kill_kernel()
        if not self.sent:
            self.send_output(self.notebook_so_far(), timeout=STOPPING_UPLOAD_TIMEOUT)
        sys.stdout.flush()
        sys.stderr.flush()
        shutil.rmtree(self.workdir, ignore_errors=True)
        # Not SystemExit: papermill would go on to shut the dead kernel down politely.
        os._exit(EXIT_STOPPED)

    def kill_kernel(self) -> None:
        provisioner = getattr(self.kernel_manager, "provisioner", None)
        pgid = getattr(provisioner, "pgid", None)
        pid = getattr(provisioner, "pid", None)
        try:
            if pgid:
                os.killpg(pgid, signal.SIGKILL)  # the kernel and what its cells started
            elif pid:
                os.kill(pid, signal.SIGKILL)
        except OSError:
            pass  # already gone

    def notebook_so_far(self) -> bytes | None:
        """The notebook as papermill holds it now (outputs of the running cell included),
        else what it last wrote to disk."""
        if self.notebook is not None:
            try:
                import nbformat

                return nbformat.writes(self.notebook).encode()
            except Exception:  # noqa: BLE001 - a half-updated notebook: use the file
                pass
        if self.output_path.exists():
            return self.output_path.read_bytes()
        return None


def working_directory(fallback: Path) -> Path:
    """Where the notebook's relative paths point: the job's home when it may write there
    (as in the user's own notebook server), else ``fallback``."""
    home = os.environ.get("HOME") or os.path.expanduser("~")
    if home and os.path.isdir(home) and os.access(home, os.W_OK | os.X_OK):
        return Path(home)
    return fallback


def _added_by_papermill(cell: Any) -> bool:
    tags = (cell.get("metadata") or {}).get("tags") or []
    return "injected-parameters" in tags or "papermill-error-cell-tag" in tags


def failure_line(cell_number: int | None, ename: str, evalue: str) -> str:
    """``notebook failed in cell N: Ename: evalue`` on one line. N counts the cells of the
    notebook as submitted, from 1 (not the parameters cell papermill adds), and evalue is
    its first line: as Dockyard words the run's reason."""
    where = f"cell {cell_number}" if cell_number else "a cell"
    lines = str(evalue or "").strip().splitlines()
    value = lines[0].strip()[:300] if lines else ""
    return f"notebook failed in {where}: {ename}" + (f": {value}" if value else "")


def installed_kernels() -> list[str]:
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        return sorted(KernelSpecManager().find_kernel_specs())
    except Exception:  # noqa: BLE001 - only for a message
        return []


def _notebook_kernel(snapshot: bytes) -> str | None:
    try:
        name = json.loads(snapshot)["metadata"]["kernelspec"]["name"]
    except (ValueError, KeyError, TypeError):
        return None
    return name if isinstance(name, str) else None


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


# Whether each stream's last write ended a line, so that our own messages start on a line
# of their own after a cell printed without a newline.
_at_line_start = {"stdout": True, "stderr": True}


def _say(text: str, stream: TextIO) -> None:
    _write(text, stream, whole_line=True)


def _write(text: str, stream: TextIO, *, whole_line: bool) -> None:
    key = "stderr" if stream is sys.stderr else "stdout"
    if whole_line:
        if not _at_line_start[key]:
            text = "\n" + text
        if not text.endswith("\n"):
            text += "\n"
    if text:
        stream.write(text)
        stream.flush()
        _at_line_start[key] = text.endswith("\n")


class _RunLogHandler(logging.Handler):
    """Papermill's log as the run's log: cell output exactly as the cell wrote it (its
    stdout on stdout; its stderr, which papermill logs as warnings, on stderr), papermill's
    own messages as whole lines."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            cell_output = record.funcName == "log_output_message"
            _write(record.getMessage(), stream, whole_line=not cell_output)
        except Exception:  # noqa: BLE001 - logging must not break the run
            self.handleError(record)


def configure_logging() -> None:
    papermill_log = logging.getLogger("papermill")
    papermill_log.setLevel(logging.INFO)
    papermill_log.addHandler(_RunLogHandler())
    papermill_log.propagate = False
    # Connection retries are told once, in the sentence that ends the run.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(name)s: %(message)s")


def main() -> int:
    configure_logging()
    try:
        job = NotebookJob.from_env()
        artifacts = RunArtifacts(job.config, job.run_id)
    except CannotRun as exc:
        _say(str(exc), sys.stderr)
        return EXIT_CANNOT_RUN
    with tempfile.TemporaryDirectory(prefix="dockyard-notebook-") as workdir:
        return NotebookRun(job, artifacts, Path(workdir)).run()


if __name__ == "__main__":
    sys.exit(main())
