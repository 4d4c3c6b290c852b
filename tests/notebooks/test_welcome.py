"""A newcomer's first server has Welcome.ipynb, and it runs: a real Dockyard with Docker
notebooks and jobs from dockyard/notebook executes it headless (nbclient) in the user's
own notebook container, with the environment and token the server has. The notebook
is copied on a home's first start only, never over the user's own file, and not again
after the user deleted it."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests
from sqlalchemy import select

from dockyard.db import make_engine, make_session_factory, transaction
from dockyard.models import Image, ImageStatus
from dockyard.settings import DEFAULT_NOTEBOOK_PROFILES
from tests.notebooks.conftest import NotebookHub, running_notebook_hub
from tests.support.requirements import require_image

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.image]

NOTEBOOK_IMAGE = "dockyard/notebook:latest"
HOME = "/home/jovyan"

# Runs in the notebook container: executes the welcome notebook as the user's kernel
# would, and prints each code cell's text output (the notebook file stays as it was).
EXECUTE = r"""
import json, nbformat
from nbclient import NotebookClient

nb = nbformat.read("Welcome.ipynb", as_version=4)
NotebookClient(nb, timeout=300, kernel_name="python3").execute()
texts = []
for cell in nb.cells:
    if cell.cell_type == "code":
        texts.append("".join(out.get("text", "") or out.get("data", {}).get("text/plain", "")
                             for out in cell.outputs))
print("CELL-OUTPUTS " + json.dumps(texts))
"""


@pytest.fixture(scope="module")
def welcome_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NotebookHub]:
    """Docker notebooks and jobs from dockyard/notebook, with Dockyard's default profiles
    (what a newcomer gets)."""
    require_image(NOTEBOOK_IMAGE)
    profiles = json.dumps([profile.model_dump() for profile in DEFAULT_NOTEBOOK_PROFILES])
    with running_notebook_hub(tmp_path_factory.mktemp("welcome"), "dywl" + secrets.token_hex(3),
                              DOCKYARD_JOB_BACKEND="docker",
                              DOCKYARD_NOTEBOOK_PROFILES=profiles) as notebooks:
        offer_notebook_image(notebooks.hub.home / "dockyard.sqlite")
        yield notebooks


def offer_notebook_image(database: Path) -> None:
    """dockyard/notebook ready and the default for notebooks and jobs, whether or not
    Dockyard registered it on its own at start."""
    db_engine = make_engine(f"sqlite:///{database}")
    try:
        with transaction(make_session_factory(db_engine)) as session:
            image = session.scalar(select(Image).where(Image.reference == NOTEBOOK_IMAGE))
            if image is None:
                image = Image(reference=NOTEBOOK_IMAGE, created_by="tests",
                              description="Dockyard's notebook image")
                session.add(image)
            image.status = ImageStatus.READY
            image.for_notebooks = image.for_jobs = True
            image.default_for_notebooks = image.default_for_jobs = True
    finally:
        db_engine.dispose()


def home_files(notebooks: NotebookHub, name: str) -> set[str]:
    code, listing = notebooks.run_in(notebooks.container(name), "ls", "-A", HOME)
    assert code == 0, listing
    return set(listing.split())


def runs_of(notebooks: NotebookHub, name: str) -> list[dict]:
    response = requests.get(notebooks.hub.service("api/v1/runs"), timeout=30,
                            headers={"Authorization": f"token {notebooks.user(name)}"})
    assert response.status_code == 200, response.text
    return response.json()["runs"]


def test_the_welcome_notebook_runs_in_a_newcomers_server(welcome_hub: NotebookHub) -> None:
    welcome_hub.start("wren")
    container = welcome_hub.container("wren")
    assert {"Welcome.ipynb", ".dockyard"} <= home_files(welcome_hub, "wren")

    # nbclient runs long and quietly: a client of its own, patient enough.
    engine = docker.from_env(timeout=900)
    try:
        exit_code, output = engine.containers.get(container.id).exec_run(
            ["python", "-c", EXECUTE], workdir=HOME, user="1000:100")
    finally:
        engine.close()
    text = output.decode(errors="replace")
    assert exit_code == 0 and "CELL-OUTPUTS " in text, text[-6000:]
    store, load, spark, ray, r_script, r_table, job = json.loads(
        text.split("CELL-OUTPUTS ", 1)[1].strip().splitlines()[0])

    assert "Stored 5 rows in wren/welcome_cities as batch" in store
    assert "1 commit(s)" in load and "Nairobi" in load and "South America" in load
    assert "|South America|        10.1|" in spark and "|       Europe|        0.94|" in spark
    assert "computed by Ray tasks: 285" in ray and "read by Ray Data: 5" in ray
    assert "South America" in r_script
    assert "R stored 4 rows in wren/welcome_by_continent" in r_script
    assert "batch_id" not in r_script  # dy_writer() returns invisibly: nothing printed
    assert "Asia" in r_table and "Europe" in r_table
    assert "A Dockyard job read 5 cities" in job and job.rstrip().endswith("SUCCEEDED"), job

    # The job is a real run of wren's, from the jobs default image.
    [run] = runs_of(welcome_hub, "wren")
    assert run["status"] == "SUCCEEDED" and run["image"] == NOTEBOOK_IMAGE
    assert run["tags"] == ["welcome"]
    welcome_hub.stop("wren")


def test_welcome_is_given_once_and_never_over_the_users_file(welcome_hub: NotebookHub) -> None:
    welcome_hub.start("yuki")
    container = welcome_hub.container("yuki")
    assert "Welcome.ipynb" in home_files(welcome_hub, "yuki")

    # Deleted by the user: not brought back by the next start.
    assert welcome_hub.run_in(container, "rm", f"{HOME}/Welcome.ipynb")[0] == 0
    welcome_hub.stop("yuki")
    welcome_hub.start("yuki")
    assert "Welcome.ipynb" not in home_files(welcome_hub, "yuki")

    # A home that has its own Welcome.ipynb but no marker (made before Dockyard gave one):
    # the user's file stays as it is.
    container = welcome_hub.container("yuki")
    code, _ = welcome_hub.run_in(container, "sh", "-c", f"echo mine > {HOME}/Welcome.ipynb "
                                 f"&& rm {HOME}/.dockyard/welcome-given")
    assert code == 0
    welcome_hub.stop("yuki")
    welcome_hub.start("yuki")
    container = welcome_hub.container("yuki")
    assert welcome_hub.run_in(container, "cat", f"{HOME}/Welcome.ipynb") == (0, "mine")
    assert welcome_hub.run_in(container, "test", "-e", f"{HOME}/.dockyard/welcome-given")[0] == 0
    welcome_hub.stop("yuki")
