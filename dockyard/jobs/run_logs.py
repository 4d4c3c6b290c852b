"""Where a run's log lives and how it is read, a piece at a time.

The worker copies a job's output into ``HOME/logs/runs/<run id>.log`` while it runs and
completes the file before it records the run's final status, so the log survives the
container. Readers ask for the bytes after an offset and get the next offset back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from dockyard.settings import Settings

#: Most bytes one incremental read returns.
CHUNK_BYTES = 256 * 1024


def log_path(settings: Settings, run_id: int) -> Path:
    return settings.log_dir / "runs" / f"{run_id}.log"


def relative_log_location(run_id: int) -> str:
    return f"logs/runs/{run_id}.log"


@dataclass(frozen=True)
class LogChunk:
    offset: int
    next_offset: int
    text: str
    size: int


def complete_utf8_length(data: bytes) -> int:
    """Length of the longest prefix of ``data`` that does not end inside a UTF-8
    character, so that an offset never splits one."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # continuation byte: keep looking for the lead byte
            continue
        if byte < 0x80:
            needed = 1
        elif byte >> 5 == 0b110:
            needed = 2
        elif byte >> 4 == 0b1110:
            needed = 3
        elif byte >> 3 == 0b11110:
            needed = 4
        else:
            needed = 1  # not UTF-8 at all: decode with replacement, do not stall
        return len(data) if needed <= back else len(data) - back
    return len(data)


def read_log(path: Path, offset: int, limit: int = CHUNK_BYTES) -> LogChunk:
    """The text after byte ``offset`` (at most ``limit`` bytes) and where to continue."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return LogChunk(offset, offset, "", 0)
    if offset >= size:
        # A worker that restarts rewrites the file from the start; an offset past the
        # end just waits for the content to come back.
        return LogChunk(offset, offset, "", size)
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(limit)
    usable = complete_utf8_length(data)
    if usable == 0 and data:
        usable = len(data)  # a broken byte sequence longer than a character: pass it on
    return LogChunk(offset, offset + usable, data[:usable].decode("utf-8", errors="replace"), size)


class LogFile:
    """Writes a job's output to its log file, flushed as it comes, cut at ``max_bytes``."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        self.written = 0
        self.truncated = False
        self._file = open(path, "wb", buffering=0)  # noqa: SIM115 - closed in close()

    def write(self, chunk: bytes) -> None:
        if self.truncated:
            return
        room = self.max_bytes - self.written
        if len(chunk) > room:
            self._file.write(chunk[:room])
            self._file.write(
                f"\n[dockyard: log cut at {self.max_bytes} bytes (DOCKYARD_JOB_LOG_MAX_BYTES); "
                "the rest of the output was not kept]\n".encode()
            )
            self.written = self.max_bytes
            self.truncated = True
            return
        self._file.write(chunk)
        self.written += len(chunk)

    def note(self, text: str) -> None:
        self._file.write(f"\n[dockyard: {text}]\n".encode())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> LogFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
