"""The files a run keeps besides its log: a notebook run's input snapshot, its executed
notebook and that notebook's HTML rendering.

They live under DOCKYARD_ARTIFACTS_ROOT (default DATA_ROOT/_artifacts: under HOME in the
embedded default, in the S3 data root in production), reached through fsspec like the data
catalog's files:

    <root>/notebooks/<sha256>.ipynb     the snapshot taken at submit (shared by retries)
    <root>/runs/<run id>/output.ipynb   sent by the run's job when papermill is done
    <root>/runs/<run id>/output.html    rendered by Dockyard on first request, then kept

Artifact names are a fixed set, so a name from a URL is never used as a path.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dockyard.data.storage import Storage, StorageConfig
from dockyard.errors import NotFound, Unavailable
from dockyard.models import Run, RunKind
from dockyard.settings import Settings

INPUT = "input.ipynb"
OUTPUT = "output.ipynb"
HTML = "output.html"
NOTEBOOK_TYPE = "application/x-ipynb+json"
MEDIA_TYPES = {INPUT: NOTEBOOK_TYPE, OUTPUT: NOTEBOOK_TYPE, HTML: "text/html"}
#: nbconvert templates of our own: JupyterLab's look, without its CDN scripts.
TEMPLATES = Path(__file__).parent / "nbconvert"


class ArtifactNotFound(NotFound):
    """The run has no artifact of that name (yet), or the name is not one a run has."""


class ArtifactStoreUnavailable(Unavailable):
    """The artifacts' storage did not answer."""


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
            # Write aside, then move into place: a reader never sees half a file.
            partial = f"{path}.partial"
            with fs.open(partial, "wb") as handle:
                handle.write(content)
            fs.mv(partial, path)
        except OSError as exc:
            raise ArtifactStoreUnavailable(f"could not write {location}: {exc}") from exc

    def _read(self, location: str, what: str) -> bytes:
        fs, path = self._storage.filesystem(location)
        try:
            return bytes(fs.cat_file(path))
        except FileNotFoundError:
            raise ArtifactNotFound(what) from None
        except OSError as exc:
            raise ArtifactStoreUnavailable(f"could not read {location}: {exc}") from exc

    def _size(self, location: str) -> int | None:
        fs, path = self._storage.filesystem(location)
        try:
            fs.invalidate_cache(path)
            info: dict[str, Any] = fs.info(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ArtifactStoreUnavailable(f"could not look at {location}: {exc}") from exc
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
        except OSError as exc:
            raise ArtifactStoreUnavailable(f"could not replace {path}: {exc}") from exc

    def read(self, run: Run, name: str) -> bytes:
        if name == HTML:
            return self.html(run)
        return self._read(self._location(run, name),
                          f"run #{run.id} has no {name} (yet)" if name == OUTPUT
                          else f"the notebook snapshot of run #{run.id} is missing")

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
        rendered = render_html(self.read(run, OUTPUT))
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
