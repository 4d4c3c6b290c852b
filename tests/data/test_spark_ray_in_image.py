"""Spark (local mode) and Ray, in the notebook image, read what pandas wrote, through
load_spark and load_ray over the committed parquet files; and for a table on S3,
load_spark either reads s3a:// or names the build argument that adds the missing jars."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from dockyard_data import Client, ClientConfig

from dockyard.settings import Settings
from dockyard.web import create_app
from tests.conftest import USERS, TokenTable
from tests.data.conftest import served
from tests.data.incontainer import NOTEBOOK_IMAGE, run_in_notebook_image
from tests.support.requirements import require_image

SCRIPT = r"""
import os

import ray
from pyspark.sql import SparkSession
from dockyard_data import Client, ClientConfig, DockyardError, load_ray, load_spark

spark = SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false").getOrCreate()
frame = load_spark(spark, "sales", "orders")
assert frame.count() == 3000, frame.count()
assert sorted(frame.columns) == ["date", "id", "price", "sku"], frame.columns
one_day = load_spark(spark, "sales", "orders", partitions=[{"date": "20161031"}], columns=["id"])
assert one_day.count() == 1000 and one_day.columns == ["id"]
by_day = {r["date"]: r["count"] for r in frame.groupBy("date").count().collect()}
assert by_day == {"20161030": 1000, "20161031": 1000, "20161101": 1000}, by_day

on_s3 = Client(config=ClientConfig(url=os.environ["S3_DOCKYARD_URL"], token="tok-alice"))
try:
    print(f"S3A-READ {on_s3.load_spark(spark, 'sales', 'orders').count()}")
except DockyardError as exc:
    print(f"S3A-REFUSED {exc}")
spark.stop()

ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
dataset = load_ray("sales", "orders")
assert dataset.count() == 3000
assert dataset.sum("id") == 3 * sum(range(1000))
assert set(dataset.schema().names) == {"id", "price", "sku", "date"}
ray.shutdown()
print("SPARK-RAY-OK")
"""


@pytest.mark.docker
@pytest.mark.timeout(900)
def test_spark_and_ray_read_what_pandas_wrote(connect, live_url: str, migrated: Settings,
                                              s3_settings: Settings) -> None:
    require_image(NOTEBOOK_IMAGE)
    alice = connect("tok-alice")
    rng = np.random.default_rng(1)
    for day in ("20161030", "20161031", "20161101"):
        df = pd.DataFrame({"id": np.arange(1000), "price": rng.random(1000),
                           "sku": [f"s{i % 7}" for i in range(1000)]})
        alice.store_dataframe(df, "sales", "orders", partition={"date": day})

    s3_app = create_app(s3_settings, identity=TokenTable(dict(USERS)))
    with served(s3_app) as s3_url:
        Client(config=ClientConfig(url=s3_url, token="tok-alice")).store_dataframe(
            pd.DataFrame({"id": range(100)}), "sales", "orders")
        result = run_in_notebook_image(
            SCRIPT, program=["python", "-c"], live_url=live_url, token="tok-alice",
            data_dir=migrated.data_dir,
            env={"S3_DOCKYARD_URL": s3_url, "AWS_ACCESS_KEY_ID": "testing",
                 "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"})
    output = result.stdout
    assert "SPARK-RAY-OK" in output, output[-3000:] + result.stderr[-5000:]
    # With the hadoop-aws jars in the image Spark reads s3a://; without them load_spark
    # names the build argument that adds them, instead of a Java stack trace.
    refused = "S3A-REFUSED" in output and "HADOOP_AWS_JARS" in output
    assert "S3A-READ 100" in output or refused, output[-3000:]
