"""In a real browser against a real Dockyard: launch a notebook run from the Jobs page's
Notebook form, then open its page with an executed notebook whose output holds scripts
aimed at Dockyard's page. The notebook shows in its frame; none of the scripts runs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import nbformat
import pytest

from dockyard.jobs.artifacts import ArtifactStore
from dockyard.settings import Settings
from tests.jobs.conftest import FINAL, RunsDb
from tests.support.hubproc import RunningHub

pytestmark = [pytest.mark.browser, pytest.mark.hub]

#: What a hostile (or careless) notebook output might try on the page that shows it.
ATTACK = """<p id="attack">attack output</p>
<script>
  window.parent.document.title = "taken by the notebook";
  window.parent.document.body.insertAdjacentHTML("beforeend", "<p id='planted'>planted</p>");
  document.body.insertAdjacentHTML("beforeend", "<p id='script-ran'>ran</p>");
  alert("from the notebook");
</script>
<img src="data:," onerror="window.parent.document.title = 'taken by onerror'; alert(2)">
"""
MARKER = "Notebook marker: the frame shows the executed notebook"


def executed_notebook() -> bytes:
    """The notebook as papermill would leave it: its last cell displayed ATTACK."""
    node = nbformat.v4.new_notebook()
    node.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                   "language": "python"}
    parameters = nbformat.v4.new_code_cell("alpha = 1")
    parameters.metadata["tags"] = ["parameters"]
    show = nbformat.v4.new_code_cell(
        f"from IPython.display import HTML, display\ndisplay(HTML({ATTACK!r}))",
        execution_count=2, outputs=[nbformat.v4.new_output(
            "display_data", data={"text/html": ATTACK, "text/plain": "<HTML>"})])
    node.cells = [parameters, nbformat.v4.new_markdown_cell(MARKER), show]
    return nbformat.writes(node).encode()


@pytest.fixture
def hub_settings(running_hub: RunningHub, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The running Dockyard's own settings (its database, its artifact store)."""
    for name in [name for name in os.environ if name.startswith("DOCKYARD_")]:
        monkeypatch.delenv(name)
    for name, value in running_hub.env.items():
        if name.startswith("DOCKYARD_"):
            monkeypatch.setenv(name, value)
    return Settings()


@pytest.fixture
def hub_runs(hub_settings: Settings) -> Iterator[RunsDb]:
    runs = RunsDb(hub_settings.db_url)
    yield runs
    runs.close()


def test_a_notebooks_scripts_never_run_on_dockyards_page(
        running_hub: RunningHub, page: Any, hub_settings: Settings, hub_runs: RunsDb,
        tmp_path: Any) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

    page.goto(running_hub.url + "/hub/login?next=%2Fhub%2Fhome")  # no notebook server
    page.fill("#username_input", running_hub.admin)
    page.fill("#password_input", running_hub.admin_password)
    page.click("#login_submit")
    page.wait_for_url("**/hub/home")
    page.goto(running_hub.service("jobs/new"))
    page.click("#kind-notebook")
    page.wait_for_url("**/jobs/new?kind=notebook")

    source = tmp_path / "attack.ipynb"
    source.write_bytes(executed_notebook())
    page.set_input_files("#notebook", str(source))
    page.fill("#parameters", "alpha=7")
    page.click("#launch-submit")
    page.wait_for_url("**/jobs/runs/*")
    run_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
    run = hub_runs.run(run_id)
    assert run.kind == "notebook" and run.notebook is not None
    assert run.notebook["parameters"] == {"alpha": 7}
    assert page.locator("#notebook-parameters").inner_text().split() == ["alpha", "7"]

    # Whatever the run's own job made of it, the executed notebook is then this one.
    hub_runs.wait_for(run_id, *FINAL, timeout=120)
    ArtifactStore.from_settings(hub_settings).save_output(hub_runs.run(run_id),
                                                          executed_notebook())
    page.reload()
    title = page.title()
    assert title == f"Run #{run_id} · Dockyard"
    frame_element = page.locator("#notebook-frame")
    assert frame_element.get_attribute("sandbox") == ""
    frame = page.frame_locator("#notebook-frame")
    frame.locator("text=" + MARKER).wait_for(timeout=30000)
    frame.locator("#attack").wait_for()  # the output itself is there …
    assert frame.locator("#script-ran").count() == 0  # … its script never ran

    # The frame is another origin to the page: no way in from either side.
    reach = page.evaluate("""() => {
        const frame = document.getElementById("notebook-frame");
        let document_of_frame = "unreadable";
        try { document_of_frame = frame.contentWindow.document ? "readable" : "none"; }
        catch (error) { document_of_frame = error.name; }
        return {contentDocument: frame.contentDocument === null ? null : "readable",
                document: document_of_frame};
    }""")
    assert reach == {"contentDocument": None, "document": "SecurityError"}
    page.locator('#run-artifacts [data-artifact="output.html"]').wait_for()
    assert page.title() == title
    assert page.locator("#planted").count() == 0
    assert dialogs == []

    # The same output in a frame without the sandbox does all of the above: the test's
    # attack is a real one.
    control = page.context.new_page()
    control.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    control.set_content("<title>control</title><iframe id='plain'></iframe>")
    control.evaluate("html => { document.getElementById('plain').srcdoc = html; }", ATTACK)
    control.frame_locator("#plain").locator("#script-ran").wait_for(timeout=10000)
    assert control.title().startswith("taken by") and "from the notebook" in dialogs
    control.close()

    served = page.request.get(running_hub.service(f"jobs/runs/{run_id}/notebook.html"))
    assert served.status == 200
    policy = served.headers["content-security-policy"]
    assert policy.startswith("sandbox;") and "script-src" not in policy
    assert served.headers["x-content-type-options"] == "nosniff"
