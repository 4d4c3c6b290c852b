"""A person starts a notebook in a real browser: log in, choose image and profile, start,
JupyterLab loads, a cell using the data client's settings runs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.browser.conftest import CHROMIUM_ARGS
from tests.notebooks.conftest import TEST_IMAGE, NotebookHub
from tests.support.requirements import require_chromium

pytestmark = [pytest.mark.browser, pytest.mark.docker, pytest.mark.hub]

CELL = "import dockyard_data, os; print(os.environ['DOCKYARD_URL'])"


@pytest.fixture
def page() -> Iterator[Any]:
    executable = require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        context = browser.new_context()
        yield context.new_page()
        context.close()
        browser.close()


def test_start_a_notebook_and_run_a_cell(notebook_hub: NotebookHub, page: Any) -> None:
    notebook_hub.user("olga")
    hub_url = notebook_hub.hub.url
    page.set_default_timeout(60_000)
    page.goto(hub_url + "/hub/login?next=%2Fhub%2Fhome")  # the form, not a one-click start
    page.fill("#username_input", "olga")
    page.fill("#password_input", "user-pass-2024!")
    page.click("#login_submit")
    page.wait_for_url("**/hub/home")
    assert page.locator("#dockyard-dev-mode").count() == 0  # containers: no dev banner

    page.goto(hub_url + "/hub/spawn")
    assert page.locator("#dockyard-spawn-heading").is_visible()
    image = page.locator(f'input[name="image"][value="{TEST_IMAGE}"]')
    assert image.is_checked()  # the default is preselected
    large = page.locator('#dockyard-profiles input[value="large"]')
    assert "Large: 1 GB, 1 CPU" in page.locator("#dockyard-profiles").inner_text()
    large.check()
    page.get_by_role("button", name="Start").click()

    page.wait_for_url("**/user/olga/lab**", timeout=180_000)
    page.locator('.jp-LauncherCard[data-category="Notebook"]').first.click()
    editor = page.locator(".jp-NotebookPanel .jp-Cell .cm-content").first
    editor.wait_for()
    page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=120_000)
    editor.click()
    page.keyboard.type(CELL)
    output = page.locator(".jp-NotebookPanel .jp-OutputArea-output").first
    for attempt in range(2):
        # On a busy machine JupyterLab may send the first request before its kernel
        # connection settles and lose it (the cell stays "[ ]"); run it once more then.
        editor.click()
        page.keyboard.press("Shift+Enter")
        try:
            output.wait_for(timeout=60_000)
            break
        except PlaywrightTimeout:
            if attempt:
                raise

    container = notebook_hub.container("olga")
    env = dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])
    assert output.inner_text().strip() == env["DOCKYARD_URL"]
    assert container.attrs["HostConfig"]["Memory"] == 1024**3  # the profile chosen
    notebook_hub.stop("olga")


def sign_in(page: Any, hub_url: str, name: str) -> None:
    """What a person does: open the site, type, click Sign in (the one click)."""
    page.goto(hub_url + "/")
    page.wait_for_url("**/hub/login**")
    page.fill("#username_input", name)
    page.fill("#password_input", "user-pass-2024!")
    page.click("#login_submit")


def test_one_click_from_sign_in_to_jupyterlab(notebook_hub: NotebookHub, page: Any) -> None:
    notebook_hub.user("quinn")
    hub_url = notebook_hub.hub.url
    page.set_default_timeout(60_000)
    visited: list[str] = []
    page.on("framenavigated",
            lambda frame: visited.append(frame.url) if frame == page.main_frame else None)

    sign_in(page, hub_url, "quinn")
    page.wait_for_url("**/user/quinn/lab**", timeout=180_000)
    assert any("/hub/spawn-pending/quinn" in url for url in visited), visited  # progress shown
    container = notebook_hub.container("quinn")
    assert container.attrs["Config"]["Image"] == TEST_IMAGE  # the catalog's default
    assert container.attrs["HostConfig"]["Memory"] == 512 * 1024**2  # the first profile

    # Signed in again while it runs: straight to it, nothing else started.
    page.context.clear_cookies()
    sign_in(page, hub_url, "quinn")
    page.wait_for_url("**/user/quinn/lab**", timeout=60_000)
    assert notebook_hub.container("quinn").id == container.id
    notebook_hub.stop("quinn")


def test_another_choice_is_one_click_away_and_remembered(
    notebook_hub: NotebookHub, page: Any
) -> None:
    notebook_hub.user("rhea")
    hub_url = notebook_hub.hub.url
    page.set_default_timeout(60_000)
    gates = notebook_hub.hub.home / "spawn-gates"
    gates.mkdir(exist_ok=True)
    gate = gates / "rhea"
    gate.touch()  # the start waits on the progress page until the gate goes
    try:
        sign_in(page, hub_url, "rhea")
        page.wait_for_url("**/hub/spawn-pending/rhea**")
        choice = page.locator("#dockyard-starting-choice").inner_text()
        assert TEST_IMAGE in choice and "small" in choice
        page.click("#dockyard-choose-other")
        page.wait_for_url("**/hub/spawn/rhea")
    finally:
        gate.unlink(missing_ok=True)
    assert notebook_hub.server_model("rhea") is None  # the held start was stopped
    assert page.locator("#dockyard-spawn-heading").is_visible()
    page.locator('#dockyard-profiles input[value="large"]').check()
    page.get_by_role("button", name="Start").click()
    page.wait_for_url("**/user/rhea/lab**", timeout=180_000)
    assert notebook_hub.container("rhea").attrs["HostConfig"]["Memory"] == 1024**3
    notebook_hub.stop("rhea")

    # The home page's start and the next sign-in both start the last choice at once; the
    # form is the link under the start button.
    page.goto(hub_url + "/hub/home")
    assert page.locator("#dockyard-choose").get_attribute("href") == "/hub/spawn/rhea"
    page.click("#start")
    page.wait_for_url("**/user/rhea/lab**", timeout=180_000)
    assert notebook_hub.container("rhea").attrs["HostConfig"]["Memory"] == 1024**3
    notebook_hub.stop("rhea")
    page.context.clear_cookies()
    sign_in(page, hub_url, "rhea")
    page.wait_for_url("**/user/rhea/lab**", timeout=180_000)
    assert notebook_hub.container("rhea").attrs["HostConfig"]["Memory"] == 1024**3
    notebook_hub.stop("rhea")
