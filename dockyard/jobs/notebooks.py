"""What makes a run a notebook run: the notebook file checked at submit time (nbformat,
size, kernel, parameters), its home-volume path made safe, and the failed cell found in an
executed notebook. No Flask and no engine here.

A notebook run's container runs ``python -m dockyard_data.notebook_job`` (the data client
in the image), which fetches the snapshot, runs it with papermill and sends back the
executed notebook; see ``dockyard.jobs.artifacts`` for where both are kept.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from dockyard.errors import NotFound
from dockyard.jobs.schemas import FieldProblem, InvalidJob

#: What a notebook run's container runs (set by Dockyard, never by the request).
NOTEBOOK_COMMAND = ["python", "-m", "dockyard_data.notebook_job"]
#: The Python package that runs notebooks; an image without it cannot run notebook jobs.
PAPERMILL = "papermill"
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_PARAMETERS = 100
MAX_PARAMETER_BYTES = 64 * 1024
NOTEBOOK_NAME = re.compile(r"[^A-Za-z0-9_.()+ -]")

ParameterValue = str | int | float | bool | None


@dataclass(frozen=True)
class NotebookFile:
    """A notebook as submitted: uploaded, or read from the owner's home."""

    name: str
    content: bytes
    source: Literal["upload", "home"]
    path: str | None = None


@dataclass(frozen=True)
class NotebookFacts:
    """What Dockyard needs to know of a valid notebook."""

    kernel: str
    language: str


class HomeFileMissing(NotFound):
    """The path names nothing readable in the owner's home."""


class HomeFiles(Protocol):
    """Reads a file from a user's home (the notebook servers' home volume or directory)."""

    def read(self, owner: str, path: str, max_bytes: int) -> bytes:
        """The file's first ``max_bytes`` bytes (``path`` is relative to the home and
        checked); raise HomeFileMissing when there is no such file."""
        ...


# -- parameters ------------------------------------------------------------------------------
def parameter_value(text: str) -> ParameterValue:
    """A ``name=value`` value typed like papermill's ``-p``: int, float, True/False, None
    (and, as JSON writes them, true/false/null), else the text itself."""
    for convert in (int, float):
        try:
            number = convert(text)
        except ValueError:
            continue
        if isinstance(number, float) and not math.isfinite(number):
            break  # "nan" and "inf" stay text: JSON has no such numbers
        return number
    stripped = text.strip()
    if stripped in ("true", "True"):
        return True
    if stripped in ("false", "False"):
        return False
    if stripped in ("null", "None"):
        return None
    return text


def parse_parameter_lines(text: str) -> dict[str, ParameterValue]:
    """``name=value`` lines (blank lines and ``#`` comments skipped) as parameters."""
    parameters: dict[str, ParameterValue] = {}
    problems: list[FieldProblem] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep:
            problems.append(FieldProblem("parameters", f"line {number}: write name=value "
                                         f"(got '{line.strip()[:60]}')"))
        elif not IDENTIFIER.match(name):
            problems.append(FieldProblem("parameters", _not_identifier(name)))
        else:
            parameters[name] = parameter_value(value.strip())
    if problems:
        raise InvalidJob(problems)
    return parameters


def _not_identifier(name: str) -> str:
    return (f"'{name[:60]}' is not a parameter name: a Python identifier (letters, digits "
            "and _, not starting with a digit)")


def check_parameters(parameters: dict[str, Any]) -> list[FieldProblem]:
    problems = [FieldProblem("parameters", _not_identifier(name))
                for name in parameters if not IDENTIFIER.match(name)]
    problems += [FieldProblem("parameters", f"'{name[:60]}' is not a finite number; give a "
                              "number, or the text in quotes")
                 for name, value in parameters.items()
                 if isinstance(value, float) and not math.isfinite(value)]
    if len(parameters) > MAX_PARAMETERS:
        problems.append(FieldProblem("parameters", f"at most {MAX_PARAMETERS} parameters"))
    elif len(json.dumps(parameters)) > MAX_PARAMETER_BYTES:
        problems.append(FieldProblem("parameters", f"at most {MAX_PARAMETER_BYTES // 1024} KB "
                                     "of parameters; pass large inputs as data instead"))
    return problems


# -- the notebook itself -------------------------------------------------------------------
def read_notebook(content: bytes, max_bytes: int) -> tuple[NotebookFacts | None,
                                                           list[FieldProblem]]:
    """Check that ``content`` is a valid notebook that says which kernel it needs."""
    if len(content) > max_bytes:
        return None, [FieldProblem("notebook", f"the notebook is larger than the "
                                   f"{max_bytes // (1024 * 1024)} MB allowed "
                                   "(DOCKYARD_NOTEBOOK_JOB_MAX_MB); clear its outputs or "
                                   "read big inputs from data instead")]
    import nbformat

    try:
        notebook = nbformat.reads(content.decode("utf-8"), as_version=4)
        nbformat.validate(notebook)
    except UnicodeDecodeError:
        return None, [FieldProblem("notebook", "not a notebook: the file is not UTF-8 text "
                                   "(a .ipynb file is JSON)")]
    except nbformat.ValidationError as exc:
        message = str(exc).splitlines()[0][:200]
        return None, [FieldProblem("notebook", f"not a valid notebook (nbformat): {message}")]
    except Exception as exc:  # nbformat raises several kinds for JSON that is no notebook
        message = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        return None, [FieldProblem("notebook", f"not a notebook (.ipynb JSON): {message}")]
    metadata = notebook.get("metadata", {})
    kernelspec = metadata.get("kernelspec") or {}
    kernel = kernelspec.get("name") or ""
    language = kernelspec.get("language") or (metadata.get("language_info") or {}).get(
        "name") or ""
    if not kernel:
        return None, [FieldProblem("notebook", "the notebook names no kernel "
                                   "(metadata.kernelspec.name); open it in JupyterLab, "
                                   "choose a kernel and save it")]
    return NotebookFacts(kernel=kernel, language=language), []


def check_image_runs(contents: dict[str, Any] | None, reference: str,
                     kernel: str) -> list[FieldProblem]:
    """Whether the image (by its inspection) has papermill and the notebook's kernel."""
    if not contents or "kernels" not in contents:
        return [FieldProblem("image", f"image '{reference}' has not been inspected yet, so "
                             "Dockyard cannot tell whether it runs notebooks; wait for its "
                             "inspection or choose another image")]
    packages = {name.lower().replace("_", "-")
                for name in (contents.get("pip_packages") or {})}
    if PAPERMILL not in packages:
        return [FieldProblem("image", f"image '{reference}' has no papermill, which runs "
                             "notebook jobs; choose an image with it (e.g. Dockyard's "
                             "notebook image)")]
    kernels = contents.get("kernels") or {}
    if kernel not in kernels:
        offered = ", ".join(sorted(kernels)) or "none"
        return [FieldProblem("image", f"the notebook's kernel '{kernel}' is not in image "
                             f"'{reference}' (it has: {offered}); choose another image or "
                             "change the notebook's kernel")]
    return []


def check_local_runs(kernel: str) -> list[FieldProblem]:
    """For a run without an image (a local pool): whether Dockyard's own Python
    environment has papermill and the notebook's kernel."""
    import importlib.util

    if importlib.util.find_spec(PAPERMILL) is None:
        return [FieldProblem("image", "Dockyard's own environment has no papermill, so a "
                             "local pool cannot run notebooks; choose an image")]
    from jupyter_client.kernelspec import KernelSpecManager

    kernels = set(KernelSpecManager().find_kernel_specs())
    if importlib.util.find_spec("ipykernel") is not None:
        kernels.add("python3")
    if kernel not in kernels:
        offered = ", ".join(sorted(kernels)) or "none"
        return [FieldProblem("image", f"the notebook's kernel '{kernel}' is not in Dockyard's "
                             f"own environment (it has: {offered}); choose an image")]
    return []


def safe_name(name: str) -> str:
    """A file name fit to show and to download as (never a path)."""
    base = posixpath.basename(name.replace("\\", "/")).strip() or "notebook.ipynb"
    return NOTEBOOK_NAME.sub("_", base)[:128]


def home_path(path: str, home_dir: str = "/home/jovyan") -> str | None:
    """``path`` relative to the home (absolute paths under ``home_dir`` allowed), or None
    when it leaves the home."""
    if not path or "\x00" in path:
        return None
    if path.startswith("/"):
        if not (path + "/").startswith(home_dir.rstrip("/") + "/"):
            return None
        path = path[len(home_dir.rstrip("/")):]
    normal = posixpath.normpath(path.lstrip("/"))
    if normal in (".", "") or normal == ".." or normal.startswith("../"):
        return None
    return normal


# -- after the run ---------------------------------------------------------------------------
def failed_cell(executed: bytes) -> str | None:
    """Where an executed notebook failed, as a sentence: the cell's number in the notebook
    as submitted (cells papermill added are not counted) and the error. Not its ``In [n]``:
    papermill's injected parameters cell shifts those by one, which would mislead.
    None when no cell failed, or when the notebook cannot be read: whatever a job sent,
    this never raises."""
    try:
        return _failed_cell(json.loads(executed))
    except (ValueError, TypeError, AttributeError, KeyError, RecursionError):
        return None


def _failed_cell(notebook: dict[str, Any]) -> str | None:
    number = 0
    for cell in notebook.get("cells", []):
        tags = (cell.get("metadata") or {}).get("tags") or []
        added = "injected-parameters" in tags or "papermill-error-cell-tag" in tags \
            or str(cell.get("id") or "").startswith("papermill-error-cell")
        if added:
            continue
        number += 1
        for output in cell.get("outputs") or []:
            if output.get("output_type") == "error":
                evalue = str(output.get("evalue", "")).strip().splitlines()
                error = str(output.get("ename", "Error"))[:100] + (
                    f": {evalue[0][:300]}" if evalue else "")
                return f"cell {number}: {error}"
    return None
