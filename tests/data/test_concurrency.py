"""8 processes × 50 commits to one partition, on SQLite and on PostgreSQL: the
compare-and-swap pointer serialises them; no batch is lost and the history is complete
and in the order the pointer moved."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from dockyard.data import Actor, Catalog, Storage, StorageConfig
from dockyard.db import make_engine
from dockyard.settings import Settings
from tests.data.workers import commit_many

PROCESSES = 8
COMMITS_EACH = 50


def hammer(url: str, root: str) -> list[str]:
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        barrier = manager.Barrier(PROCESSES)
        with ProcessPoolExecutor(PROCESSES, mp_context=context) as pool:
            futures = [pool.submit(commit_many, url, root, worker, COMMITS_EACH, barrier)
                       for worker in range(PROCESSES)]
            return [batch for future in futures for batch in future.result(timeout=300)]


def check_history(url: str, root: str, committed: list[str]) -> None:
    engine = make_engine(url)
    catalog = Catalog(engine, Storage(StorageConfig(root)))
    reader = Actor("reader")
    assert len(committed) == len(set(committed)) == PROCESSES * COMMITS_EACH

    history = catalog.history(reader, "load", "hot", "day=1", limit=10_000)
    assert len(history) == PROCESSES * COMMITS_EACH
    assert {h.batch_id for h in history} == set(committed)
    assert all(h.action == "commit" for h in history)
    # Each move starts from where the one before it left the pointer …
    assert history[0].previous_batch_id is None
    for before, after in zip(history, history[1:], strict=False):
        assert after.previous_batch_id == before.batch_id
        assert after.at >= before.at
    # … and the pointer ends on the last one, after exactly that many moves.
    (partition,) = catalog.partitions(reader, "load", "hot")
    assert partition.batch.batch_id == history[-1].batch_id
    assert partition.version == PROCESSES * COMMITS_EACH
    # Every writer's commits appear in the order that writer made them.
    by_worker: dict[str, list[str]] = {}
    for h in history:
        by_worker.setdefault(h.actor, []).append(h.batch_id)
    assert sorted(by_worker) == [f"writer{i}" for i in range(PROCESSES)]
    # The writers really ran at once: their commits interleave.
    handovers = sum(1 for a, b in zip(history, history[1:], strict=False) if a.actor != b.actor)
    assert handovers > 4 * PROCESSES
    for batches in by_worker.values():
        assert batches == [b for b in committed if b in set(batches)]
    engine.dispose()


@pytest.mark.timeout(300)
def test_concurrent_commits_on_sqlite(migrated: Settings) -> None:
    committed = hammer(migrated.db_url, migrated.data_dir)
    check_history(migrated.db_url, migrated.data_dir, committed)


@pytest.mark.postgres
@pytest.mark.timeout(300)
def test_concurrent_commits_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    root = str(tmp_path / "data")
    committed = hammer(postgres_url, root)
    check_history(postgres_url, root, committed)
