"""In Chromium: a cluster's page keeps to Dockyard's CSP and polls its status part; its
dashboard, proxied from a real HTTP server standing in for the head, works for its owner
as a single-page app does: its own relative scripts and stylesheets load, its inline
script runs, and its script's data requests come back through the proxy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from dockyard.settings import Settings
from tests.browser.conftest import browser  # noqa: F401  (Playwright fixture)
from tests.clusters.web_support import ENGINES_IMAGE, add_engine_images, dashboard_server, running
from tests.conftest import web_app
from tests.data.conftest import served

pytestmark = pytest.mark.browser

#: A dashboard as the Ray dashboard and the Spark UI are built: relative URLs (it does not
#: know the path Dockyard serves it under), a stylesheet, an inline script and a script
#: file that asks the head for JSON and draws it.
DASHBOARD = {
    "/": ("text/html; charset=utf-8", """<!doctype html><html><head><title>dashboard</title>
<link rel="stylesheet" href="static/app.css">
<script>window.inlineRan = true;</script>
<script src="static/app.js" defer></script></head>
<body><div id="out" style="font-weight: 700">waiting</div></body></html>"""),
    "/static/app.css": ("text/css", "#out { color: rgb(1, 2, 3); }"),
    "/static/app.js": ("text/javascript", """
fetch('api/nodes?view=summary').then(r => r.json()).then(data => {
  const out = document.getElementById('out');
  out.textContent = JSON.stringify({
    nodes: data.nodes, inline: window.inlineRan === true,
    color: getComputedStyle(out).color, weight: getComputedStyle(out).fontWeight});
}).catch(e => { document.getElementById('out').textContent = 'failed: ' + e; });
"""),
    "/api/nodes?view=summary": ("application/json", json.dumps({"nodes": ["head", "w-1"]})),
}

SETTLED = "() => document.getElementById('out').textContent !== 'waiting'"


@pytest.fixture
def dockyard(migrated: Settings) -> Iterator[str]:
    add_engine_images(migrated)
    with served(web_app(migrated)) as url:
        yield url


def make(base: str, **fields: str) -> int:
    made = requests.post(f"{base}/api/v1/clusters", headers={"Authorization": "token tok-alice"},
                         json={"workers": 1, "image": ENGINES_IMAGE, **fields}, timeout=30)
    assert made.status_code == 201, made.text
    return int(made.json()["id"])


def log_in(browser: Any, base: str) -> tuple[Any, Any]:  # noqa: F811
    context = browser.new_context()
    context.add_init_script(
        "document.addEventListener('securitypolicyviolation', e => "
        "(window.__csp = window.__csp || []).push(e.violatedDirective + ' ' + e.blockedURI));")
    page = context.new_page()
    page.goto(f"{base}/oauth_callback?code=tok-alice&state=/clusters/")
    assert "/hub/login" not in page.url
    return context, page


@pytest.mark.timeout(300)
def test_the_dashboard_works_for_its_owner(browser: Any, dockyard: str,  # noqa: F811
                                           migrated: Settings) -> None:
    cluster_id = make(dockyard, name="probe", kind="ray")
    with dashboard_server(DASHBOARD) as head:
        running(migrated, cluster_id, head.url)
        context, page = log_in(browser, dockyard)
        try:
            page.goto(f"{dockyard}/clusters/{cluster_id}")
            assert page.locator("#cluster-state").inner_text() == "running"
            assert "ray://head:10001" in page.locator("#cluster-address").inner_text()
            assert page.evaluate("window.__csp || []") == []
            page.goto(f"{dockyard}/clusters/{cluster_id}/dashboard/")
            page.wait_for_function(SETTLED, timeout=20000)
            shown = page.locator("#out").inner_text()
            violations = page.evaluate("window.__csp || []")
        finally:
            context.close()
    assert violations == []
    assert json.loads(shown) == {"nodes": ["head", "w-1"], "inline": True,
                                 "color": "rgb(1, 2, 3)", "weight": "700"}, shown
    asked = [request["path"] for request in head.requests]
    assert {"/", "/static/app.css", "/static/app.js", "/api/nodes?view=summary"} <= set(asked)
    # Dockyard's session cookie stays with Dockyard.
    assert all(request["cookie"] is None for request in head.requests)


def test_the_cluster_page_polls_until_the_cluster_runs(browser: Any, dockyard: str,  # noqa: F811
                                                       migrated: Settings) -> None:
    cluster_id = make(dockyard, name="slow", kind="spark")
    context, page = log_in(browser, dockyard)
    try:
        page.goto(f"{dockyard}/clusters/{cluster_id}")
        assert page.locator("#cluster-state").inner_text() == "queued"
        running(migrated, cluster_id, kind="spark")
        page.wait_for_function(
            "() => document.querySelector('#cluster-state').innerText.trim() === 'running'",
            timeout=30000)
        assert "spark://head:7077" in page.locator("#cluster-address").inner_text()
        assert page.locator("#connect-snippet").inner_text() == (
            'import dockyard_data\nspark = dockyard_data.cluster("slow").spark()')
        assert page.evaluate("window.__csp || []") == []
        page.goto(f"{dockyard}/clusters/")
        assert page.locator("#clusters").inner_text().count("slow") == 1
        assert page.evaluate("window.__csp || []") == []
    finally:
        context.close()

