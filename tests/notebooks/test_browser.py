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
    page.goto(hub_url + "/hub/login")
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
