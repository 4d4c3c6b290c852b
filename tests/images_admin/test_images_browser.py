"""In a real browser: an admin uploads a Dockerfile, watches the build log grow on the
image page (htmx, no reload), sees it ready and inspected; a user then finds the image
on the job launch form and in the read-only list of images."""

from __future__ import annotations

import io
import secrets
import tarfile
from collections.abc import Iterator
from typing import Any

import docker
import pytest
import requests

from tests.images_admin.conftest import OUR_REPOSITORY, SHELL_IMAGE, slow_dockerfile
from tests.support.hubproc import RunningHub
from tests.support.requirements import require_image

pytestmark = [pytest.mark.browser, pytest.mark.hub, pytest.mark.docker]


def _log_in(page: Any, hub: RunningHub, name: str, password: str) -> None:
    page.goto(hub.url + "/hub/login?next=%2Fhub%2Fhome")  # no notebook server
    page.fill("#username_input", name)
    page.fill("#password_input", password)
    page.click("#login_submit")
    page.wait_for_url("**/hub/home")


@pytest.fixture
def reference(running_hub: RunningHub) -> Iterator[str]:
    require_image(SHELL_IMAGE)
    made = f"{OUR_REPOSITORY}/browser:{secrets.token_hex(4)}"
    yield made
    # Leave the shared hub's catalog and the engine as they were.
    admin = running_hub.login()
    token = running_hub.hub_token(admin, running_hub.admin)
    headers = {"Authorization": f"token {token}"}
    for image in requests.get(running_hub.service("api/v1/images"), headers=headers,
                              timeout=30).json()["images"]:
        if image["reference"] == made:
            requests.delete(running_hub.service(f"api/v1/images/{image['id']}"),
                            headers=headers, timeout=30)
    engine = docker.from_env()
    try:
        engine.images.remove(made, force=True)
    except docker.errors.ImageNotFound:
        pass
    engine.close()


def test_admin_builds_and_enables_an_image_then_a_user_can_choose_it(
    running_hub: RunningHub, browser: Any, reference: str
) -> None:
    user_name = "imgview" + secrets.token_hex(2)
    user_password = "viewer-pass-2024!"
    running_hub.create_user(user_name, user_password)

    admin = browser.new_context()
    page = admin.new_page()
    _log_in(page, running_hub, running_hub.admin, running_hub.admin_password)
    page.goto(running_hub.service("images/"))
    page.click("#add-image")
    page.wait_for_url("**/images/new")
    page.set_input_files("#upload-dockerfile", files=[{
        "name": "Dockerfile", "mimeType": "text/plain", "buffer": slow_dockerfile("browser"),
    }])
    page.set_input_files("#upload-context", files=[{
        "name": "context.tar", "mimeType": "application/x-tar", "buffer": _notes_tar(),
    }])
    page.fill("#upload-reference", reference)
    page.fill("#upload-description", "Built in the browser test")
    page.check("#upload-for-jobs")
    page.click("#upload-submit")
    page.wait_for_url("**/images/*")
    image_url = page.url

    # The log fills in while the page stays put (a reload would drop the marker)...
    assert "browser-step-one-done" not in page.locator("#build-log").inner_text()
    page.evaluate("() => { window.dyStillHere = true; }")
    page.locator("#build-log").get_by_text("browser-step-one-done").wait_for(timeout=120_000)
    assert page.evaluate("() => window.dyStillHere === true")
    assert page.url == image_url
    # ...and when the build is over the page shows the outcome.
    page.locator('.dy-image-status[data-status="ready"]').wait_for(timeout=180_000)
    assert "Debian" in page.locator('[data-version="os"]').inner_text()
    assert "browser-step-two-done" in page.locator("#build-log").inner_text()

    page.check("#settings-for-notebooks")
    page.click("#settings-submit")
    page.wait_for_url(image_url)
    assert page.locator("#fact-notebooks").inner_text().startswith("enabled")
    history = page.locator("#image-events").inner_text()
    assert "enabled" in history and "built" in history and "admin" in history
    admin.close()

    user = browser.new_context()
    page = user.new_page()
    _log_in(page, running_hub, user_name, user_password)
    page.goto(running_hub.service("jobs/new"))
    options = page.locator("#image option").all_inner_texts()
    assert any(text.startswith(reference) for text in options), options
    page.goto(running_hub.service("images/"))
    assert reference in page.locator("#images").inner_text()
    assert page.locator("#add-image").count() == 0  # read-only for users
    user.close()


def _notes_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("notes.txt")
        info.size = 6
        tar.addfile(info, io.BytesIO(b"hello\n"))
    return buffer.getvalue()
