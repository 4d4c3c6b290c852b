"""Runs one local job and records how it ended: ``python -m spawner.jobs.local_runner DIR``.

The local backend starts this small supervisor in its own session, so a job outlives a
worker that is killed or restarted. It reads ``DIR/spec.json``, runs the command with its
output in ``DIR/output.log``, forwards SIGTERM to the job's process group, and writes the
exit code to ``DIR/exit.json`` (atomically) when the job ends. Exit codes follow the
shell's convention: a job killed by signal N exits 128+N.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def write_atomically(path: Path, data: dict[str, Any]) -> None:
    part = path.with_suffix(".part")
    part.write_text(json.dumps(data))
    os.replace(part, path)


def now() -> str:
    return datetime.now(UTC).isoformat()


def main(directory: str) -> int:
    state = Path(directory)
    spec = json.loads((state / "spec.json").read_text())
    workdir = state / "work"
    workdir.mkdir(exist_ok=True)
    child: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _frame: object) -> None:
        if child is not None and child.poll() is None:
            try:
                os.killpg(child.pid, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    with open(state / "output.log", "ab", buffering=0) as output:
        try:
            child = subprocess.Popen(
                spec["argv"], env=spec["env"], cwd=workdir, stdin=subprocess.DEVNULL,
                stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
            )
        except OSError as exc:
            output.write(f"dockyard: cannot run {spec['argv'][0]!r}: {exc.strerror}\n".encode())
            code = 127 if isinstance(exc, FileNotFoundError) else 126
            write_atomically(state / "exit.json", {"exit_code": code, "finished_at": now()})
            return code
        write_atomically(state / "started.json",
                         {"pid": os.getpid(), "child_pid": child.pid, "started_at": now()})
        returncode = child.wait()
    code = 128 - returncode if returncode < 0 else returncode
    write_atomically(state / "exit.json", {"exit_code": code, "finished_at": now()})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
