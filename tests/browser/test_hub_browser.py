"""A person's first visit, in a real browser: log in, find Dockyard on the hub's home
page, click through to Jobs."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.hubproc import RunningHub

pytestmark = pytest.mark.browser


def test_login_then_click_through_to_jobs(running_hub: RunningHub, page: Any) -> None:
    page.goto(running_hub.url + "/hub/login?next=%2Fhub%2Fhome")  # no notebook server
    page.fill("#username_input", running_hub.admin)
    page.fill("#password_input", running_hub.admin_password)
    page.click("#login_submit")
    page.wait_for_url("**/hub/home")
    assert page.locator("#dockyard-links").is_visible()

    page.click("#dockyard-jobs")
    page.wait_for_url("**/services/dockyard/jobs/")
    assert page.locator("h1").inner_text() == "Jobs"
    assert page.locator("#dy-user").inner_text().startswith("admin")
    # Assets come from our own origin and load under the CSP (no CDN, no inline script).
    bootstrap_loaded = page.evaluate(
        "() => getComputedStyle(document.querySelector('.navbar')).display"
    )
    assert bootstrap_loaded == "flex"
    assert page.evaluate("() => typeof window.htmx") == "object"


def test_wrong_password_in_the_browser(running_hub: RunningHub, page: Any) -> None:
    page.goto(running_hub.url + "/hub/login")
    page.fill("#username_input", running_hub.admin)
    page.fill("#password_input", "wrong-password")
    page.click("#login_submit")
    page.get_by_text("Invalid username or password").wait_for(timeout=15000)
    assert page.locator("#login_submit").is_visible()
