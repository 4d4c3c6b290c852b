"""Writers killed after writing their files but before committing leave nothing that
readers can see; `dockyard data gc` finds and removes exactly those batches."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from dockyard.cli import main
from dockyard.data import Actor, Catalog
from dockyard.settings import Settings
from tests.data.workers import store_then_hang

KILLED_BEFORE_COMMIT = 20
KILLED_BEFORE_MANIFEST = 4


def kill_a_writer(live_url: str, stage: str) -> None:
    context = multiprocessing.get_context("fork")
    parent, child = context.Pipe()
    writer = context.Process(target=store_then_hang, args=(live_url, "tok-alice", stage, child))
    writer.start()
    try:
        assert parent.poll(60), "the writer never reached the point where it is killed"
        assert parent.recv() == writer.pid
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.join(30)
    assert writer.exitcode == -signal.SIGKILL


@pytest.mark.timeout(300)
def test_killed_writers_leave_nothing_visible_and_gc_cleans_up(
        connect, live_url: str, migrated: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    alice = connect("tok-alice")
    day = {"date": "20161031"}
    good = pd.DataFrame({"x": [1, 2, 3]})
    first = alice.store_dataframe(good.assign(x=[0, 0, 0]), "sales", "orders", partition=day)
    current = alice.store_dataframe(good, "sales", "orders", partition=day)
    other = alice.store_dataframe(good, "sales", "orders", partition={"date": "20161101"})

    for _ in range(KILLED_BEFORE_COMMIT):
        kill_a_writer(live_url, "commit")
    for _ in range(KILLED_BEFORE_MANIFEST):
        kill_a_writer(live_url, "manifest")

    partition_dir = Path(migrated.data_dir, "sales", "orders", "date=20161031")
    batch_dirs = sorted(p.name for p in partition_dir.iterdir())
    assert len(batch_dirs) == 2 + KILLED_BEFORE_COMMIT + KILLED_BEFORE_MANIFEST
    with_manifest = [d for d in batch_dirs
                     if (partition_dir / d / "_dockyard_manifest.json").exists()]
    assert len(with_manifest) == 2 + KILLED_BEFORE_COMMIT

    # Nothing of the killed writers is visible.
    loaded = alice.load_dataframe("sales", "orders", partitions=[day])
    pd.testing.assert_frame_equal(loaded, good.assign(date="20161031"), check_dtype=False)
    assert [h["batch_id"] for h in alice.history("sales", "orders")] == [
        first["batch_id"], current["batch_id"], other["batch_id"]]
    assert {p["batch"]["batch_id"] for p in alice.partitions("sales", "orders")} == {
        current["batch_id"], other["batch_id"]}

    # gc (the real CLI) finds exactly the abandoned batches and never a committed one,
    # not even the replaced first batch.
    monkeypatch.setenv("DOCKYARD_HOME", str(migrated.home))
    runner = CliRunner()
    listed = runner.invoke(main, ["data", "gc", "--older-than", "0s", "--dry-run"])
    assert listed.exit_code == 0, listed.output
    expected = KILLED_BEFORE_COMMIT + KILLED_BEFORE_MANIFEST
    assert f"{expected} abandoned batches found" in listed.output
    assert all(b["batch_id"] not in listed.output for b in (first, current, other))
    assert len(list(partition_dir.iterdir())) == 2 + expected

    removed = runner.invoke(main, ["data", "gc", "--older-than", "0s"])
    assert removed.exit_code == 0, removed.output
    assert f"{expected} abandoned batches removed" in removed.output
    assert sorted(p.name for p in partition_dir.iterdir()) == sorted(
        [first["batch_id"], current["batch_id"]])
    for batch in (first, current, other):
        assert Path(batch["location"], "part-00000.parquet").is_file()
    assert len(alice.load_dataframe("sales", "orders", batch_id=first["batch_id"])) == 3
    assert Catalog.from_settings(migrated).abandoned_batches() == []
    # With the default age (a day), fresh pending batches are left alone.
    alice_actor = Actor("alice")
    Catalog.from_settings(migrated).begin_batch(alice_actor, "sales", "orders", day)
    again = runner.invoke(main, ["data", "gc"])
    assert "0 abandoned batches removed" in again.output
