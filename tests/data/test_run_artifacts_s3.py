"""Notebook runs' files in an S3 data root (production's layout), through a moto server:
snapshot, executed notebook and its HTML land under DATA_ROOT/_artifacts."""

from __future__ import annotations

from pathlib import Path

import boto3
import nbformat
import pytest

from dockyard.data.storage import StorageConfig
from dockyard.jobs.artifacts import ArtifactStore, ArtifactStoreUnavailable
from dockyard.models import Run, RunKind
from dockyard.settings import Settings
from tests.data.conftest import S3_BUCKET


def test_notebook_run_files_live_in_the_s3_data_root(s3_settings: Settings) -> None:
    # By default beside the data root, never in it: containers' store keys reach data/ only.
    assert s3_settings.artifacts_dir == f"s3://{S3_BUCKET}/_artifacts"
    prefix = s3_settings.data_root.removeprefix(f"s3://{S3_BUCKET}/") + "-artifacts"
    store = ArtifactStore.from_settings(s3_settings.model_copy(update={
        "artifacts_root": f"s3://{S3_BUCKET}/{prefix}"}))  # a prefix of this test's own
    node = nbformat.v4.new_notebook()
    node.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    node.cells.append(nbformat.v4.new_code_cell("print(6 * 7)"))
    source = nbformat.writes(node).encode()
    sha = store.save_snapshot(source)
    assert store.save_snapshot(source) == sha  # content-addressed: kept once
    run = Run(id=41, kind=RunKind.NOTEBOOK, notebook={"sha256": sha, "name": "n.ipynb"})
    assert [(a.name, a.size) for a in store.list(run)] == [("input.ipynb", len(source))]
    assert store.output(run) is None

    node.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="42\n")]
    executed = nbformat.writes(node).encode()
    store.save_output(run, executed)
    assert store.read(run, "output.ipynb") == executed
    assert b"42" in store.html(run)
    names = [a.name for a in store.list(run)]
    assert names == ["input.ipynb", "output.ipynb", "output.html"]

    s3 = boto3.client("s3", endpoint_url=s3_settings.data_s3_endpoint_url)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=S3_BUCKET,
                                                 Prefix=prefix + "/")["Contents"]}
    assert keys == {f"{prefix}/notebooks/{sha}.ipynb", f"{prefix}/runs/41/output.ipynb",
                    f"{prefix}/runs/41/output.html"}
    # A new output replaces the old one, and its HTML is made again.
    node.cells[0].outputs[0]["text"] = "43\n"
    store.save_output(run, nbformat.writes(node).encode())
    assert b"43" in store.html(run)


def test_an_unreachable_store_is_unavailable_not_an_error(tmp_path: Path) -> None:
    store = ArtifactStore(StorageConfig("s3://nowhere/_artifacts", "http://127.0.0.1:9",
                                        "us-east-1"))
    with pytest.raises(ArtifactStoreUnavailable) as caught:
        store.save_snapshot(b"{}")
    assert "127.0.0.1" not in str(caught.value.detail)
