"""The same pattern on S3: a moto server process stands in for the bucket, reached by
s3fs on the server and by the client (pyarrow writing through fsspec)."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pandas as pd
import pytest
from dockyard_data import Client, ClientConfig
from flask import Flask

from dockyard.data import Actor, BatchIncomplete, Catalog
from dockyard.settings import Settings
from dockyard.web import create_app
from tests.conftest import USERS, TokenTable, auth
from tests.data.conftest import S3_BUCKET, served

DAY = {"date": "20161031"}


@pytest.fixture
def s3_app(s3_settings: Settings) -> Flask:
    app = create_app(s3_settings, identity=TokenTable(dict(USERS)))
    app.config["TESTING"] = True
    return app


@pytest.fixture
def s3_client(s3_app: Flask) -> Iterator[Client]:
    with served(s3_app) as url:
        yield Client(config=ClientConfig(url=url, token="tok-alice"))


def s3_keys(endpoint: str, prefix: str) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=S3_BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def test_round_trip_history_and_rollback_on_s3(s3_client: Client, s3_settings: Settings,
                                               s3_app: Flask) -> None:
    df = pd.DataFrame({"id": range(1000), "name": [f"n{i}" for i in range(1000)]})
    first = s3_client.store_dataframe(df, "sales", "orders", partition=DAY)
    prefix = s3_settings.data_root.removeprefix(f"s3://{S3_BUCKET}/")
    assert first["location"] == (f"{s3_settings.data_root}/sales/orders/date=20161031/"
                                 f"{first['batch_id']}")
    keys = s3_keys(s3_settings.data_s3_endpoint_url, prefix)
    assert keys == [f"{prefix}/sales/orders/date=20161031/{first['batch_id']}/{name}"
                    for name in ("_dockyard_manifest.json", "part-00000.parquet")]

    loaded = s3_client.load_dataframe("sales", "orders")
    pd.testing.assert_frame_equal(loaded, df.assign(date="20161031"), check_dtype=False)

    second = s3_client.store_dataframe(df.head(10), "sales", "orders", partition=DAY)
    assert len(s3_client.load_dataframe("sales", "orders")) == 10
    assert [h["batch_id"] for h in s3_client.history("sales", "orders")] == [
        first["batch_id"], second["batch_id"]]
    s3_client.rollback("sales", "orders", DAY)
    assert len(s3_client.load_dataframe("sales", "orders")) == 1000
    assert len(s3_client.load_dataframe("sales", "orders", batch_id=second["batch_id"])) == 10

    preview = s3_app.test_client().get("/api/v1/tables/sales/orders/preview?limit=3",
                                       headers=auth("tok-bob"))
    assert preview.get_json()["rows"] == [[0, "n0", "20161031"], [1, "n1", "20161031"],
                                          [2, "n2", "20161031"]]


def test_commit_checks_s3_objects_and_gc_removes_abandoned_ones(s3_settings: Settings) -> None:
    catalog = Catalog.from_settings(s3_settings)
    alice = Actor("alice")
    began = catalog.begin_batch(alice, "sales", "orders", DAY)
    with pytest.raises(BatchIncomplete, match="no _dockyard_manifest.json"):
        catalog.commit_batch(alice, "sales", "orders", began.batch_id)
    s3 = boto3.client("s3", endpoint_url=s3_settings.data_s3_endpoint_url,
                      region_name="us-east-1")
    key = began.location.removeprefix(f"s3://{S3_BUCKET}/")
    s3.put_object(Bucket=S3_BUCKET, Key=f"{key}/part-00000.parquet", Body=b"half a file")
    prefix = s3_settings.data_root.removeprefix(f"s3://{S3_BUCKET}/")
    assert len(s3_keys(s3_settings.data_s3_endpoint_url, prefix)) == 1

    from datetime import timedelta

    report = catalog.collect_garbage(timedelta(0))
    assert report.removed == [began.batch_id]
    assert s3_keys(s3_settings.data_s3_endpoint_url, prefix) == []
