"""The lineage graph through GET /api/v1/lineage and the /lineage page: edges from real
reads and writes of the catalog, depth, who sees whose runs, bad input, truncation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import event

from dockyard.data import Actor, Catalog
from dockyard.db import make_engine, make_session_factory, transaction
from dockyard.jobs.lineage import lineage
from dockyard.models import DataTable, JobDefinition, Run
from dockyard.settings import Settings
from dockyard.web.auth import User
from tests.conftest import auth
from tests.data.conftest import add_run
from tests.data.helpers import store
from tests.data.test_pages import login, no_inline_code

ROWS = {"x": [1, 2]}


def add_definition(settings: Settings, owner: str, name: str, **triggers: Any) -> int:
    engine = make_engine(settings.db_url)
    try:
        with transaction(make_session_factory(engine)) as session:
            definition = JobDefinition(owner=owner, name=name, image="dockyard/test:latest",
                                       command=["true"], **triggers)
            session.add(definition)
            session.flush()
            return definition.id
    finally:
        engine.dispose()


def run_of(settings: Settings, definition_id: int, owner: str) -> int:
    engine = make_engine(settings.db_url)
    try:
        with transaction(make_session_factory(engine)) as session:
            run = Run(owner=owner, definition_id=definition_id, image="dockyard/test:latest",
                      command=["true"], cpu=1.0, memory_mb=256)
            session.add(run)
            session.flush()
            return run.id
    finally:
        engine.dispose()


def table_id(settings: Settings, namespace: str, name: str) -> int:
    engine = make_engine(settings.db_url)
    try:
        with transaction(make_session_factory(engine)) as session:
            return session.query(DataTable.id).filter_by(namespace=namespace, name=name).scalar()
    finally:
        engine.dispose()


@pytest.fixture
def world(migrated: Settings) -> dict[str, Any]:
    """alice's run reads raw.events (batch A) and writes derived.events (batch B); bob's
    run reads B and writes bobs.summary (batch C)."""
    catalog = Catalog.from_settings(migrated)
    a = store(catalog, Actor("alice"), "raw", "events", {}, ROWS).batch.batch_id
    mine = add_run(migrated, "alice")
    catalog.resolve_reads(Actor("alice", run_id=mine), "raw", "events")
    b = store(catalog, Actor("alice", run_id=mine), "derived", "events", {}, ROWS).batch.batch_id
    theirs = add_run(migrated, "bob")
    catalog.resolve_reads(Actor("bob", run_id=theirs), "derived", "events")
    c = store(catalog, Actor("bob", run_id=theirs), "bobs", "summary", {}, ROWS).batch.batch_id
    catalog.engine.dispose()
    return {"A": a, "B": b, "C": c, "mine": mine, "theirs": theirs}


def graph(api: FlaskClient, token: str, **query: Any) -> dict[str, Any]:
    response = api.get("/api/v1/lineage", query_string=query, headers=auth(token))
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def nodes(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {node["id"]: node for node in body["nodes"]}


def edges(body: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(e["source"], e["target"], e["kind"]) for e in body["edges"]}


def test_a_run_with_what_it_read_and_wrote(api: FlaskClient, world: dict[str, Any]) -> None:
    run = f"run:{world['mine']}"
    body = graph(api, "tok-alice", run_id=world["mine"], depth=1)
    assert body["anchor"] == run and body["truncated"] is False
    assert edges(body) == {
        (f"batch:{world['A']}", run, "read"),
        (run, f"batch:{world['B']}", "wrote"),
        (f"batch:{world['A']}", "table:raw/events", "in"),
        (f"batch:{world['B']}", "table:derived/events", "in"),
    }
    found = nodes(body)
    assert found[run] == {"id": run, "kind": "run", "label": f"run {world['mine']}",
                          "url": f"/jobs/runs/{world['mine']}", "status": "QUEUED"}
    assert found["table:raw/events"]["url"] == "/data/raw/events"
    assert found[f"batch:{world['B']}"]["url"] == (
        f"/data/derived/events/partition?p=&batch={world['B']}")
    assert found["table:derived/events"]["label"] == "derived.events"


def test_depth_decides_how_far(api: FlaskClient, world: dict[str, Any]) -> None:
    table = {"namespace": "derived", "table": "events"}
    near = nodes(graph(api, "tok-alice", depth=1, **table))
    # The table with its batch, and the run that wrote it; what that run read is farther.
    assert set(near) == {"table:derived/events", f"batch:{world['B']}", f"run:{world['mine']}"}
    far = nodes(graph(api, "tok-alice", depth=2, **table))
    assert {f"batch:{world['A']}", "table:raw/events"} <= set(far)
    # Downstream, bob's run that read B is his own: alice never sees it, however deep.
    assert f"run:{world['theirs']}" not in nodes(graph(api, "tok-alice", depth=5, **table))


def test_another_users_run_is_hidden_but_to_admins(api: FlaskClient,
                                                   world: dict[str, Any]) -> None:
    theirs = f"run:{world['theirs']}"
    query = {"namespace": "bobs", "table": "summary", "depth": 3}
    seen_by_alice = graph(api, "tok-alice", **query)
    hidden = nodes(seen_by_alice)[theirs]
    assert hidden == {"id": theirs, "kind": "run", "label": "another user's run", "url": None,
                      "status": None}
    assert (theirs, f"batch:{world['C']}", "wrote") in edges(seen_by_alice)
    # Nothing past it: what bob's run read stays his.
    assert f"batch:{world['B']}" not in nodes(seen_by_alice)

    seen_by_admin = graph(api, "tok-admin", **query)
    shown = nodes(seen_by_admin)[theirs]
    assert shown["label"] == f"run {world['theirs']}"
    assert shown["url"] == f"/jobs/runs/{world['theirs']}"
    assert (f"batch:{world['B']}", theirs, "read") in edges(seen_by_admin)
    assert f"run:{world['mine']}" in nodes(seen_by_admin)
    # Downstream of alice's run, the admin sees bob's reader too.
    assert (f"batch:{world['B']}", theirs, "read") in edges(
        graph(api, "tok-admin", run_id=world["mine"], depth=2))


def test_definitions_made_runs_after_and_fires_on(api: FlaskClient, migrated: Settings,
                                                  world: dict[str, Any]) -> None:
    first = add_definition(migrated, "alice", "extract")
    derived = table_id(migrated, "derived", "events")
    follower = add_definition(migrated, "alice", "report", after_definition_id=first,
                              after={"definition_id": first, "on": "succeeded"})
    on_data = add_definition(migrated, "alice", "refresh", on_batch_table_id=derived,
                             on_batch={"namespace": "derived", "table": "events",
                                       "partition": {}})
    bobs = add_definition(migrated, "bob", "bob-refresh", on_batch_table_id=derived,
                          on_batch={"namespace": "derived", "table": "events", "partition": {}})
    made = run_of(migrated, first, "alice")

    body = graph(api, "tok-alice", definition_id=first, depth=1)
    assert body["anchor"] == f"definition:{first}"
    assert {(f"definition:{first}", f"run:{made}", "made"),
            (f"definition:{first}", f"definition:{follower}", "after")} <= edges(body)
    assert nodes(body)[f"definition:{follower}"]["url"] == f"/jobs/definitions/{follower}"
    upstream = graph(api, "tok-alice", definition_id=follower, depth=1)
    assert (f"definition:{first}", f"definition:{follower}", "after") in edges(upstream)

    fired = graph(api, "tok-alice", namespace="derived", table="events", depth=1)
    assert ("table:derived/events", f"definition:{on_data}", "fires_on") in edges(fired)
    assert f"definition:{bobs}" not in nodes(fired)
    assert f"definition:{bobs}" in nodes(graph(api, "tok-admin", namespace="derived",
                                               table="events", depth=1))
    # alice's run writes B into derived.events, which fires "refresh": two levels on.
    chain = graph(api, "tok-alice", run_id=world["mine"], depth=2)
    assert ("table:derived/events", f"definition:{on_data}", "fires_on") in edges(chain)


def test_what_is_not_found_or_not_yours(api: FlaskClient, world: dict[str, Any]) -> None:
    def status(token: str, **query: Any) -> int:
        return api.get("/api/v1/lineage", query_string=query, headers=auth(token)).status_code

    assert status("tok-alice", namespace="raw", table="nope") == 404
    assert status("tok-alice", run_id=world["theirs"]) == 404
    assert status("tok-alice", run_id=987654) == 404
    assert status("tok-alice", definition_id=987654) == 404
    assert status("tok-admin", run_id=world["theirs"]) == 200
    assert api.get("/api/v1/lineage", query_string={"run_id": world["mine"]}).status_code == 401


@pytest.mark.parametrize("query, field", [
    ({}, "anchor"),
    ({"namespace": "raw", "table": "events", "run_id": 1}, "anchor"),
    ({"run_id": 1, "definition_id": 1}, "anchor"),
    ({"namespace": "raw"}, "table"),
    ({"table": "events"}, "namespace"),
    ({"run_id": 1, "depth": 0}, "depth"),
    ({"run_id": 1, "depth": 6}, "depth"),
    ({"run_id": 1, "limit": 0}, "limit"),
    ({"run_id": "one"}, "run_id"),
    ({"run_id": 1, "colour": "red"}, "colour"),
])
def test_bad_queries_name_the_field(api: FlaskClient, world: dict[str, Any],
                                    query: dict[str, Any], field: str) -> None:
    response = api.get("/api/v1/lineage", query_string=query, headers=auth("tok-alice"))
    assert response.status_code == 422
    assert field in {problem["field"] for problem in response.get_json()["detail"]}


def test_two_hundred_nodes_and_the_truncation_flag(api: FlaskClient,
                                                   migrated: Settings) -> None:
    """One run wrote 198 partitions of a table: with the table and the run, 200 nodes."""
    catalog = Catalog.from_settings(migrated)
    writer = add_run(migrated, "alice")
    catalog.put_table(Actor("alice"), "big", "daily", partition_keys=["day"])
    for day in range(198):
        store(catalog, Actor("alice", run_id=writer), "big", "daily", {"day": f"{day:03d}"},
              ROWS)
    catalog.engine.dispose()
    query = {"namespace": "big", "table": "daily", "depth": 1}

    whole = graph(api, "tok-alice", **query)
    assert len(whole["nodes"]) == 200 and whole["truncated"] is False
    assert len(whole["edges"]) == 2 * 198  # each batch: in its table, written by the run
    exactly = graph(api, "tok-alice", limit=200, **query)
    assert len(exactly["nodes"]) == 200 and exactly["truncated"] is False
    cut = graph(api, "tok-alice", limit=199, **query)
    assert len(cut["nodes"]) == 199 and cut["truncated"] is True
    small = graph(api, "tok-alice", limit=20, **query)
    assert len(small["nodes"]) == 20 and small["truncated"] is True
    # Every edge joins two nodes of the answer.
    ids = {node["id"] for node in small["nodes"]}
    assert all(e["source"] in ids and e["target"] in ids for e in small["edges"])
    # From the run, all 198 batches are one level downstream, with their one table.
    from_run = graph(api, "tok-alice", run_id=writer, depth=1)
    assert len(from_run["nodes"]) == 200 and from_run["truncated"] is False


def test_the_page(api: FlaskClient, world: dict[str, Any]) -> None:
    login(api, "tok-alice")
    page = api.get(f"/lineage?run_id={world['mine']}&depth=2")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    no_inline_code(html)
    assert "data-graph=" in html and f"batch:{world['B']}" in html
    assert 'src="/static/vendor/cytoscape.min.js"' in html
    assert api.get(f"/lineage?run_id={world['theirs']}").status_code == 404
    assert api.get("/lineage?namespace=raw&table=events&depth=9").status_code == 422
    assert api.get("/lineage").status_code == 422
    # The table page and the run page link to their lineage.
    table = api.get("/data/derived/events").get_data(as_text=True)
    assert 'href="/lineage?namespace=derived&amp;table=events"' in table
    run_page = api.get(f"/jobs/runs/{world['mine']}").get_data(as_text=True)
    assert f'href="/lineage?run_id={world["mine"]}"' in run_page
    login(api, "tok-admin")
    assert api.get(f"/lineage?run_id={world['theirs']}").status_code == 200


@pytest.mark.postgres
def test_on_postgres_a_few_queries_per_level(postgres_url: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """However many nodes a level holds, it costs the same handful of queries."""
    for var in [v for v in os.environ if v.startswith("DOCKYARD_")]:
        monkeypatch.delenv(var)
    home = tmp_path / "home"
    home.mkdir()
    settings = Settings(home=home, database_url=postgres_url)
    catalog = Catalog.from_settings(settings)
    store(catalog, Actor("alice"), "raw", "events", {}, ROWS)
    writer = add_run(settings, "alice")
    catalog.resolve_reads(Actor("alice", run_id=writer), "raw", "events")
    catalog.put_table(Actor("alice"), "wide", "daily", partition_keys=["day"])
    for day in range(60):
        store(catalog, Actor("alice", run_id=writer), "wide", "daily", {"day": str(day)}, ROWS)
    readers = [add_run(settings, owner) for owner in ("alice", "bob", "alice")]
    for reader in readers:
        catalog.resolve_reads(Actor("alice", run_id=reader), "wide", "daily")
    catalog.engine.dispose()
    first = add_definition(settings, "alice", "extract")
    add_definition(settings, "alice", "report", after_definition_id=first,
                   after={"definition_id": first, "on": "finished"},
                   on_batch_table_id=table_id(settings, "wide", "daily"),
                   on_batch={"namespace": "wide", "table": "daily", "partition": {}})

    engine = make_engine(settings.db_url)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute",
                 lambda conn, cursor, sql, *rest: statements.append(sql))
    try:
        with make_session_factory(engine)() as session:
            graph = lineage(session, User("alice"), run_id=writer, depth=3)
    finally:
        engine.dispose()
    found = {node.id: node for node in graph.nodes}
    # 60 batches and their table, the run, what it read, alice's two readers (bob's hidden),
    # the definition firing on the table.
    assert sum(node.kind == "batch" for node in graph.nodes) == 61
    assert {f"run:{readers[0]}", f"run:{readers[2]}"} <= set(found)
    assert f"run:{readers[1]}" not in found
    assert "report" in {node.label for node in graph.nodes}
    # At most 8 queries per level and direction, plus finding the run.
    assert len(statements) <= 3 * 2 * 8 + 2, statements
