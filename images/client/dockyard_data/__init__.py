"""Dockyard's data client: store and load dataframes with the batch-ID pattern.

    from dockyard_data import store_dataframe, load_dataframe, history, rollback
    store_dataframe(df, "sales", "orders", partition={"date": "20161031"})
    df = load_dataframe("sales", "orders", partitions=[{"date": "20161031"}])

Your Spark and Ray clusters: ``spark = cluster("big-join").spark()``.

Inside Dockyard notebooks and jobs it needs no configuration; elsewhere set
``DOCKYARD_URL`` (the service address, …/services/dockyard/) and ``DOCKYARD_TOKEN``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from dockyard_data.client import Client, Partition
from dockyard_data.clusters import Cluster, ClusterFailed, ClusterNotFound
from dockyard_data.config import ClientConfig
from dockyard_data.errors import (
    AuthenticationFailed,
    BatchIncomplete,
    BatchNotFound,
    DockyardError,
    InvalidRequest,
    NotConfigured,
    NothingToRollBack,
    PartitionNotFound,
    PermissionDenied,
    RunNotFound,
    SchemaMismatch,
    ServiceUnavailable,
    TableNotFound,
)

__version__ = "0.1.0"

_lock = threading.Lock()
_default: tuple[ClientConfig, Client] | None = None


def default_client() -> Client:
    """A client from the environment, rebuilt when the environment changes."""
    global _default
    config = ClientConfig.from_env()
    with _lock:
        if _default is None or _default[0] != config:
            _default = (config, Client(config=config))
        return _default[1]


def store_dataframe(df: Any, namespace: str, table: str, partition: Partition | None = None,
                    mode: str = "replace", *, evolve: bool = False) -> dict[str, Any]:
    """Write ``df`` as a new batch of ``partition`` (a dict such as {"date": "20161031"},
    or None for an unpartitioned table) and make it current. Returns the batch."""
    return default_client().store_dataframe(df, namespace, table, partition, mode,
                                            evolve=evolve)


def load_dataframe(namespace: str, table: str, partitions: Any = None,
                   batch_id: str | None = None, as_of: None | str | datetime = None,
                   columns: Sequence[str] | None = None, filters: Any = None) -> Any:
    """Read the current batch of each partition (or a pinned batch, or the state as of a
    time) as a pandas DataFrame."""
    return default_client().load_dataframe(namespace, table, partitions, batch_id, as_of,
                                           columns, filters)


def history(namespace: str, table: str, partition: Partition | None = None, *,
            limit: int = 1000) -> list[dict[str, Any]]:
    """Commits and rollbacks, oldest first."""
    return default_client().history(namespace, table, partition, limit=limit)


def rollback(namespace: str, table: str, partition: Partition | None = None,
             to_batch: str | None = None) -> dict[str, Any]:
    """Point a partition back at an earlier batch (default: the one before the current)."""
    return default_client().rollback(namespace, table, partition, to_batch)


def list_tables(namespace: str | None = None) -> list[dict[str, Any]]:
    return default_client().list_tables(namespace)


def load_spark(spark: Any = None, namespace: str | None = None, table: str | None = None,
               partitions: Any = None, batch_id: str | None = None,
               as_of: None | str | datetime = None, columns: Sequence[str] | None = None, *,
               cluster: str | None = None) -> Any:
    """A Spark DataFrame over the committed parquet files, read with ``spark``, or with
    your cluster ``cluster`` (``load_spark(namespace="sales", table="orders",
    cluster="big-join")``)."""
    return default_client().load_spark(spark, namespace, table, partitions, batch_id, as_of,
                                       columns, cluster=cluster)


def load_ray(namespace: str, table: str, partitions: Any = None, batch_id: str | None = None,
             as_of: None | str | datetime = None,
             columns: Sequence[str] | None = None, *, cluster: str | None = None) -> Any:
    """A Ray Dataset over the committed parquet files (read by your Ray cluster
    ``cluster`` when named)."""
    return default_client().load_ray(namespace, table, partitions, batch_id, as_of, columns,
                                     cluster=cluster)


def cluster(name: str, wait: bool = True, timeout: float = 300) -> Cluster:
    """Your live Spark or Ray cluster called ``name`` (started on Dockyard's Clusters
    page), once it runs: ``cluster("big-join").spark()``, ``cluster("tune").ray()``."""
    return default_client().cluster(name, wait=wait, timeout=timeout)


def cluster_here(wait: bool = True, timeout: float = 300) -> Cluster:
    """In a job that asked for a cluster, that cluster: ``cluster_here().ray()``."""
    return default_client().cluster_here(wait=wait, timeout=timeout)


__all__ = [
    "AuthenticationFailed",
    "BatchIncomplete",
    "BatchNotFound",
    "Client",
    "ClientConfig",
    "Cluster",
    "ClusterFailed",
    "ClusterNotFound",
    "DockyardError",
    "InvalidRequest",
    "NotConfigured",
    "NothingToRollBack",
    "PartitionNotFound",
    "PermissionDenied",
    "RunNotFound",
    "SchemaMismatch",
    "ServiceUnavailable",
    "TableNotFound",
    "cluster",
    "cluster_here",
    "default_client",
    "history",
    "list_tables",
    "load_dataframe",
    "load_ray",
    "load_spark",
    "rollback",
    "store_dataframe",
]
