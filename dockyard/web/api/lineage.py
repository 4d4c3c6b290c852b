"""REST API: the lineage graph around a table, a run or a definition (dockyard.jobs.lineage)."""

from __future__ import annotations

from typing import Literal

from flask import url_for
from pydantic import BaseModel, ConfigDict, Field

from dockyard.jobs import lineage as graphs
from dockyard.models import MAX_ID
from dockyard.web.api import route
from dockyard.web.auth import User, current_user
from dockyard.web.context import db


class LineageQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    namespace: str | None = Field(None, max_length=128, description="With table: a table.")
    table: str | None = Field(None, max_length=128)
    run_id: int | None = Field(None, ge=1, le=MAX_ID, description="Or a run.")
    definition_id: int | None = Field(None, ge=1, le=MAX_ID, description="Or a definition.")
    depth: int = Field(graphs.DEFAULT_DEPTH, ge=1, le=graphs.MAX_DEPTH,
                       description="Levels upstream and downstream.")
    limit: int = Field(graphs.DEFAULT_LIMIT, ge=1, le=graphs.MAX_LIMIT,
                       description="At most this many nodes, the nearest first.")


class LineageNodeOut(BaseModel):
    id: str = Field(description="table:<namespace>/<name>, batch:<batch id>, run:<id> or "
                    "definition:<id>.")
    kind: Literal["table", "batch", "run", "definition"]
    label: str
    url: str | None = Field(description="Its page; null for another user's run.")
    status: str | None = Field(None, description="A run's status; 'paused' for a paused "
                               "definition.")


class LineageEdgeOut(BaseModel):
    source: str
    target: str
    kind: Literal["wrote", "in", "read", "made", "fires_on", "after"] = Field(
        description="run wrote batch, batch in table, batch read by run, definition made "
        "run, table fires_on definition, definition after definition.")


class LineageOut(BaseModel):
    anchor: str = Field(description="The id of the node in view.")
    depth: int
    limit: int
    truncated: bool = Field(description="Nodes within depth were left out to keep to limit.")
    nodes: list[LineageNodeOut]
    edges: list[LineageEdgeOut]


def node_url(node: graphs.Node) -> str | None:
    """The page of a node, for the caller; None when they may not open it."""
    ref = node.ref
    if ref is None:
        return None
    if node.kind == "table":
        return url_for("data.table_page", namespace=ref["namespace"], name=ref["table"])
    if node.kind == "batch":
        return url_for("data.partition_page", namespace=ref["namespace"], name=ref["table"],
                       p=ref["partition"], batch=ref["batch_id"])
    if node.kind == "run":
        return url_for("jobs.run_page", run_id=ref["id"])
    return url_for("jobs.definition_page", definition_id=ref["id"])


def lineage_out(graph: graphs.Graph) -> LineageOut:
    return LineageOut(
        anchor=graph.anchor, depth=graph.depth, limit=graph.limit, truncated=graph.truncated,
        nodes=[LineageNodeOut(id=n.id, kind=n.kind, label=n.label, url=node_url(n),
                              status=n.status) for n in graph.nodes],
        edges=[LineageEdgeOut(source=e.source, target=e.target, kind=e.kind)
               for e in graph.edges],
    )


def answer(query: LineageQuery) -> LineageOut:
    """The graph the query asks for, as the caller may see it (the API's and the page's)."""
    caller: User | None = current_user()
    assert caller is not None  # the route or the page has authenticated
    graph = graphs.lineage(db(), caller, namespace=query.namespace, table=query.table,
                           run_id=query.run_id, definition_id=query.definition_id,
                           depth=query.depth, limit=query.limit)
    return lineage_out(graph)


@route("/lineage", tag="lineage", query=LineageQuery, response=LineageOut,
       responses={404: "No such table, or no such run or definition of yours",
                  422: "Not exactly one of namespace+table, run_id, definition_id"})
def get_lineage(query: LineageQuery) -> LineageOut:
    """Tables, batches, runs and definitions upstream and downstream of one of them.

    Name a table (namespace and table), a run (run_id) or a definition (definition_id).
    Edges: a run wrote a batch, a batch is in a table, a batch was read by a run, a
    definition made a run, a table fires on a definition, a definition runs after another.
    Others' runs and definitions are left out (admins see everyone's), but for the runs
    that wrote a batch in view, which appear without label or link."""
    return answer(query)
