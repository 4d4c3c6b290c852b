"""Development mode: runs as local processes, for machines without a Docker engine.

No isolation: the job runs as the worker's own user with no resource limits and the
image is ignored; ``dockyard up`` says so when it picks this backend. Everything else
behaves as with Docker: each run gets a state directory named after it (creating it is
what makes ``start`` idempotent), a supervisor process in its own session records the
exit code, so jobs survive a worker restart and reconcile finds them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Self

from spawner.jobs.base import EngineState, JobBackend, JobSpec, JobStatus
from spawner.jobs.config import BackendConfig

_HANDLE_PREFIX = "run-"
# A state directory with no supervisor after this long was abandoned mid-start.
_START_GRACE_SECONDS = 15


class LocalJobBackend(JobBackend):
    name = "local"

    def __init__(self, namespace: str, dockyard_url: str, *, root: Path) -> None:
        super().__init__(namespace, dockyard_url)
        self.root = Path(root) / namespace
        self.root.mkdir(parents=True, exist_ok=True)
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    @classmethod
    def from_config(cls, namespace: str, config: BackendConfig) -> Self:
        if config.root is None:
            raise ValueError("the local job backend needs a directory for its runs (root)")
        return cls(namespace, config.dockyard_url, root=config.root)

    def _dir(self, handle: str) -> Path:
        if not handle.startswith(_HANDLE_PREFIX) or not handle[len(_HANDLE_PREFIX):].isdigit():
            raise ValueError(f"not a local job handle: {handle!r}")
        return self.root / handle

    def start(self, spec: JobSpec) -> JobStatus:
        handle = f"{_HANDLE_PREFIX}{spec.run_id}"
        state = self._dir(handle)
        try:
            state.mkdir()
        except FileExistsError:
            if (state / "launched.json").exists():
                return self.status(handle)  # already started for this run: never twice
        env = {
            "PATH": _path_with_our_python(),
            "LANG": "C.UTF-8",
            "HOME": str(state / "work"),
            **spec.env,
        }
        labels = spec.labels(self.namespace)
        (state / "spec.json").write_text(json.dumps({"argv": list(spec.argv), "env": env,
                                                     "labels": labels, "image": spec.image}))
        runner = subprocess.Popen(
            [sys.executable, "-m", "spawner.jobs.local_runner", str(state)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # survives the worker (kill -9 included)
        )
        self._children[handle] = runner
        (state / "launched.json").write_text(json.dumps({"runner_pid": runner.pid}))
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            status = self.status(handle)
            if status.state != EngineState.PENDING:
                return status
            time.sleep(0.02)
        return self.status(handle)

    def status(self, handle: str) -> JobStatus:
        self._reap()
        state = self._dir(handle)
        if not state.is_dir():
            return JobStatus(EngineState.MISSING, handle, reason="the job's directory is gone")
        started = _read_json(state / "started.json")
        ended = _read_json(state / "exit.json")
        started_at = _time(started.get("started_at")) if started else None
        if ended is not None:
            return JobStatus(EngineState.EXITED, handle, exit_code=int(ended["exit_code"]),
                             started_at=started_at, finished_at=_time(ended.get("finished_at")),
                             node="local")
        if started is not None:
            if _alive(int(started["pid"]), state):
                return JobStatus(EngineState.RUNNING, handle, started_at=started_at, node="local")
            if (state / "exit.json").exists():  # it ended between our two reads
                return self.status(handle)
            return JobStatus(EngineState.MISSING, handle, started_at=started_at,
                             reason="the job's supervisor process died without an exit code")
        launched = _read_json(state / "launched.json")
        if launched is not None and _alive(int(launched["runner_pid"]), state):
            return JobStatus(EngineState.PENDING, handle)
        if (state / "started.json").exists() or (state / "exit.json").exists():
            return self.status(handle)
        if time.time() - state.stat().st_mtime < _START_GRACE_SECONDS:
            return JobStatus(EngineState.PENDING, handle)
        return JobStatus(EngineState.MISSING, handle, reason="the job never started")

    def logs(self, handle: str) -> Iterator[bytes]:
        path = self._dir(handle) / "output.log"
        position = 0
        while True:
            finished = self.status(handle).ended
            if path.exists():
                with open(path, "rb") as output:
                    output.seek(position)
                    while chunk := output.read(65536):
                        position += len(chunk)
                        yield chunk
            if finished:
                return
            time.sleep(0.1)

    def stop(self, handle: str, grace_seconds: int) -> JobStatus:
        state = self._dir(handle)
        started = _read_json(state / "started.json")
        if started is None or self.status(handle).ended:
            return self.status(handle)
        _signal(int(started["pid"]), signal.SIGTERM, group=False, state=state)
        if not self._wait_ended(handle, grace_seconds):
            _signal(int(started["child_pid"]), signal.SIGKILL, group=True, state=None)
            self._wait_ended(handle, 5)
        return self.status(handle)

    def _wait_ended(self, handle: str, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.status(handle).ended:
                return True
            time.sleep(0.05)
        return self.status(handle).ended

    def remove(self, handle: str) -> None:
        shutil.rmtree(self._dir(handle), ignore_errors=True)
        self._children.pop(handle, None)

    def list_jobs(self) -> dict[int, JobStatus]:
        found: dict[int, JobStatus] = {}
        for entry in self.root.iterdir():
            number = entry.name.removeprefix(_HANDLE_PREFIX)
            if entry.is_dir() and entry.name.startswith(_HANDLE_PREFIX) and number.isdigit():
                found[int(number)] = self.status(entry.name)
        return found

    def _reap(self) -> None:
        for handle, child in list(self._children.items()):
            if child.poll() is not None:
                # Several worker threads reap at once: the first one forgets the child.
                self._children.pop(handle, None)


def _path_with_our_python() -> str:
    """The worker's PATH with Dockyard's own Python environment first: a job's ``python``
    is the interpreter local notebooks run (pandas, the data client …), whether or not the
    virtualenv was activated."""
    ours = str(Path(sys.executable).parent)
    others = [part for part in os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
              .split(os.pathsep) if part and part != ours]
    return os.pathsep.join([ours, *others])


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _alive(pid: int, state: Path) -> bool:
    """Is ``pid`` still our supervisor (not a reused pid of some other process)?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    if b"local_runner" not in cmdline or str(state).encode() not in cmdline:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"  # a zombie has ended


def _signal(pid: int, signum: int, *, group: bool, state: Path | None) -> None:
    if state is not None and not _alive(pid, state):
        return
    try:
        if group:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        pass
