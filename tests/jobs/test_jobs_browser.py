"""In a real browser: log in at the hub, open Jobs, launch from the form (a field error
first), and watch the live log and status reach SUCCEEDED without reloading."""

from __future__ import annotations

from typing import Any

import pytest

from dockyard.models import ImageStatus
from tests.jobs.conftest import SHELL_IMAGE, add_images
from tests.support.hubproc import RunningHub

pytestmark = [pytest.mark.browser, pytest.mark.hub]


def test_launch_from_the_form_and_watch_the_live_log(running_hub: RunningHub, page: Any) -> None:
    add_images(f"sqlite:///{running_hub.home}/dockyard.sqlite",
               (SHELL_IMAGE, True, ImageStatus.READY))
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text)
            if message.type == "error" else None)

    page.goto(running_hub.url + "/hub/login?next=%2Fhub%2Fhome")  # no notebook server
    page.fill("#username_input", running_hub.admin)
    page.fill("#password_input", running_hub.admin_password)
    page.click("#login_submit")
    page.wait_for_url("**/hub/home")
    page.click("#dockyard-jobs")
    page.wait_for_url("**/services/dockyard/jobs/")
    page.click("#nav-launch")
    page.wait_for_url("**/jobs/new")

    page.select_option("#image", SHELL_IMAGE)
    page.fill("#command", 'for i in 1 2 3; do echo "line $i of run $DOCKYARD_RUN_ID"; '
                          'sleep 0.7; done; echo all-done')
    page.fill("#cpu", "-1")
    page.click("#launch-submit")
    page.locator("#error-cpu").wait_for(timeout=15000)
    assert "greater than 0" in page.locator("#error-cpu").inner_text()
    assert page.input_value("#command").startswith("for i in 1 2 3")  # nothing typed is lost

    page.fill("#cpu", "0.5")
    page.click("#launch-submit")
    page.wait_for_url("**/jobs/runs/*")
    run_id = page.url.rstrip("/").rsplit("/", 1)[1]
    # The log tail appears while the run is still going …
    page.locator("#run-log", has_text="line 1 of run").wait_for(timeout=60000)
    # … and the status badge and log reach the end without a reload.
    page.locator('#run-status [data-status="SUCCEEDED"]').wait_for(timeout=60000)
    page.locator("#run-log", has_text="all-done").wait_for(timeout=30000)
    log_text = page.locator("#run-log").inner_text()
    assert log_text.splitlines() == [f"line {i} of run {run_id}" for i in (1, 2, 3)] + ["all-done"]
    assert page.locator("#run-exit-code").inner_text() == "0"
    assert page.locator("#log-poller[data-complete]").count() == 1
    assert page.locator("#retry-run").is_visible()
    assert not [p for p in problems if "Content Security Policy" in p], problems
