"""The Python client against the web app on a real loopback port, local data root."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import dockyard_data
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from dockyard_data import (
    AuthenticationFailed,
    BatchNotFound,
    Client,
    ClientConfig,
    InvalidRequest,
    NotConfigured,
    NothingToRollBack,
    PartitionNotFound,
    PermissionDenied,
    SchemaMismatch,
    ServiceUnavailable,
    TableNotFound,
)

from dockyard.settings import Settings
from tests.data.conftest import add_run
from tests.support.ports import free_ports

DAY = {"date": "20161031"}


def frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "id": np.arange(n, dtype="int64"),
        "price": rng.random(n),
        "sku": [f"sku-{i % 97}" for i in range(n)],
        "at": pd.date_range("2020-01-01", periods=n, freq="s"),
    })


@pytest.fixture
def alice(connect) -> Client:
    return connect("tok-alice")


def test_round_trip_through_the_module_functions(live_url: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKYARD_URL", live_url + "/")
    monkeypatch.setenv("DOCKYARD_TOKEN", "tok-alice")
    df = frame(1000)
    batch = dockyard_data.store_dataframe(df, "sales", "orders", partition=DAY)
    assert (batch["rows"], batch["partition"], batch["previous_batch_id"]) == (
        1000, "date=20161031", None)

    loaded = dockyard_data.load_dataframe("sales", "orders")
    # The partition column is stored in the files too, after the frame's own columns.
    expected = df.assign(date="20161031")
    pd.testing.assert_frame_equal(loaded, expected, check_dtype=False)
    assert loaded["at"].dtype.kind == "M" and loaded["id"].dtype == "int64"

    tables = dockyard_data.list_tables()
    assert [(t["namespace"], t["name"], t["rows"]) for t in tables] == [("sales", "orders", 1000)]
    assert [h["action"] for h in dockyard_data.history("sales", "orders", DAY)] == ["commit"]


def test_files_are_plain_parquet_with_partition_columns_and_a_manifest(alice: Client) -> None:
    batch = alice.store_dataframe(frame(10), "sales", "orders", partition={"date": 20161031})
    location = Path(batch["location"])
    assert location.parent.name == "date=20161031" and location.name == batch["batch_id"]
    manifest = json.loads((location / "_dockyard_manifest.json").read_text())
    assert [f["path"] for f in manifest["files"]] == batch["files"] == ["part-00000.parquet"]
    table = pq.read_table(location / "part-00000.parquet")
    assert table.column("date").to_pylist() == ["20161031"] * 10


def test_replace_twice_history_rollback_and_pinning(alice: Client) -> None:
    first = alice.store_dataframe(frame(3), "sales", "orders", partition=DAY)
    second = alice.store_dataframe(frame(5, seed=1), "sales", "orders", partition=DAY)
    assert second["previous_batch_id"] == first["batch_id"]
    assert len(alice.load_dataframe("sales", "orders", partitions=[DAY])) == 5

    history = alice.history("sales", "orders", DAY)
    assert [h["batch_id"] for h in history] == [first["batch_id"], second["batch_id"]]

    entry = alice.rollback("sales", "orders", DAY)
    assert (entry["action"], entry["batch_id"]) == ("rollback", first["batch_id"])
    assert len(alice.load_dataframe("sales", "orders", partitions=DAY)) == 3
    pinned = alice.load_dataframe("sales", "orders", batch_id=second["batch_id"])
    assert pinned["price"].tolist() == frame(5, seed=1)["price"].tolist()
    with pytest.raises(NothingToRollBack):
        alice.rollback("sales", "orders", DAY)


def test_as_of(alice: Client) -> None:
    alice.store_dataframe(frame(2), "sales", "orders", partition=DAY)
    time.sleep(0.02)
    between = datetime.now(UTC)
    time.sleep(0.02)
    alice.store_dataframe(frame(4), "sales", "orders", partition=DAY)
    assert len(alice.load_dataframe("sales", "orders", as_of=between)) == 2
    assert len(alice.load_dataframe("sales", "orders", as_of=between.isoformat())) == 2
    assert len(alice.load_dataframe("sales", "orders")) == 4
    with pytest.raises(PartitionNotFound):
        alice.load_dataframe("sales", "orders", as_of=datetime(2000, 1, 1))


def test_columns_filters_and_several_partitions(alice: Client) -> None:
    for day in ("1", "2", "3"):
        alice.store_dataframe(frame(100).assign(day=day), "web", "visits",
                              partition={"day": day})
    both = alice.load_dataframe("web", "visits", partitions=[{"day": "1"}, {"day": 3}],
                                columns=["id", "day"], filters=[("id", "<", 10)])
    assert list(both.columns) == ["id", "day"]
    assert sorted(both["day"].unique()) == ["1", "3"] and len(both) == 20
    with pytest.raises(ValueError, match="day"):
        alice.store_dataframe(frame(2).assign(day="x"), "web", "visits", partition={"day": "4"})


def test_big_frames_are_written_in_row_groups_and_files(alice: Client,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from dockyard_data import frames

    # Small targets stand in for gigabytes: many row groups, several files.
    monkeypatch.setattr(frames, "ROW_GROUP_BYTES", 64 * 1024)
    monkeypatch.setattr(frames, "ROW_GROUPS_PER_FILE", 3)
    df = frame(50_000)
    batch = alice.store_dataframe(df, "big", "t")
    assert len(batch["files"]) > 1
    metadata = [pq.read_metadata(Path(batch["location"]) / name) for name in batch["files"]]
    assert sum(m.num_rows for m in metadata) == 50_000
    assert all(m.num_row_groups <= 3 for m in metadata) and metadata[0].num_row_groups == 3
    pd.testing.assert_frame_equal(alice.load_dataframe("big", "t"), df, check_dtype=False)


def test_empty_frame_and_unpartitioned_table(alice: Client) -> None:
    empty = frame(0)
    batch = alice.store_dataframe(empty, "misc", "empty")
    assert batch["rows"] == 0
    loaded = alice.load_dataframe("misc", "empty")
    assert list(loaded.columns) == list(empty.columns) and len(loaded) == 0


def test_schema_mismatch_names_the_columns_and_writes_nothing(alice: Client,
                                                              migrated: Settings) -> None:
    alice.store_dataframe(frame(3), "sales", "orders", partition=DAY)
    wrong = frame(3).assign(price=["a", "b", "c"]).drop(columns=["sku"])
    with pytest.raises(SchemaMismatch) as caught:
        alice.store_dataframe(wrong, "sales", "orders", partition=DAY)
    assert {c["column"] for c in caught.value.columns} == {"price", "sku"}
    assert "price" in str(caught.value) and caught.value.status == 409
    # Refused at begin: no batch directory was even made.
    partition_dir = Path(migrated.data_dir, "sales", "orders", "date=20161031")
    assert len(list(partition_dir.iterdir())) == 1

    alice.store_dataframe(frame(3).assign(note="n"), "sales", "orders", partition=DAY,
                          evolve=True)
    older = alice.history("sales", "orders")[0]["batch_id"]
    both = alice.load_dataframe("sales", "orders", batch_id=older)
    assert "note" not in both.columns
    alice.store_dataframe(frame(3).assign(note="m"), "sales", "orders",
                          partition={"date": "20161101"}, evolve=True)
    alice.rollback("sales", "orders", DAY)
    mixed = alice.load_dataframe("sales", "orders", columns=["id", "note"])
    assert mixed["note"].isna().sum() == 3 and (mixed["note"] == "m").sum() == 3


def test_errors_are_python_exceptions(alice: Client, connect, live_url: str) -> None:
    with pytest.raises(TableNotFound):
        alice.load_dataframe("no", "such")
    alice.store_dataframe(frame(1), "alice-ns", "t")
    with pytest.raises(PartitionNotFound):
        alice.load_dataframe("alice-ns", "t", as_of="2000-01-01T00:00:00")
    with pytest.raises(InvalidRequest, match="unknown partition key 'x'"):
        alice.load_dataframe("alice-ns", "t", partitions=[{"x": "1"}])
    with pytest.raises(BatchNotFound):
        alice.load_dataframe("alice-ns", "t", batch_id="01NOSUCHBATCH000000000000000")
    bob = connect("tok-bob")
    with pytest.raises(PermissionDenied, match="belongs to alice"):
        bob.store_dataframe(frame(1), "alice-ns", "t")
    assert len(bob.load_dataframe("alice-ns", "t")) == 1
    with pytest.raises(AuthenticationFailed):
        connect("tok-nobody").list_tables()
    with pytest.raises(InvalidRequest, match="partition"):
        alice.store_dataframe(frame(1), "alice-ns", "t", partition={"date": "../../etc"})
    with pytest.raises(ValueError, match="mode"):
        alice.store_dataframe(frame(1), "alice-ns", "t", mode="append")
    with pytest.raises(TypeError):
        alice.store_dataframe([1, 2], "alice-ns", "t")
    (closed,) = free_ports(1)
    with pytest.raises(ServiceUnavailable, match="Cannot reach Dockyard"):
        Client(config=ClientConfig(url=f"http://127.0.0.1:{closed}", token="t")).list_tables()
    with pytest.raises(NotConfigured, match="DOCKYARD_URL"):
        Client(config=ClientConfig(url="", token=""))


def test_a_container_mounting_the_data_root_elsewhere(connect, live_url: str,
                                                      migrated: Settings, tmp_path: Path) -> None:
    """DOCKYARD_DATA_ROOT maps the server's paths to where this process sees them."""
    alias = tmp_path / "mounted-here"
    os.makedirs(migrated.data_dir, exist_ok=True)
    os.symlink(migrated.data_dir, alias)
    client = Client(config=ClientConfig(url=live_url, token="tok-alice", data_root=str(alias)))
    batch = client.store_dataframe(frame(4), "sales", "orders", partition=DAY)
    assert batch["location"].startswith(migrated.data_dir)
    assert len(client.load_dataframe("sales", "orders")) == 4


def test_lineage_from_a_run_scoped_token(connect, tokens, migrated: Settings, api) -> None:
    from dockyard.data import Catalog
    from dockyard.web.auth import User
    from tests.conftest import auth

    run_id = add_run(migrated, "alice")
    tokens["tok-run"] = User("alice", run_id=run_id)
    job = connect("tok-run")
    alice = connect("tok-alice")
    source = alice.store_dataframe(frame(3), "raw", "events")
    written = job.store_dataframe(job.load_dataframe("raw", "events"), "derived", "events")
    assert written["run_id"] == run_id and source["run_id"] is None

    lineage = Catalog.from_settings(migrated).run_lineage(run_id)
    assert [b.batch_id for b in lineage.read] == [source["batch_id"]]
    assert [b.batch_id for b in lineage.wrote] == [written["batch_id"]]
    history = alice.history("derived", "events")
    assert history[0]["run_id"] == run_id
    # The lineage API shows it to the run's owner, and 404 to anyone else.
    body = api.get(f"/api/v1/lineage/runs/{run_id}", headers=auth("tok-alice")).get_json()
    assert [b["batch_id"] for b in body["wrote"]] == [written["batch_id"]]
    assert api.get(f"/api/v1/lineage/runs/{run_id}", headers=auth("tok-bob")).status_code == 404

    # A user token may name one of its own runs (DOCKYARD_RUN_ID), never someone else's.
    named = Client(config=ClientConfig(url=job.config.url, token="tok-alice", run_id=run_id))
    assert named.store_dataframe(frame(1), "derived", "more")["run_id"] == run_id
    other = Client(config=ClientConfig(url=job.config.url, token="tok-bob", run_id=run_id))
    with pytest.raises(dockyard_data.RunNotFound):
        other.store_dataframe(frame(1), "bobs", "t")
