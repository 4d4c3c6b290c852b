"""A small installation's worth of objects, made through the real API where it can be:
alice's job definition and runs (one live, one ended with a log, one notebook run with its
executed notebook), alice's running cluster, images (one offered to users, one hidden),
alice's data table with two committed batches and a pending one.

``text`` goes into every field a user controls, so the same world serves the
authorization matrix (plain text) and the XSS tests (attack payloads).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import timedelta

import nbformat
import pyarrow as pa
import pyarrow.parquet as pq
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update

from dockyard.jobs.run_logs import log_path
from dockyard.models import Cluster, ClusterState, Image, ImageStatus, Run, RunState, utcnow
from dockyard.settings import Settings
from tests.conftest import auth

SHELL_IMAGE = "debian:bookworm-slim"
ALICE, BOB, ADMIN = auth("tok-alice"), auth("tok-bob"), auth("tok-admin")
MANIFEST = "_dockyard_manifest.json"


@dataclass(frozen=True)
class World:
    definition: int  # alice's
    live_run: int  # alice's, RUNNING
    ended_run: int  # alice's, FAILED, with a log
    notebook_run: int  # alice's, SUCCEEDED, with input, output and HTML
    image: int  # offered to users (jobs)
    hidden_image: int  # in the catalog, not offered
    doomed_image: int  # unused by anything: may be deleted
    namespace: str  # alice's
    table: str
    partition: str  # canonical "date=20240101"
    current_batch: str
    older_batch: str
    pending_batch: str  # files written, not committed
    cluster: int  # alice's, running; its dashboard's address answers nothing

    def values(self) -> dict[str, object]:
        """Values for the route table's placeholders."""
        return {
            "definition_id": self.definition, "run_id": self.live_run,
            "ended_run": self.ended_run, "notebook_run": self.notebook_run,
            "image_id": self.image,
            "hidden_image": self.hidden_image, "doomed_image": self.doomed_image,
            "namespace": self.namespace, "name": self.table, "partition": self.partition,
            "batch_id": self.current_batch, "older_batch": self.older_batch,
            "pending_batch": self.pending_batch, "cluster_id": self.cluster,
        }


def _ok(response: object, *codes: int) -> dict:
    status = response.status_code  # type: ignore[attr-defined]
    assert status in codes, (status, response.get_data(as_text=True)[:500])  # type: ignore[attr-defined]
    return response.get_json() or {}  # type: ignore[attr-defined]


def write_parquet(location: str, columns: dict[str, list[object]]) -> None:
    """A batch's files the way the data client writes them: parquet, then the manifest."""
    import json
    import os

    os.makedirs(location, exist_ok=True)
    path = os.path.join(location, "part-00000.parquet")
    pq.write_table(pa.table(columns), path)
    with open(os.path.join(location, MANIFEST), "w") as handle:
        json.dump({"files": [{"path": "part-00000.parquet", "bytes": os.path.getsize(path)}]},
                  handle)


def _notebook(text: str) -> bytes:
    """A notebook whose source and output hold ``text``."""
    node = nbformat.v4.new_notebook()
    node.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                   "language": "python"}
    cell = nbformat.v4.new_code_cell(f"note = {text!r}\nprint(note)")
    cell.metadata["tags"] = ["parameters"]
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
    node.cells.append(cell)
    return nbformat.writes(node).encode()


def seed(app: Flask, settings: Settings, text: str = "plain words") -> World:
    client: FlaskClient = app.test_client()
    sessions = app.extensions["dockyard.sessions"]

    # -- images: the catalog is the admins'; rows stand for images the engine has -------
    with sessions() as session:
        offered = Image(reference=SHELL_IMAGE, status=ImageStatus.READY, for_jobs=True,
                        for_notebooks=True, created_by="admin",
                        # What inspection finds in an image that runs notebook jobs
                        # and clusters.
                        contents={"kernels": {"python3": {"language": "python"}},
                                  "pip_packages": {"papermill": "2.7.0"},
                                  "ray": "2.40.0", "spark": "3.5.3"},
                        inspected_at=utcnow(),
                        build_log=f"Step 1/2 : FROM scratch\n{text}\nSuccessfully built\n")
        hidden = Image(reference="team/hidden:1", status=ImageStatus.READY, created_by="admin")
        doomed = Image(reference="team/doomed:1", status=ImageStatus.READY, created_by="admin")
        session.add_all([offered, hidden, doomed])
        session.commit()
        ids = offered.id, hidden.id, doomed.id
    # The description goes through the admin API, as an admin would set it.
    _ok(client.patch(f"/api/v1/images/{ids[0]}", json={"description": text}, headers=ADMIN),
        200)

    # -- jobs: alice's definition and two runs ---------------------------------------
    job_fields = {
        "image": SHELL_IMAGE, "command": f"echo {text}", "env": {"NOTE": text},
        "tags": ["nightly", "javascript:x=1"], "memory_mb": 64, "cpu": 0.5,
    }
    definition = _ok(client.post("/api/v1/definitions", headers=ALICE, json={
        "name": "nightly-report", "description": text, **job_fields}), 201)["id"]
    live = _ok(client.post("/api/v1/runs", headers=ALICE,
                           json={"definition_id": definition}), 201)["id"]
    ended = _ok(client.post("/api/v1/runs", headers=ALICE, json=job_fields), 201)["id"]
    now = utcnow()
    with sessions() as session:
        # What the worker would have recorded.
        session.execute(update(Run).where(Run.id == live).values(
            status=RunState.RUNNING, backend="local", worker="nobody",
            started_at=now - timedelta(seconds=5)))
        session.execute(update(Run).where(Run.id == ended).values(
            status=RunState.FAILED, backend="local", exit_code=1, reason=f"exit code 1 {text}",
            started_at=now - timedelta(seconds=30), finished_at=now - timedelta(seconds=20)))
        session.commit()
    notebook = _notebook(text)
    notebook_run = _ok(client.post("/api/v1/runs", headers=ALICE, data={
        "image": SHELL_IMAGE, "parameters": json.dumps({"note": text}),
        "notebook": (io.BytesIO(notebook), f"{text}.ipynb")},
        content_type="multipart/form-data"), 201)["id"]
    with sessions() as session:
        session.execute(update(Run).where(Run.id == notebook_run).values(
            status=RunState.SUCCEEDED, backend="local", exit_code=0,
            started_at=now - timedelta(seconds=30), finished_at=now - timedelta(seconds=20)))
        session.commit()
        # The executed notebook its job would have sent (the job's PUT is tested elsewhere).
        app.extensions["dockyard.artifacts"].save_output(session.get(Run, notebook_run),
                                                         notebook)
    for run_id in (live, ended, notebook_run):
        path = log_path(settings, run_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"starting\n{text}\ndone\n")

    # -- data: alice's table, two commits and a pending batch ------------------------
    ns, table, day = "alice-ns", "orders", {"date": "20240101"}
    base = f"/api/v1/tables/{ns}/{table}"
    _ok(client.put(base, headers=ALICE, json={"partition_keys": ["date"],
                                              "description": text}), 201)
    batches = []
    for value in ("first", text, "pending"):
        began = _ok(client.post(base + "/batches", headers=ALICE,
                                json={"partition": day, "run_id": ended}), 201)
        # A column named by the user and a value they wrote: both shown on the pages.
        write_parquet(began["location"], {"item": [value], text: [text]})
        batches.append(began["batch_id"])
        if value != "pending":
            _ok(client.post(f"{base}/batches/{began['batch_id']}/commit", headers=ALICE,
                            json={}), 200)
    # -- clusters: alice's, running as the worker would have recorded it ------------
    cluster = _ok(client.post("/api/v1/clusters", headers=ALICE, json={
        "name": "big-join", "kind": "spark", "workers": 2, "image": SHELL_IMAGE}), 201)["id"]
    with sessions() as session:
        session.execute(update(Cluster).where(Cluster.id == cluster).values(
            status=ClusterState.RUNNING, address="spark://head:7077",
            dashboard_url="http://127.0.0.1:9", started_at=now))
        session.commit()
    return World(
        definition=definition, live_run=live, ended_run=ended, notebook_run=notebook_run,
        image=ids[0],
        hidden_image=ids[1], doomed_image=ids[2], namespace=ns, table=table,
        partition="date=20240101", current_batch=batches[1], older_batch=batches[0],
        pending_batch=batches[2], cluster=cluster,
    )
