"""The lineage graph: the tables, batches, runs and definitions upstream and downstream of
one of them, as nodes and edges, cut to what the caller may see and to a number of nodes.

Edges point the way data and work flow: a run ``wrote`` a batch, a batch is ``in`` its
table, a batch was ``read`` by a run, a definition ``made`` a run, a table ``fires_on`` a
definition (its on_batch trigger), a definition runs ``after`` another one. The graph is
walked level by level, upstream against the edges and downstream along them, each level
a few queries for all the nodes of the level at once. A batch always comes with its
table (at the same level), so that a batch read from elsewhere says where it lives.

Data (tables, batches) is everyone's to see; runs and definitions are their owner's and
the admins'. Another user's run that wrote a batch in view is shown without its label
or page, and the walk does not go past it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from dockyard.data.errors import TableNotFound
from dockyard.jobs.schemas import FieldProblem
from dockyard.jobs.service import Caller, InvalidJob, get_definition, get_run
from dockyard.models import (
    Batch,
    BatchRead,
    BatchState,
    DataTable,
    JobDefinition,
    Run,
)

NodeKind = Literal["table", "batch", "run", "definition"]
EdgeKind = Literal["wrote", "in", "read", "made", "fires_on", "after"]

MAX_DEPTH = 5
DEFAULT_DEPTH = 2
DEFAULT_LIMIT = 300
MAX_LIMIT = 1000
#: Labels longer than this are cut: a graph of 200 nodes stays readable.
LABEL_CHARS = 28
OTHERS_RUN = "another user's run"

# A node while the graph is built: its kind and primary key.
_Key = tuple[str, int]


@dataclass(frozen=True)
class Node:
    id: str
    kind: NodeKind
    label: str
    status: str | None = None
    #: What the node's page is found by (``namespace``/``table``/``partition``/``batch_id``
    #: for data, ``id`` for runs and definitions); None when the caller may not open it.
    ref: dict[str, Any] | None = None


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    kind: EdgeKind


@dataclass
class Graph:
    #: The id of the node in view.
    anchor: str
    depth: int
    limit: int
    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    #: Something within ``depth`` was left out to keep to ``limit`` nodes.
    truncated: bool = False


def short(text: str, chars: int = LABEL_CHARS) -> str:
    return text if len(text) <= chars else text[: chars - 1] + "…"


def check_request(*, namespace: str | None, table: str | None, run_id: int | None,
                  definition_id: int | None, depth: int, limit: int) -> None:
    """Exactly one object in view (a table by namespace and name, a run or a definition),
    and a depth and limit in range; raises InvalidJob naming the fields at fault."""
    problems: list[FieldProblem] = []
    if (namespace is None) != (table is None):
        missing = "table" if table is None else "namespace"
        problems.append(FieldProblem(missing, "a table is named by namespace and table"))
    anchors = [name for name, value in (("table", table or namespace), ("run_id", run_id),
                                        ("definition_id", definition_id)) if value is not None]
    if len(anchors) != 1:
        problems.append(FieldProblem(
            "anchor", "give exactly one of namespace and table, run_id or definition_id"
            + (f" (got {', '.join(anchors)})" if anchors else "")))
    if not 1 <= depth <= MAX_DEPTH:
        problems.append(FieldProblem("depth", f"between 1 and {MAX_DEPTH}"))
    if not 1 <= limit <= MAX_LIMIT:
        problems.append(FieldProblem("limit", f"between 1 and {MAX_LIMIT}"))
    if problems:
        raise InvalidJob(problems)


def lineage(session: Session, caller: Caller, *, namespace: str | None = None,
            table: str | None = None, run_id: int | None = None,
            definition_id: int | None = None, depth: int = DEFAULT_DEPTH,
            limit: int = DEFAULT_LIMIT) -> Graph:
    """The graph around a table (with its batches), a run or a definition: ``depth`` levels
    upstream and downstream, at most ``limit`` nodes (the nearest first)."""
    check_request(namespace=namespace, table=table, run_id=run_id,
                  definition_id=definition_id, depth=depth, limit=limit)
    walk = _Walk(session, caller, limit)
    start: dict[str, set[int]] = {"table": set(), "batch": set(), "run": set(),
                                  "definition": set()}
    if namespace is not None and table is not None:
        row = session.scalars(select(DataTable).where(
            DataTable.namespace == namespace, DataTable.name == table)).one_or_none()
        if row is None:
            raise TableNotFound(f"There is no table {namespace}.{table}")
        walk.tables[row.id] = row
        node = walk.table_node(row)
        start["table"].add(row.id)
        walk.add(("table", row.id), node)
        # The table in view is shown with its batches: both are where the walk starts.
        start["batch"] |= walk.add_batches(walk.capped(session.scalars(
            select(Batch).where(Batch.table_id == row.id, Batch.state == BatchState.COMMITTED)
            .order_by(Batch.id.desc()).limit(walk.cap))))
    elif run_id is not None:
        run = get_run(session, caller, run_id)
        walk.runs[run.id] = run
        node = walk.run_node(run)
        start["run"].add(run.id)
        walk.add(("run", run.id), node)
    else:
        assert definition_id is not None
        definition = get_definition(session, caller, definition_id)
        node = walk.definition_node(definition)
        start["definition"].add(definition.id)
        walk.add(("definition", definition.id), node)

    # Level by level, each level upstream then downstream: when the graph fills up, what
    # is left out is what lies farthest from the object in view. Upstream of a table is
    # its batches, already there.
    upstream_start = {**_copy(start), "table": set()}
    sweeps = [(walk.upstream, upstream_start), (walk.downstream, _copy(start))]
    seen = [_keys(start), _keys(start)]
    for _level in range(depth):
        for index, (step, frontier) in enumerate(sweeps):
            if not any(frontier.values()):
                continue
            reached = step(frontier)
            fresh = {kind: {key for key in keys if (kind, key) not in seen[index]}
                     for kind, keys in reached.items()}
            seen[index] |= _keys(fresh)
            sweeps[index] = (step, fresh)
    return walk.graph(node.id, depth)


def _copy(frontier: dict[str, set[int]]) -> dict[str, set[int]]:
    return {kind: set(keys) for kind, keys in frontier.items()}


def _keys(frontier: dict[str, set[int]]) -> set[_Key]:
    return {(kind, key) for kind, keys in frontier.items() for key in keys}


class _Walk:
    """The nodes and edges found so far, and the rows they came from."""

    def __init__(self, session: Session, caller: Caller, limit: int) -> None:
        self.session = session
        self.caller = caller
        self.limit = limit
        # Any one query reads at most this many rows: more would not fit in the graph.
        self.cap = limit + 1
        self.nodes: dict[_Key, Node] = {}
        self.edges: dict[tuple[_Key, _Key, EdgeKind], None] = {}
        self.truncated = False
        self.tables: dict[int, DataTable] = {}
        self.batches: dict[int, Batch] = {}
        self.runs: dict[int, Run] = {}

    # -- the graph ----------------------------------------------------------------------
    def add(self, key: _Key, node: Node) -> bool:
        if key in self.nodes:
            return True
        if len(self.nodes) >= self.limit:
            self.truncated = True
            return False
        self.nodes[key] = node
        return True

    def link(self, source: _Key, target: _Key, kind: EdgeKind) -> None:
        self.edges[(source, target, kind)] = None

    def capped(self, rows: Iterable[Any]) -> list[Any]:
        """The rows of a query limited to ``cap``: when it filled up, there may be more
        than fits, and the graph says it was cut."""
        found = list(rows)
        if len(found) >= self.cap:
            self.truncated = True
            return found[: self.limit]
        return found

    def graph(self, anchor: str, depth: int) -> Graph:
        edges = [Edge(self.nodes[s].id, self.nodes[t].id, kind)
                 for (s, t, kind) in self.edges if s in self.nodes and t in self.nodes]
        return Graph(anchor=anchor, depth=depth, limit=self.limit,
                     nodes=list(self.nodes.values()), edges=edges, truncated=self.truncated)

    def visible(self, owner: str) -> bool:
        return self.caller.admin or owner == self.caller.name

    def owned(self, query: Any, owner: Any) -> Any:
        """``query`` limited to the caller's rows, unless the caller is an admin."""
        return query if self.caller.admin else query.where(owner == self.caller.name)

    # -- nodes --------------------------------------------------------------------------
    def table_node(self, table: DataTable) -> Node:
        return Node(id=f"table:{table.namespace}/{table.name}", kind="table",
                    label=short(f"{table.namespace}.{table.name}"),
                    ref={"namespace": table.namespace, "table": table.name})

    def batch_node(self, batch: Batch, table: DataTable) -> Node:
        # Batch ids begin with their time; the end tells two of one partition apart.
        label = f"{batch.partition or 'batch'} …{batch.batch_id[-6:]}"
        return Node(id=f"batch:{batch.batch_id}", kind="batch", label=short(label, 36),
                    ref={"namespace": table.namespace, "table": table.name,
                         "partition": batch.partition, "batch_id": batch.batch_id})

    def run_node(self, run: Run) -> Node:
        if not self.visible(run.owner):
            return Node(id=f"run:{run.id}", kind="run", label=OTHERS_RUN)
        return Node(id=f"run:{run.id}", kind="run", label=f"run {run.id}",
                    status=str(run.status), ref={"id": run.id})

    def definition_node(self, definition: JobDefinition) -> Node:
        return Node(id=f"definition:{definition.id}", kind="definition",
                    label=short(definition.name),
                    status="paused" if definition.paused else None, ref={"id": definition.id})

    def add_batches(self, batches: Iterable[Batch]) -> set[int]:
        """Add batches, each after its table (``in``); returns the batches added."""
        batches = list(batches)
        self.load_tables({b.table_id for b in batches})
        added: set[int] = set()
        for batch in batches:
            self.batches[batch.id] = batch
            table = self.tables[batch.table_id]
            if self.add(("table", table.id), self.table_node(table)) and \
                    self.add(("batch", batch.id), self.batch_node(batch, table)):
                self.link(("batch", batch.id), ("table", table.id), "in")
                added.add(batch.id)
        return added

    def add_run(self, run: Run) -> bool:
        self.runs[run.id] = run
        return self.add(("run", run.id), self.run_node(run))

    def load_tables(self, ids: Iterable[int | None]) -> None:
        missing = {i for i in ids if i is not None} - self.tables.keys()
        if missing:
            for table in self.session.scalars(select(DataTable).where(DataTable.id.in_(missing))):
                self.tables[table.id] = table

    def load_runs(self, ids: Iterable[int | None]) -> None:
        missing = {i for i in ids if i is not None} - self.runs.keys()
        if missing:
            for run in self.session.scalars(select(Run).where(Run.id.in_(missing))):
                self.runs[run.id] = run

    def load_batches(self, ids: Iterable[int]) -> None:
        missing = set(ids) - self.batches.keys()
        if missing:
            for batch in self.session.scalars(select(Batch).where(Batch.id.in_(missing))):
                self.batches[batch.id] = batch

    def definitions(self, ids: Iterable[int | None]) -> list[JobDefinition]:
        """The caller's definitions among ``ids`` (everyone's for an admin)."""
        ids = {i for i in ids if i is not None}
        if not ids:
            return []
        query = select(JobDefinition).where(JobDefinition.id.in_(ids))
        return list(self.session.scalars(self.owned(query, JobDefinition.owner)))

    # -- one level ----------------------------------------------------------------------
    def upstream(self, frontier: dict[str, set[int]]) -> dict[str, set[int]]:
        """Where the frontier's nodes came from: a table's batches, the run that wrote a
        batch, what a run read and its definition, what a definition follows."""
        reached: dict[str, set[int]] = {"table": set(), "batch": set(), "run": set(),
                                        "definition": set()}
        if frontier["table"]:
            reached["batch"] |= self.add_batches(self.capped(self.session.scalars(
                select(Batch).where(Batch.table_id.in_(frontier["table"]),
                                    Batch.state == BatchState.COMMITTED)
                .order_by(Batch.id.desc()).limit(self.cap))))
        if frontier["batch"]:
            self.load_batches(frontier["batch"])
            self.load_runs(self.batches[b].run_id for b in frontier["batch"])
            for batch_id in sorted(frontier["batch"]):
                run = self.runs.get(self.batches[batch_id].run_id)
                if run is not None and self.add_run(run):
                    self.link(("run", run.id), ("batch", batch_id), "wrote")
                    if self.visible(run.owner):
                        reached["run"].add(run.id)
        if frontier["run"]:
            rows = self.capped(self.session.execute(
                select(BatchRead.run_id, Batch).join(Batch, Batch.id == BatchRead.batch_id)
                .where(BatchRead.run_id.in_(frontier["run"]))
                .order_by(BatchRead.run_id, Batch.id).limit(self.cap)))
            added = self.add_batches(batch for _, batch in rows)
            for run_id, batch in rows:
                if ("batch", batch.id) in self.nodes:
                    self.link(("batch", batch.id), ("run", run_id), "read")
            reached["batch"] |= added
            self.load_runs(frontier["run"])
            by_id = {d.id: d for d in self.definitions(
                self.runs[r].definition_id for r in frontier["run"])}
            for run_id in sorted(frontier["run"]):
                definition = by_id.get(self.runs[run_id].definition_id)
                if definition is not None and self.add(("definition", definition.id),
                                                       self.definition_node(definition)):
                    self.link(("definition", definition.id), ("run", run_id), "made")
                    reached["definition"].add(definition.id)
        if frontier["definition"]:
            here = self.definitions(set(frontier["definition"]))
            leaders = {d.id: d for d in self.definitions({d.after_definition_id for d in here})}
            self.load_tables(d.on_batch_table_id for d in here)
            for definition in here:
                leader = leaders.get(definition.after_definition_id)
                if leader is not None and self.add(("definition", leader.id),
                                                   self.definition_node(leader)):
                    self.link(("definition", leader.id), ("definition", definition.id), "after")
                    reached["definition"].add(leader.id)
                table = self.tables.get(definition.on_batch_table_id)
                if table is not None and self.add(("table", table.id), self.table_node(table)):
                    self.link(("table", table.id), ("definition", definition.id), "fires_on")
                    reached["table"].add(table.id)
        return reached

    def downstream(self, frontier: dict[str, set[int]]) -> dict[str, set[int]]:
        """What the frontier's nodes led to: the definitions a table fires, a batch's table
        and its readers, the batches a run wrote, a definition's runs and followers."""
        reached: dict[str, set[int]] = {"table": set(), "batch": set(), "run": set(),
                                        "definition": set()}
        if frontier["table"]:
            query = (select(JobDefinition)
                     .where(JobDefinition.on_batch_table_id.in_(frontier["table"]))
                     .order_by(JobDefinition.id).limit(self.cap))
            for definition in self.capped(self.session.scalars(
                    self.owned(query, JobDefinition.owner))):
                if self.add(("definition", definition.id), self.definition_node(definition)):
                    self.link(("table", definition.on_batch_table_id),
                              ("definition", definition.id), "fires_on")
                    reached["definition"].add(definition.id)
        if frontier["batch"]:
            query = (select(BatchRead.batch_id, Run).join(Run, Run.id == BatchRead.run_id)
                     .where(BatchRead.batch_id.in_(frontier["batch"]))
                     .order_by(Run.id).limit(self.cap))
            for batch_id, run in self.capped(self.session.execute(self.owned(query, Run.owner))):
                if self.add_run(run):
                    self.link(("batch", batch_id), ("run", run.id), "read")
                    reached["run"].add(run.id)
        if frontier["run"]:
            written = self.capped(self.session.scalars(
                select(Batch).where(Batch.run_id.in_(frontier["run"]),
                                    Batch.state == BatchState.COMMITTED)
                .order_by(Batch.id).limit(self.cap)))
            added = self.add_batches(written)
            for batch in written:
                if batch.id in added:
                    self.link(("run", batch.run_id), ("batch", batch.id), "wrote")
            reached["batch"] |= added
            # A batch's table is at the batch's level: what fires on it is one level on.
            reached["table"] |= {self.batches[b].table_id for b in added}
        if frontier["definition"]:
            query = (select(Run).where(Run.definition_id.in_(frontier["definition"]))
                     .order_by(Run.id.desc()).limit(self.cap))
            for run in self.capped(self.session.scalars(self.owned(query, Run.owner))):
                if self.add_run(run):
                    self.link(("definition", run.definition_id), ("run", run.id), "made")
                    reached["run"].add(run.id)
            query = (select(JobDefinition)
                     .where(JobDefinition.after_definition_id.in_(frontier["definition"]))
                     .order_by(JobDefinition.id).limit(self.cap))
            for follower in self.capped(self.session.scalars(
                    self.owned(query, JobDefinition.owner))):
                if self.add(("definition", follower.id), self.definition_node(follower)):
                    self.link(("definition", follower.after_definition_id),
                              ("definition", follower.id), "after")
                    reached["definition"].add(follower.id)
        return reached
