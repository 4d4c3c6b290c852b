"""The lineage page in Chromium: cytoscape draws every node of the answer within the
Content-Security-Policy, and a click on a run opens the run's page."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from dockyard.data import Actor, Catalog
from dockyard.settings import Settings
from tests.browser.conftest import browser  # noqa: F401  (Playwright's Chromium)
from tests.conftest import auth
from tests.data.conftest import add_run, served
from tests.data.helpers import store
from tests.data.test_lineage import add_definition, run_of

pytestmark = pytest.mark.browser

#: Records what the Content-Security-Policy refused, for the test to read.
CSP_WATCH = ("document.addEventListener('securitypolicyviolation', e => "
             "(window.__csp = window.__csp || []).push(e.violatedDirective + ' ' + e.blockedURI));")
DRAWN = ("() => window.dockyardLineage !== undefined && "
         "window.dockyardLineage.nodes().length > 0")


@pytest.fixture
def lineage_world(migrated: Settings) -> dict[str, Any]:
    """alice's run read raw.events and wrote 198 partitions of derived.daily."""
    catalog = Catalog.from_settings(migrated)
    store(catalog, Actor("alice"), "raw", "events", {}, {"x": [1]})
    run_id = add_run(migrated, "alice")
    catalog.resolve_reads(Actor("alice", run_id=run_id), "raw", "events")
    catalog.put_table(Actor("alice"), "derived", "daily", partition_keys=["day"])
    for day in range(198):
        store(catalog, Actor("alice", run_id=run_id), "derived", "daily",
              {"day": f"{day:03d}"}, {"x": [day]})
    catalog.engine.dispose()
    return {"run_id": run_id}


def test_the_graph_is_drawn_and_a_run_opens_its_page(
        browser: Any, data_app: Flask, lineage_world: dict[str, Any]) -> None:  # noqa: F811
    run_id = lineage_world["run_id"]
    answer = data_app.test_client().get(
        "/api/v1/lineage", query_string={"run_id": run_id, "depth": 2},
        headers=auth("tok-alice")).get_json()
    # The run, what it read (with its table), the 198 batches it wrote and their table.
    assert len(answer["nodes"]) == 202 and answer["truncated"] is False

    with served(data_app) as base:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        try:
            context.add_init_script(CSP_WATCH)
            page = context.new_page()
            page.goto(f"{base}/oauth_callback?code=tok-alice&state=/data/")
            assert "/hub/login" not in page.url

            page.goto(f"{base}/data/derived/daily")
            page.click("#table-lineage")
            page.wait_for_function(DRAWN, timeout=30000)
            drawn = page.evaluate("window.dockyardLineage.nodes().length")
            table_graph = data_app.test_client().get(
                "/api/v1/lineage", query_string={"namespace": "derived", "table": "daily"},
                headers=auth("tok-alice")).get_json()
            assert drawn == len(table_graph["nodes"])

            page.goto(f"{base}/lineage?run_id={run_id}&depth=2")
            page.wait_for_function(DRAWN, timeout=30000)
            assert page.evaluate("window.dockyardLineage.nodes().length") == 202
            assert page.evaluate("window.dockyardLineage.edges().length") == len(answer["edges"])
            # Laid out left to right: what the run read lies left of it, what it wrote right.
            read = next(e["source"] for e in answer["edges"] if e["kind"] == "read")
            wrote = next(e["target"] for e in answer["edges"] if e["kind"] == "wrote")
            x = page.evaluate(
                "ids => ids.map(id => window.dockyardLineage.getElementById(id).position('x'))",
                [read, f"run:{run_id}", wrote])
            assert x[0] < x[1] < x[2]
            assert page.evaluate("window.__csp || []") == []

            # Click where the run is drawn: its page opens.
            box = page.locator("#lineage-graph").bounding_box()
            assert box is not None
            spot = page.evaluate(
                "id => window.dockyardLineage.getElementById(id).renderedPosition()",
                f"run:{run_id}")
            page.mouse.click(box["x"] + spot["x"], box["y"] + spot["y"])
            page.wait_for_url(f"**/jobs/runs/{run_id}", timeout=15000)
            assert page.locator("#run-panel").is_visible()
        finally:
            context.close()
    data_app.extensions["dockyard.engine"].dispose()


def test_a_hostile_definition_name_is_only_text(browser: Any, data_app: Flask,  # noqa: F811
                                                migrated: Settings) -> None:
    """A definition's name is the user's text: drawn as a label, listed escaped, never run."""
    hostile = "<img src=x onerror=xss(1)>'\""
    definition = add_definition(migrated, "alice", hostile)
    run_of(migrated, definition, "alice")
    with served(data_app) as base:
        context = browser.new_context()
        try:
            context.add_init_script(CSP_WATCH + "window.__xss = []; window.xss = "
                                    "function (what) { window.__xss.push(what); };")
            page = context.new_page()
            page.goto(f"{base}/oauth_callback?code=tok-alice&state=/jobs/")
            page.goto(f"{base}/lineage?definition_id={definition}")
            page.wait_for_function(DRAWN, timeout=30000)
            label = page.evaluate("id => window.dockyardLineage.getElementById(id).data('label')",
                                  f"definition:{definition}")
            assert label == hostile
            assert page.locator("#lineage-list li", has_text=hostile).count() == 1
            assert page.locator("#lineage-anchor").inner_text() == hostile
            assert page.evaluate("window.__xss") == []
            assert page.evaluate("document.querySelectorAll('img[src=x]').length") == 0
            assert page.evaluate("window.__csp || []") == []
        finally:
            context.close()
    data_app.extensions["dockyard.engine"].dispose()
