"""Run-scoped tokens: what a job uses to call Dockyard's API as its owner.

A token is ``dyr_<run id>_<secret>``, derived by the worker from a key kept under HOME
and the run (so a restarted worker that adopts a job it had already started hands it
the same token). The database keeps only its SHA-256 hash, and the token is accepted
only while its run has not ended: a token that leaks from a finished job's log is dead.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dockyard.models import Run

PREFIX = "dyr_"


@dataclass(frozen=True)
class TokenRun:
    """Whom a live run token speaks for: the run's owner, acting as that run."""

    owner: str
    run_id: int


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_key(home: Path) -> bytes:
    """The worker's key for deriving run tokens, made once under HOME (mode 600)."""
    path = home / "run_token_key"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another worker made it a moment ago
            return path.read_bytes()
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
    return path.read_bytes()


def run_token(key: bytes, run_id: int, queued_at: datetime) -> str:
    # The queue time is part of the message so that a run id reused by a fresh database
    # never gets the token of an old run.
    message = f"{run_id}:{queued_at.astimezone(UTC).isoformat()}".encode()
    secret = hmac.new(key, message, hashlib.sha256).hexdigest()[:43]
    return f"{PREFIX}{run_id}_{secret}"


def run_id_of(token: str) -> int | None:
    if not token.startswith(PREFIX):
        return None
    head, _, _secret = token[len(PREFIX):].partition("_")
    return int(head) if head.isdigit() and len(head) < 19 else None


def run_token_lookup(sessions: sessionmaker[Session]) -> Callable[[str], TokenRun | None]:
    """For ``app.extensions["dockyard.run_tokens"]``: a run token → its run and owner,
    or None if it is not the token of a run that is still going."""

    def lookup(token: str) -> TokenRun | None:
        run_id = run_id_of(token)
        if run_id is None:
            return None
        with sessions() as session:
            row = session.execute(
                select(Run.owner, Run.status, Run.token_hash).where(Run.id == run_id)
            ).first()
        if row is None or row.token_hash is None or row.status.is_final:
            return None
        if not hmac.compare_digest(row.token_hash, hash_token(token)):
            return None
        return TokenRun(owner=row.owner, run_id=run_id)

    return lookup
