"""A data writer (the real Python client, in its own process) killed with SIGKILL at a
random moment of a write, 20 times or more: before it began, while it wrote the parquet files,
around the commit, after it. (tests/data/test_crash.py kills at the two fixed points
before the commit and checks that gc removes what is left; this one lets the moment
fall anywhere.)

After every kill, readers see either the partition as it was or the killed writer's
batch whole, never part of one; every committed batch stays readable in full; what was
left pending is invisible and is exactly what gc would find."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pandas as pd
import pytest

from dockyard.data import Catalog
from dockyard.settings import Settings

KILLS = 20
#: Kills go on past KILLS (up to this many) until both kinds of moment were hit.
MAX_KILLS = 40
ROWS = 200_000
NAMESPACE, TABLE, DAY = "faults", "events", {"date": "20240101"}


def _write(live_url: str, value: int, started: Any) -> None:
    """In the child: store a frame whose every row says which writer wrote it."""
    from dockyard_data import Client, ClientConfig

    client = Client(config=ClientConfig(url=live_url, token="tok-alice"))
    frame = pd.DataFrame({"writer": [value] * ROWS, "row": range(ROWS)})
    started.set()
    client.store_dataframe(frame, NAMESPACE, TABLE, partition=DAY)


def _writer(live_url: str, value: int) -> tuple[Any, Any]:
    context = multiprocessing.get_context("fork")
    started = context.Event()
    process = context.Process(target=_write, args=(live_url, value, started))
    process.start()
    assert started.wait(30), "the writer did not start"
    return process, started


def _check_whole(frame: pd.DataFrame) -> int:
    """A batch read back whole: ROWS rows of one writer, rows 0..ROWS-1 in order."""
    assert len(frame) == ROWS, len(frame)
    writers = frame["writer"].unique()
    assert len(writers) == 1, writers
    assert frame["row"].tolist() == list(range(ROWS))
    return int(writers[0])


@pytest.mark.timeout(300)
def test_writers_killed_at_random_moments_leave_whole_batches_or_nothing(
        connect: Callable[[str], Any], live_url: str, migrated: Settings) -> None:
    alice = connect("tok-alice")
    rng = random.Random(20240101)
    # Two writes that are let finish: the first makes the table (slower), the second
    # tells how long a write takes from the moment the writer has its frame (as the kills
    # below are timed; not the fork).
    for value in (0, 1):
        process, _ = _writer(live_url, value)
        started_at = time.monotonic()
        process.join(60)
        assert process.exitcode == 0
    full_write = time.monotonic() - started_at
    current = _check_whole(alice.load_dataframe(NAMESPACE, TABLE, partitions=[DAY]))
    assert current == 1

    outcomes = {"before commit": 0, "committed": 0}
    # The moments are drawn from [0, 1.2 × window]. A write's own time varies with the
    # machine's load (the measured one also holds the process's exit), so the window
    # follows what the kills find: narrower after a kill that came too late to stop the
    # commit, wider after one that stopped it. Both kinds of moment are then hit on a
    # fast machine and on a loaded one, without aiming at either.
    window = full_write
    kill = 1
    while kill <= KILLS or (min(outcomes["before commit"], 3 * outcomes["committed"]) < 3
                            and kill <= MAX_KILLS):
        kill += 1
        process, _ = _writer(live_url, kill)
        time.sleep(rng.uniform(0, window * 1.2))
        os.kill(process.pid, signal.SIGKILL)
        process.join(30)
        assert process.exitcode in (-signal.SIGKILL, 0)
        # Readers see the old batch or the new one, whole.
        seen = _check_whole(alice.load_dataframe(NAMESPACE, TABLE, partitions=[DAY]))
        assert seen in (current, kill), (seen, current, kill)
        outcomes["committed" if seen == kill else "before commit"] += 1
        window *= 0.85 if seen == kill else 1.15
        current = seen

    # Every batch the history names is there in full, the current one last.
    history = alice.history(NAMESPACE, TABLE)
    assert [h["action"] for h in history] == ["commit"] * len(history)
    writers = [_check_whole(alice.load_dataframe(NAMESPACE, TABLE, batch_id=h["batch_id"]))
               for h in history]
    assert writers == sorted(set(writers)) and writers[-1] == current
    assert len(history) == 2 + outcomes["committed"]
    # What was begun and never committed is pending: invisible, and what gc would remove.
    catalog = Catalog.from_settings(migrated)
    pending = catalog.abandoned_batches(older_than=timedelta(0))
    committed_ids = {h["batch_id"] for h in history}
    assert not committed_ids & {b.batch_id for b in pending}
    assert len(pending) <= outcomes["before commit"]
    print(f"\n{kill - 1} writers killed ({full_write:.2f} s a write): {outcomes}; "
          f"{len(pending)} pending batches left")
    # Both kinds of moment were hit, or the test proved less than it says.
    assert outcomes["before commit"] >= 3 and outcomes["committed"] >= 1, outcomes
