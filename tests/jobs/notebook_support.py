"""What the notebook-run tests on a real engine share: the web app served where job
containers reach it (they fetch their snapshot and send their executed notebook back over
HTTP with the run's token), the notebook image in the catalog with what its inspection
found, notebooks to run, and a user's home volume with a file in it."""

from __future__ import annotations

import functools
import io
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker
import nbformat
import requests
from sqlalchemy import select
from werkzeug.serving import make_server

from dockyard.db import make_engine, make_session_factory
from dockyard.models import Image, ImageStatus, Run
from dockyard.settings import Settings
from spawner.environment import network_gateway
from spawner.images.inspect import inspect_image
from spawner.notebooks.homes import HOME_DIR, home_volume_name
from tests.jobs.conftest import FINAL, JobsHarness

#: Dockyard's notebook image: papermill, the Python and R kernels, and the data client
#: whose ``dockyard_data.notebook_job`` runs the notebook.
NOTEBOOK_IMAGE = "dockyard/notebook:latest"
ARTIFACT_NAMES = ["input.ipynb", "output.ipynb", "output.html"]


@functools.cache
def image_contents(reference: str) -> dict[str, Any]:
    """What Dockyard's own inspection finds in the image (kernels, pip packages): the
    facts a notebook submit is checked against. Once per test process."""
    return inspect_image(reference, timeout_seconds=120)


def add_notebook_image(db_url: str, reference: str = NOTEBOOK_IMAGE) -> None:
    """The image in the catalog for jobs, inspected, as an admin's catalog would have it."""
    contents = image_contents(reference)
    assert "papermill" in contents.get("pip_packages", {}), contents
    engine = make_engine(db_url)
    try:
        with make_session_factory(engine)() as session:
            image = session.scalar(select(Image).where(Image.reference == reference))
            if image is None:
                image = Image(reference=reference, for_jobs=True, for_notebooks=True,
                              status=ImageStatus.READY, created_by="admin")
                session.add(image)
            image.contents = contents
            session.commit()
    finally:
        engine.dispose()


def notebook(*sources: str, parameters: str | None = None, kernel: str = "python3",
             language: str = "python") -> bytes:
    """A notebook of code cells, with a first cell tagged "parameters" when given."""
    nb = nbformat.v4.new_notebook()
    nb.metadata.kernelspec = {"name": kernel, "display_name": kernel, "language": language}
    cells = [nbformat.v4.new_code_cell(source) for source in sources]
    if parameters is not None:
        cell = nbformat.v4.new_code_cell(parameters)
        cell.metadata.tags = ["parameters"]
        cells.insert(0, cell)
    nb.cells = cells
    return nbformat.writes(nb).encode()


def read_notebook(content: bytes) -> nbformat.NotebookNode:
    return nbformat.reads(content.decode(), as_version=4)


def stream_text(cell: Any) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", [])
                   if o.get("output_type") == "stream")


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class NotebookJobs(JobsHarness):
    """The jobs suite with the web app on a real port at the Docker bridge's gateway: the
    address job containers reach this machine at, so DOCKYARD_URL inside runs works. The
    test talks to the same server over HTTP, as a user's scripts would."""

    def __init__(self, base: Settings, tmp_path: Path, overrides: dict[str, Any]) -> None:
        host = network_gateway("bridge")
        port = free_port(host)
        super().__init__(base, tmp_path, {"job_dockyard_url": f"http://{host}:{port}/",
                                          "job_stop_grace_seconds": 10, **overrides})
        add_notebook_image(self.settings.db_url)
        self.url = f"http://{host}:{port}"
        self.server = make_server(host, port, self.client.application, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.http = requests.Session()

    def api(self, method: str, path: str, headers: dict[str, str], **kwargs: Any
            ) -> requests.Response:
        return self.http.request(method, f"{self.url}/api/v1{path}", headers=headers,
                                 timeout=60, **kwargs)

    def upload(self, headers: dict[str, str], content: bytes, name: str = "etl.ipynb",
               **fields: Any) -> dict[str, Any]:
        """POST /api/v1/runs as multipart: the notebook file plus form fields (JSON text
        for the structured ones), as curl -F would send them."""
        import json

        form = {"image": NOTEBOOK_IMAGE, **self.run_defaults, **fields}
        data = {k: v if isinstance(v, str) else json.dumps(v) for k, v in form.items()}
        response = self.api("POST", "/runs", headers, data=data,
                            files={"notebook": (name, content, "application/x-ipynb+json")})
        assert response.status_code == 201, response.text
        return response.json()

    def artifact(self, headers: dict[str, str], run_id: int, name: str) -> bytes:
        response = self.api("GET", f"/runs/{run_id}/artifacts/{name}", headers)
        assert response.status_code == 200, response.text
        return response.content

    def artifacts(self, headers: dict[str, str], run_id: int) -> list[dict[str, Any]]:
        response = self.api("GET", f"/runs/{run_id}/artifacts", headers)
        assert response.status_code == 200, response.text
        return response.json()["artifacts"]

    def log_text(self, headers: dict[str, str], run_id: int) -> str:
        return self.api("GET", f"/runs/{run_id}/logs", headers).json()["text"]

    def wait_for_log(self, headers: dict[str, str], run_id: int, text: str,
                     timeout: float = 180) -> str:
        """The run's log once it holds ``text`` (copied from the engine as the job runs)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log_text(headers, run_id)
            if text in log:
                return log
            run = self.db.run(run_id)
            assert run.status not in FINAL, (run.status, run.reason, log)
            time.sleep(0.3)
        raise AssertionError(f"run {run_id} never logged {text!r}: "
                             f"{self.log_text(headers, run_id)}")

    def ended(self, run_id: int, timeout: float = 300) -> Run:
        return self.wait(run_id, timeout=timeout)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.http.close()
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(10)


# -- a user's home volume ---------------------------------------------------------------------
class HomeVolume:
    """``username``'s home volume, named as the Docker spawner names it, with files put
    in by a container that never starts; removed on close."""

    def __init__(self, engine: docker.DockerClient, prefix: str, username: str) -> None:
        self.engine = engine
        self.name = home_volume_name(prefix, username)
        self.volume = engine.volumes.create(self.name, labels={"dockyard.test": "home"})

    def write(self, path: str, content: bytes) -> None:
        """Put ``path`` (relative to the home) in the volume, owned by the notebook user
        as a file saved in JupyterLab would be."""
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            parts = path.split("/")
            for depth in range(1, len(parts)):
                folder = tarfile.TarInfo("/".join(parts[:depth]))
                folder.type, folder.mode, folder.uid, folder.gid = tarfile.DIRTYPE, 0o755, 1000, 100
                tar.addfile(folder)
            member = tarfile.TarInfo(path)
            member.size, member.mode, member.uid, member.gid = len(content), 0o644, 1000, 100
            tar.addfile(member, io.BytesIO(content))
        container = self.engine.containers.create(
            NOTEBOOK_IMAGE, command=["true"], network_disabled=True,
            volumes={self.name: {"bind": HOME_DIR, "mode": "rw"}},
            labels={"dockyard.test": "home-writer"})
        try:
            assert container.put_archive(HOME_DIR, archive.getvalue())
        finally:
            container.remove(force=True)

    def remove(self) -> None:
        for container in self.engine.containers.list(
                all=True, filters={"volume": self.name}):
            container.remove(force=True)
        self.volume.remove(force=True)


@contextmanager
def home_volume(prefix: str, username: str) -> Iterator[HomeVolume]:
    engine = docker.from_env(timeout=60)
    home = HomeVolume(engine, prefix, username)
    try:
        yield home
    finally:
        try:
            home.remove()
        finally:
            engine.close()
