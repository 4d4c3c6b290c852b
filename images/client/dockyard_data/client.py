"""The data client: store and load pandas frames with the batch-ID pattern."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Union

from dockyard_data import frames
from dockyard_data.clusters import (
    Cluster,
    find_cluster,
    find_cluster_here,
    join_job_ray_cluster,
    refuse_ray_client,
)
from dockyard_data.config import ClientConfig
from dockyard_data.errors import DockyardError
from dockyard_data.http import CatalogAPI
from dockyard_data.storage import filesystem, local_path

Partition = Mapping[str, Union[str, int]]
SPARK_S3A_HINT = (
    "Spark cannot read s3a:// paths in this image: the hadoop-aws and AWS SDK bundle jars "
    "matching its Spark build are missing. Rebuild the notebook image with the build "
    "argument HADOOP_AWS_JARS (URLs of the two jars) or put them in images/notebook/jars/."
)


def _as_of_text(as_of: None | str | datetime) -> str | None:
    if as_of is None or isinstance(as_of, str):
        return as_of
    if as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=timezone.utc)
    return as_of.isoformat()


def _partition_list(partitions: Any) -> list[dict[str, Any]] | None:
    if partitions is None:
        return None
    if isinstance(partitions, Mapping):
        return [dict(partitions)]
    return [dict(p) for p in partitions]


def _partition_text(partition: Partition | None) -> str | None:
    if partition is None:
        return None
    return "/".join(f"{k}={v}" for k, v in partition.items())


class Client:
    """One connection to Dockyard. The module-level functions use a client configured
    from the environment; make your own for another address or token."""

    def __init__(self, url: str | None = None, token: str | None = None,
                 config: ClientConfig | None = None) -> None:
        base = config or ClientConfig.from_env()
        if url is not None or token is not None:
            base = ClientConfig(url=(url or base.url).rstrip("/"), token=token or base.token,
                                run_id=base.run_id, data_root=base.data_root,
                                s3_endpoint_url=base.s3_endpoint_url, timeout=base.timeout)
        self.config = base
        self.api = CatalogAPI(base)

    # -- writing -----------------------------------------------------------------------
    def store_dataframe(self, df: Any, namespace: str, table: str,
                        partition: Partition | None = None, mode: str = "replace", *,
                        evolve: bool = False) -> dict[str, Any]:
        """Write ``df`` as a new batch of the partition and make it the current one.

        The previous batch stays (see ``history``/``rollback``). ``evolve=True`` lets
        the table gain new nullable columns; any other schema change is refused with
        ``SchemaMismatch``. Returns the committed batch."""
        if mode != "replace":
            raise ValueError("mode must be 'replace': every write replaces the partition "
                             "with a new batch (earlier batches stay in the history)")
        spec = dict(partition or {})
        text_values = {str(k): str(v) for k, v in spec.items()}
        prepared = frames.prepare(df, text_values)
        began = self.api.call("POST", self.api.table_path(namespace, table, "batches"), json={
            "partition": spec, "schema": prepared.fields(), "evolve": evolve,
            "run_id": self.config.run_id,
        })
        fs, path = filesystem(began["location"], began["storage"], self.config)
        try:
            frames.write_batch(prepared, fs, path, batch_id=began["batch_id"],
                               partition=began["partition_values"])
        except OSError as exc:
            raise DockyardError(f"Could not write batch {began['batch_id']} to "
                                f"{began['location']}: {exc}") from exc
        result = self._commit(namespace, table, began["batch_id"], evolve)
        batch = dict(result["batch"])
        batch["previous_batch_id"] = result.get("previous_batch_id")
        return batch

    def _commit(self, namespace: str, table: str, batch_id: str, evolve: bool) -> dict[str, Any]:
        return self.api.call(
            "POST", self.api.table_path(namespace, table, "batches", batch_id, "commit"),
            json={"evolve": evolve})

    # -- reading -----------------------------------------------------------------------
    def read_plan(self, namespace: str, table: str, partitions: Any = None,
                  batch_id: str | None = None,
                  as_of: None | str | datetime = None) -> dict[str, Any]:
        """The committed batches a load reads (and, in a job, the lineage record)."""
        return self.api.call("POST", self.api.table_path(namespace, table, "reads"), json={
            "partitions": _partition_list(partitions), "batch_id": batch_id,
            "as_of": _as_of_text(as_of), "run_id": self.config.run_id,
        })

    def load_arrow(self, namespace: str, table: str, partitions: Any = None,
                   batch_id: str | None = None, as_of: None | str | datetime = None,
                   columns: Sequence[str] | None = None, filters: Any = None) -> Any:
        plan = self.read_plan(namespace, table, partitions, batch_id, as_of)
        storage = plan["storage"]
        batches = plan["batches"]
        for batch in batches:
            batch.setdefault("columns", None)
        return frames.read_batches(
            batches, lambda location: filesystem(location, storage, self.config),
            columns=columns, filters=filters)

    def load_dataframe(self, namespace: str, table: str, partitions: Any = None,
                       batch_id: str | None = None, as_of: None | str | datetime = None,
                       columns: Sequence[str] | None = None, filters: Any = None) -> Any:
        """Read committed data as a pandas DataFrame.

        ``partitions``: a list of partition dicts (a partial dict selects every matching
        partition); default all. ``batch_id`` pins one batch; ``as_of`` reads the state at
        a time. ``columns`` and ``filters`` (pyarrow filters) are applied while reading."""
        table_ = self.load_arrow(namespace, table, partitions, batch_id, as_of, columns,
                                 filters)
        return table_.to_pandas(split_blocks=True, self_destruct=True)

    def cluster(self, name: str, wait: bool = True, timeout: float = 300) -> Cluster:
        """Your live Spark or Ray cluster called ``name``; with ``wait``, once it runs
        (``ClusterFailed`` with the reason when it failed or took over ``timeout`` s)."""
        return find_cluster(self.api, name, wait=wait, timeout=timeout)

    def cluster_here(self, wait: bool = True, timeout: float = 300) -> Cluster:
        """The cluster this job runs on (a job that asked for one: Dockyard sets
        DOCKYARD_CLUSTER_ID); ``ClusterNotFound`` anywhere else."""
        return find_cluster_here(self.api, wait=wait, timeout=timeout)

    def load_spark(self, spark: Any = None, namespace: str | None = None,
                   table: str | None = None, partitions: Any = None,
                   batch_id: str | None = None, as_of: None | str | datetime = None,
                   columns: Sequence[str] | None = None, *,
                   cluster: str | None = None) -> Any:
        """A Spark DataFrame over the committed files (nothing is copied). ``spark``: the
        session to read with; without one, the session of your cluster ``cluster``, or
        the one ``SparkSession.builder.getOrCreate()`` gives (in a job on a cluster, that
        cluster's)."""
        if isinstance(spark, str):
            raise TypeError("load_spark(spark, namespace, table, ...): pass the session "
                            "first, or name the table by keyword: load_spark(namespace=..., "
                            "table=..., cluster=...)")
        if namespace is None or table is None:
            raise TypeError("load_spark needs namespace= and table=")
        if spark is None:
            spark = self._spark_session(cluster)
        plan = self.read_plan(namespace, table, partitions, batch_id, as_of)
        paths, on_s3 = self._file_urls(plan, s3_scheme="s3a")
        if on_s3:
            _prepare_spark_s3a(spark, plan["storage"], self.config)
        reader = spark.read.option("mergeSchema", "true")
        try:
            frame = reader.parquet(*paths)
        except Exception as exc:
            if on_s3 and ("s3a" in str(exc) or "S3AFileSystem" in str(exc)):
                raise DockyardError(SPARK_S3A_HINT) from None
            raise
        return frame.select(*columns) if columns else frame

    def _spark_session(self, cluster: str | None) -> Any:
        if cluster is not None:
            return self.cluster(cluster).spark()
        from pyspark.sql import SparkSession

        return SparkSession.builder.getOrCreate()

    def load_ray(self, namespace: str, table: str, partitions: Any = None,
                 batch_id: str | None = None, as_of: None | str | datetime = None,
                 columns: Sequence[str] | None = None, *,
                 cluster: str | None = None) -> Any:
        """A Ray Dataset over the committed files. With ``cluster``, read by your Ray
        cluster of that name (this process joins it first, unless Ray is already
        initialised here). Without, in a job on a Ray cluster, before Ray is initialised:
        read by the job's own cluster, joined the same way; elsewhere Ray's default (a
        local Ray). Ray Data cannot read through the Ray Client: connected that way
        (``ray.init()`` with RAY_ADDRESS=ray://...), this raises ``RayClientMode`` saying
        what to do instead."""
        if cluster is not None:
            self.cluster(cluster).ray()
        else:
            join_job_ray_cluster()
        refuse_ray_client()
        import ray.data

        plan = self.read_plan(namespace, table, partitions, batch_id, as_of)
        paths, on_s3 = self._file_urls(plan, s3_scheme=None)
        options: dict[str, Any] = {}
        if on_s3:
            import pyarrow.fs

            storage = plan["storage"]
            endpoint = self.config.s3_endpoint_url or storage.get("endpoint_url") or None
            options["filesystem"] = pyarrow.fs.S3FileSystem(
                endpoint_override=endpoint, region=storage.get("region") or None)
        if columns:
            options["columns"] = list(columns)
        return ray.data.read_parquet(paths, **options)

    def _file_urls(self, plan: dict[str, Any], s3_scheme: str | None) -> tuple[list[str], bool]:
        paths: list[str] = []
        on_s3 = False
        for batch in plan["batches"]:
            location = batch["location"]
            for name in batch["files"]:
                if location.startswith("s3://"):
                    on_s3 = True
                    key = location[len("s3://"):] + "/" + name
                    paths.append(f"{s3_scheme}://{key}" if s3_scheme else key)
                else:
                    local = local_path(location, plan["storage"], self.config)
                    paths.append(("file://" if s3_scheme else "") + local + "/" + name)
        return paths, on_s3

    # -- catalog -----------------------------------------------------------------------
    def history(self, namespace: str, table: str, partition: Partition | None = None, *,
                limit: int = 1000) -> list[dict[str, Any]]:
        """Every commit and rollback of the table (or one partition), oldest first."""
        params: dict[str, Any] = {"limit": limit}
        text = _partition_text(partition)
        if text is not None:
            params["partition"] = text
        return self.api.call("GET", self.api.table_path(namespace, table, "history"),
                             params=params)["history"]

    def rollback(self, namespace: str, table: str, partition: Partition | None = None,
                 to_batch: str | None = None) -> dict[str, Any]:
        """Point the partition back at ``to_batch``, or at the batch committed before the
        current one. Nothing is deleted; the rollback is itself in the history."""
        return self.api.call("POST", self.api.table_path(namespace, table, "rollback"),
                             json={"partition": dict(partition or {}), "to_batch": to_batch})

    def list_tables(self, namespace: str | None = None) -> list[dict[str, Any]]:
        params = {"namespace": namespace} if namespace else None
        return self.api.call("GET", "/tables", params=params)["tables"]

    def table_info(self, namespace: str, table: str) -> dict[str, Any]:
        return self.api.call("GET", self.api.table_path(namespace, table))

    def partitions(self, namespace: str, table: str) -> list[dict[str, Any]]:
        return self.api.call("GET", self.api.table_path(namespace, table,
                                                        "partitions"))["partitions"]


def _prepare_spark_s3a(spark: Any, storage: dict[str, str], config: ClientConfig) -> None:
    jvm = spark.sparkContext._jvm
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()
    try:
        jvm.org.apache.hadoop.fs.FileSystem.getFileSystemClass("s3a", hadoop)
    except Exception:
        raise DockyardError(SPARK_S3A_HINT) from None
    endpoint = config.s3_endpoint_url or storage.get("endpoint_url") or ""
    if endpoint:
        hadoop.set("fs.s3a.endpoint", endpoint)
        hadoop.set("fs.s3a.path.style.access", "true")
    if storage.get("region"):
        hadoop.set("fs.s3a.endpoint.region", storage["region"])
