"""Dockyard's own tables (JupyterHub keeps its own database)."""

from dockyard.models.base import MAX_ID, Base, utcnow
from dockyard.models.catalog import (
    Batch,
    BatchRead,
    BatchState,
    DataTable,
    Namespace,
    PartitionPointer,
    PointerAction,
    PointerHistory,
)
from dockyard.models.clusters import FINAL_CLUSTER_STATES, Cluster, ClusterKind, ClusterState
from dockyard.models.images import CuratedImageSeed, Image, ImageEvent, ImageStatus
from dockyard.models.jobs import (
    FINAL_STATES,
    Backfill,
    JobDefinition,
    Run,
    RunEvent,
    RunKind,
    RunState,
    RunTag,
    TriggerCursor,
    TriggerFire,
)

__all__ = [
    "FINAL_CLUSTER_STATES",
    "FINAL_STATES",
    "MAX_ID",
    "Backfill",
    "Base",
    "Batch",
    "BatchRead",
    "BatchState",
    "Cluster",
    "ClusterKind",
    "ClusterState",
    "CuratedImageSeed",
    "DataTable",
    "Image",
    "ImageEvent",
    "ImageStatus",
    "JobDefinition",
    "Namespace",
    "PartitionPointer",
    "PointerAction",
    "PointerHistory",
    "Run",
    "RunEvent",
    "RunKind",
    "RunState",
    "RunTag",
    "TriggerCursor",
    "TriggerFire",
    "utcnow",
]
