"""Playwright driving Debian's Chromium (never a downloaded browser)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.requirements import require_chromium

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


# Module scope, not session: while Playwright's sync API is open it keeps an event loop
# running in the main thread, which breaks asyncio.run() and other Playwright sessions
# in later test modules.
@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    executable = require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    context = browser.new_context()  # type: ignore[attr-defined]
    page = context.new_page()
    yield page
    context.close()
