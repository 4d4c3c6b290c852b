"""The files a run keeps besides its log: a notebook run's input snapshot, its executed
notebook and that notebook's HTML rendering.

They live under DOCKYARD_ARTIFACTS_ROOT (default HOME/artifacts, or s3://BUCKET/_artifacts
with an S3 data root), reached through fsspec like the data catalog's files, and never
inside the data root: notebooks and jobs can write there, and a snapshot they could
replace would run their code as another user. A snapshot is also checked against its
sha256 whenever it is read.

    <root>/notebooks/<sha256>.ipynb     the snapshot taken at submit (shared by retries)
    <root>/runs/<run id>/output.ipynb   sent by the run's job when papermill is done
    <root>/runs/<run id>/output.html    rendered by Dockyard on first request, then kept

Artifact names are a fixed set, so a name from a URL is never used as a path.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dockyard.data.storage import Storage, StorageConfig
from dockyard.errors import Conflict, NotFound, Unavailable
from dockyard.models import Run, RunKind
from dockyard.settings import Settings

log = logging.getLogger(__name__)

INPUT = "input.ipynb"
OUTPUT = "output.ipynb"
HTML = "output.html"
NOTEBOOK_TYPE = "application/x-ipynb+json"
MEDIA_TYPES = {INPUT: NOTEBOOK_TYPE, OUTPUT: NOTEBOOK_TYPE, HTML: "text/html"}
#: Executed notebooks larger than this are offered as a download only (rendering one takes
#: several times its size in memory, in the web service).
HTML_MAX_BYTES = 50 * 1024 * 1024
#: nbconvert templates of our own: JupyterLab's look, without its CDN scripts.
TEMPLATES = Path(__file__).parent / "nbconvert"


class ArtifactNotFound(NotFound):
    """The run has no artifact of that name (yet), or the name is not one a run has."""


class ArtifactStoreUnavailable(Unavailable):
    """The artifacts' storage did not answer."""

    def __init__(self, location: str, exc: BaseException) -> None:
        # The location stays in the log: it names server paths and buckets.
        log.warning("Run files at %s: %s: %s", location, type(exc).__name__, exc)
        super().__init__("the store of runs' files did not answer; try again shortly")


class NotebookNotShown(Conflict):
    """The executed notebook cannot be shown as a page (too large, or not renderable)."""


class SnapshotChanged(Conflict):
    """A snapshot no longer has the content it was taken with."""


@dataclass(frozen=True)
class Artifact:
    name: str
    #: Bytes; None for the HTML rendering before it was first asked for.
    size: int | None
    media_type: str


class ArtifactStore:
    def __init__(self, config: StorageConfig) -> None:
        self._storage = Storage(config)
        self.root = self._storage.root

    @classmethod
    def from_settings(cls, settings: Settings) -> ArtifactStore:
        return cls(StorageConfig(settings.artifacts_dir, settings.data_s3_endpoint_url,
                                 settings.data_s3_region))

    # -- locations -----------------------------------------------------------------------
    def _snapshot(self, sha256: str) -> str:
        return posixpath.join(self.root, "notebooks", f"{sha256}.ipynb")

    def _of_run(self, run_id: int, name: str) -> str:
        return posixpath.join(self.root, "runs", str(run_id), name)

    def _location(self, run: Run, name: str) -> str:
        if run.kind != RunKind.NOTEBOOK or not run.notebook or name not in MEDIA_TYPES:
            raise ArtifactNotFound(f"run #{run.id} has no file named '{name[:80]}'")
        if name == INPUT:
            return self._snapshot(run.notebook["sha256"])
        return self._of_run(run.id, name)

    # -- reading and writing ---------------------------------------------------------------
    def _write(self, location: str, content: bytes) -> None:
        fs, path = self._storage.filesystem(location)
        try:
            if location.startswith("s3://"):
                fs.pipe_file(path, content)  # an object appears whole, or not at all
                return
            fs.makedirs(posixpath.dirname(path), exist_ok=True)
            # Write aside under a name of its own, then move into place: a reader never
            # sees half a file, and two writers of one snapshot never share a temporary.
            partial = f"{path}.{uuid.uuid4().hex}.partial"
            with fs.open(partial, "wb") as handle:
                handle.write(content)
            fs.mv(partial, path)
        except Exception as exc:  # OSError locally; botocore's own errors from S3
            raise ArtifactStoreUnavailable(location, exc) from exc

    def _read(self, location: str, what: str) -> bytes:
        fs, path = self._storage.filesystem(location)
        try:
            return bytes(fs.cat_file(path))
        except FileNotFoundError:
            raise ArtifactNotFound(what) from None
        except Exception as exc:
            raise ArtifactStoreUnavailable(location, exc) from exc

    def _size(self, location: str) -> int | None:
        fs, path = self._storage.filesystem(location)
        try:
            fs.invalidate_cache(path)
            info: dict[str, Any] = fs.info(path)
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise ArtifactStoreUnavailable(location, exc) from exc
        return int(info.get("size") or 0)

    def save_snapshot(self, content: bytes) -> str:
        """Keep a submitted notebook; its sha256 names it, so a re-submit costs nothing."""
        sha256 = hashlib.sha256(content).hexdigest()
        location = self._snapshot(sha256)
        if self._size(location) != len(content):
            self._write(location, content)
        return sha256

    def save_output(self, run: Run, content: bytes) -> None:
        """Keep the executed notebook the run's job sent (a later one replaces it, and
        its HTML rendering is made again)."""
        self._write(self._location(run, OUTPUT), content)
        fs, path = self._storage.filesystem(self._location(run, HTML))
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise ArtifactStoreUnavailable(path, exc) from exc

    def read(self, run: Run, name: str) -> bytes:
        if name == HTML:
            return self.html(run)
        if name == OUTPUT:
            return self._read(self._location(run, name), f"run #{run.id} has no {name} (yet)")
        content = self._read(self._location(run, name),
                             f"the notebook snapshot of run #{run.id} is missing")
        assert run.notebook is not None  # _location refused runs without one
        if hashlib.sha256(content).hexdigest() != run.notebook["sha256"]:
            log.error("The snapshot of run %s does not match its sha256 %s", run.id,
                      run.notebook["sha256"])
            raise SnapshotChanged(f"the notebook snapshot of run #{run.id} has changed since "
                                  "it was taken, so Dockyard will not serve or run it; tell "
                                  "an administrator")
        return content

    def output(self, run: Run) -> bytes | None:
        try:
            return self.read(run, OUTPUT)
        except ArtifactNotFound:
            return None

    def html(self, run: Run) -> bytes:
        """The executed notebook as HTML: rendered once, on first request, then kept."""
        location = self._location(run, HTML)
        try:
            return self._read(location, "")
        except ArtifactNotFound:
            pass
        executed = self.read(run, OUTPUT)
        if len(executed) > HTML_MAX_BYTES:
            raise NotebookNotShown(f"the executed notebook is larger than "
                                   f"{HTML_MAX_BYTES // (1024 * 1024)} MB, too large to show "
                                   "as a page; download output.ipynb instead")
        try:
            rendered = render_html(executed)
        except Exception as exc:  # whatever the job sent, a page must not fail with a 500
            log.warning("Run %s: its executed notebook cannot be rendered: %s", run.id, exc)
            raise NotebookNotShown("the executed notebook cannot be shown as a page; "
                                   "download output.ipynb instead") from exc
        self._write(location, rendered)
        return rendered

    def list(self, run: Run) -> list[Artifact]:
        if run.kind != RunKind.NOTEBOOK or not run.notebook:
            return []
        found = [Artifact(INPUT, self._size(self._location(run, INPUT)), NOTEBOOK_TYPE)]
        output_size = self._size(self._location(run, OUTPUT))
        if output_size is not None:
            found.append(Artifact(OUTPUT, output_size, NOTEBOOK_TYPE))
            found.append(Artifact(HTML, self._size(self._location(run, HTML)), "text/html"))
        return found


def render_html(notebook: bytes) -> bytes:
    """nbconvert's HTML of a notebook, as a page on its own (shown in a sandboxed frame:
    whatever scripts its outputs hold never run on Dockyard's origin)."""
    import nbformat
    from nbconvert import HTMLExporter

    document = nbformat.reads(notebook.decode("utf-8", errors="replace"), as_version=4)
    exporter = HTMLExporter(template_name="dockyard-static",
                            extra_template_basedirs=[str(TEMPLATES)])
    body, _ = exporter.from_notebook_node(document)
    return body.encode("utf-8")
