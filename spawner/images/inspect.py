"""What is inside an image: run it once, offline, and read a report of its contents.

The container runs a short POSIX shell script as uid 1000 with no network, a read-only
root file system, a memory and process cap and a time limit. The script prints one
section per fact; anything an image lacks (no Python, no R, no Java) just leaves its
section empty, so a minimal image is inspected as well as the full notebook image.
Where Python exists, one Python snippet reports the interpreter, every installed
distribution (what ``pip freeze --all`` lists) and the Jupyter kernels as JSON.

The container is removed as soon as the report is read. One that is still there later
was left by a worker that stopped during the inspection; its labels say which
installation (the namespace its jobs carry too) and which worker made it, and for which
catalog image, so that worker's next start removes it and settles the image
(``remove_leftover_inspections``), and no installation touches another's.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from requests.exceptions import ConnectionError as RequestsConnectionError
from requests.exceptions import ReadTimeout

from spawner.engine import docker_client
from spawner.jobs.base import LABEL_NAMESPACE, LABEL_ROLE

SECTION_MARK = "@@dockyard-section "
INSPECT_LABEL = LABEL_ROLE
INSPECT_LABEL_VALUE = "image-inspect"
WORKER_LABEL = "dockyard.worker"
CATALOG_IMAGE_LABEL = "dockyard.catalog-image"

_PYTHON_REPORT = r"""
import json, os, sys
report = {"version": sys.version.split()[0], "executable": sys.executable}
try:
    from importlib import metadata
    packages = {}
    for dist in metadata.distributions():
        # The header lines only: parsing whole METADATA files costs seconds in big images.
        text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
        name = version = None
        for line in text.splitlines():
            if not line:
                break
            if line.startswith("Name:"):
                name = line[5:].strip()
            elif line.startswith("Version:"):
                version = line[8:].strip()
        if name:
            packages[name] = version or ""
    report["packages"] = packages
except Exception as exc:
    report["packages_error"] = repr(exc)
# Kernel specs read from Jupyter's data directories, as KernelSpecManager finds them,
# without importing jupyter_client (which alone takes seconds to import).
try:
    from jupyter_core.paths import jupyter_path
    kernel_dirs = jupyter_path("kernels")
    found_jupyter = True
except Exception:
    kernel_dirs = [os.path.join(p, "share", "jupyter", "kernels")
                   for p in (sys.prefix, "/usr/local", "/usr")]
    found_jupyter = False
kernels = {}
for directory in kernel_dirs:
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        continue
    for name in names:
        if name in kernels:
            continue
        try:
            with open(os.path.join(directory, name, "kernel.json")) as handle:
                spec = json.load(handle)
        except (OSError, ValueError):
            continue
        kernels[name] = {"display_name": spec.get("display_name", name),
                         "language": spec.get("language", "")}
if "python3" not in kernels:
    import importlib.util
    if importlib.util.find_spec("ipykernel") is not None:
        kernels["python3"] = {"display_name": "Python 3 (ipykernel)", "language": "python"}
if kernels or found_jupyter:
    report["kernels"] = kernels
if any(name.lower() == "pyspark" for name in report.get("packages", {})):
    # pyspark's version is Spark's: the shell need not start a JVM to ask.
    open("/tmp/.dockyard-has-pyspark", "w").close()
print(json.dumps(report))
# Tells the shell to ask the jupyter command for kernels instead.
sys.exit(0 if "kernels" in report else 3)
"""

# Quoted for a single-quoted shell word.
_PYTHON_REPORT_QUOTED = _PYTHON_REPORT.replace("'", "'\\''")

# Each probe is tolerant: a missing program prints nothing and the script goes on.
INSPECT_SCRIPT = f"""
sec() {{ printf '\\n{SECTION_MARK}%s\\n' "$1"; }}
sec os
( . /etc/os-release 2>/dev/null && printf '%s\\n' "$PRETTY_NAME" )
PY=""
ASK_JUPYTER=1
for candidate in python3 python; do
  if command -v "$candidate" >/dev/null 2>&1; then PY="$candidate"; break; fi
done
if [ -n "$PY" ]; then
  sec python
  "$PY" -c '{_PYTHON_REPORT_QUOTED}' 2>/dev/null && ASK_JUPYTER=0
fi
if [ "$ASK_JUPYTER" = 1 ] && command -v jupyter >/dev/null 2>&1; then
  sec kernelspecs
  jupyter kernelspec list --json 2>/dev/null
fi
if command -v Rscript >/dev/null 2>&1; then
  sec r
  Rscript -e 'cat("@version", paste(R.version$major, R.version$minor, sep="."), "\\n");
    ip <- installed.packages()[, c("Package", "Version"), drop=FALSE];
    for (i in seq_len(nrow(ip))) cat(ip[i, 1], ip[i, 2], "\\n")' 2>/dev/null
fi
if command -v java >/dev/null 2>&1; then
  sec java
  java -version 2>&1 | grep -m 1 version
fi
sec spark
if [ -n "$SPARK_HOME" ] && [ -r "$SPARK_HOME/RELEASE" ]; then
  head -n 1 "$SPARK_HOME/RELEASE"
elif [ ! -e /tmp/.dockyard-has-pyspark ] && command -v spark-submit >/dev/null 2>&1; then
  spark-submit --version 2>&1 | grep -m 1 -o 'version [0-9][0-9.]*'
fi
sec end
"""

_VERSION = re.compile(r"(\d+(?:\.\d+)+)")


class InspectionFailed(Exception):
    """The image could not be run at all (missing, no shell, engine trouble)."""


@dataclass(frozen=True)
class InspectionOwner:
    """Whose inspection a container is: an installation (its jobs' namespace), one of its
    workers, and the catalog image being inspected (None outside the catalog)."""

    namespace: str
    worker: str
    catalog_id: int | None = None

    def labels(self) -> dict[str, str]:
        labels = {LABEL_NAMESPACE: self.namespace, WORKER_LABEL: self.worker}
        if self.catalog_id is not None:
            labels[CATALOG_IMAGE_LABEL] = str(self.catalog_id)
        return labels


@dataclass(frozen=True)
class LeftoverInspection:
    """An inspection container removed because no inspection will read it any more."""

    container: str
    catalog_id: int | None
    # Left by the worker that asked (so the inspection was its own), or by another worker
    # of the installation that stopped long ago.
    by_this_worker: bool
    created: datetime | None


def inspect_image(
    reference: str,
    *,
    timeout_seconds: float = 60,
    memory: str = "1g",
    owner: InspectionOwner | None = None,
    client_factory: Callable[..., Any] = docker_client,
) -> dict[str, Any]:
    """Run ``reference`` once and return what it contains (see ``parse_report``)."""
    started = time.monotonic()
    client = client_factory(timeout=max(30, int(timeout_seconds) + 10))
    container = None
    try:
        try:
            container = client.containers.run(
                reference,
                entrypoint=["/bin/sh", "-c"],
                command=[INSPECT_SCRIPT],
                name=f"dockyard-inspect-{secrets.token_hex(4)}",
                user="1000",
                network_mode="none",
                read_only=True,
                tmpfs={"/tmp": "rw,size=64m"},
                environment={"HOME": "/tmp"},
                mem_limit=memory,
                pids_limit=256,
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                labels={INSPECT_LABEL: INSPECT_LABEL_VALUE,
                        **(owner.labels() if owner else {})},
                detach=True,
            )
        except ImageNotFound:
            raise InspectionFailed(f"image '{reference}' is not on the Docker engine") from None
        except APIError as exc:
            # e.g. "exec: /bin/sh: no such file": an image without a shell.
            raise InspectionFailed(f"cannot run '{reference}': {exc.explanation or exc}") from None
        timed_out = False
        try:
            result = container.wait(timeout=timeout_seconds)
            exit_code = int(result.get("StatusCode", -1))
        except (ReadTimeout, RequestsConnectionError):
            timed_out = True
            exit_code = -1
            container.kill()
        output = container.logs(stdout=True, stderr=False).decode("utf-8", "replace")
    except DockerException as exc:
        raise InspectionFailed(f"Docker engine error while inspecting: {exc}") from None
    finally:
        if container is not None:
            try:
                container.remove(force=True)
            except (NotFound, APIError):
                pass
        client.close()
    report = parse_report(output)
    report["duration_seconds"] = round(time.monotonic() - started, 2)
    if timed_out:
        report["errors"].append(f"stopped after {timeout_seconds:g} s; the report may be partial")
    elif exit_code != 0 and not report["complete"]:
        report["errors"].append(f"the inspection script exited with {exit_code}")
    return report


def remove_leftover_inspections(
    namespace: str,
    worker: str,
    *,
    abandoned_after: timedelta,
    client_factory: Callable[..., Any] = docker_client,
) -> list[LeftoverInspection]:
    """Remove the inspection containers of installation ``namespace`` that no inspection
    will read: every one of ``worker``, which calls this as it starts and so has none under
    way, and those of its other workers that stopped (or never started) more than
    ``abandoned_after`` ago, since a worker removes its container as soon as it ends.
    Containers of other installations, and running ones of other workers, stay."""
    client = client_factory(timeout=30)
    try:
        labels = [f"{INSPECT_LABEL}={INSPECT_LABEL_VALUE}", f"{LABEL_NAMESPACE}={namespace}"]
        removed = []
        now = datetime.now(UTC)
        for container in client.containers.list(all=True, filters={"label": labels},
                                                ignore_removed=True):
            by_this_worker = container.labels.get(WORKER_LABEL) == worker
            if not by_this_worker and not _abandoned(container.attrs, now - abandoned_after):
                continue
            try:
                container.remove(force=True)
            except NotFound:  # its own worker removed it meanwhile
                continue
            catalog_id = container.labels.get(CATALOG_IMAGE_LABEL, "")
            removed.append(LeftoverInspection(
                container=container.name,
                catalog_id=int(catalog_id) if catalog_id.isdigit() else None,
                by_this_worker=by_this_worker,
                created=_engine_time(container.attrs.get("Created")),
            ))
        return removed
    finally:
        client.close()


def _abandoned(attrs: dict[str, Any], before: datetime) -> bool:
    state = attrs.get("State") or {}
    if state.get("Running") or state.get("Restarting"):
        return False
    # A container that never ran has no end (Docker says year 1): its creation counts.
    ended = _engine_time(state.get("FinishedAt"))
    if ended is None or ended.year < 2000:
        ended = _engine_time(attrs.get("Created"))
    return ended is not None and ended < before


def _engine_time(value: Any) -> datetime | None:
    try:
        # Docker gives nanoseconds; Python's parser takes the first six digits.
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


def parse_report(output: str) -> dict[str, Any]:
    """Turn the script's sections into the contents Dockyard stores and diffs."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith(SECTION_MARK):
            current = sections.setdefault(line[len(SECTION_MARK) :].strip(), [])
        elif current is not None:
            current.append(line)
    report: dict[str, Any] = {
        "os": _first(sections.get("os")),
        "python": None,
        "r": None,
        "java": None,
        "spark": None,
        "ray": None,
        "kernels": {},
        "pip_packages": {},
        "r_packages": {},
        "errors": [],
        "complete": "end" in sections,
    }
    python = _python_section(sections.get("python"), report["errors"])
    if python:
        report["python"] = python.get("version")
        packages = python.get("packages") or {}
        report["pip_packages"] = dict(sorted(packages.items(), key=lambda kv: kv[0].lower()))
        report["kernels"] = python.get("kernels") or {}
        lowered = {name.lower(): version for name, version in packages.items()}
        report["ray"] = lowered.get("ray")
        report["spark"] = lowered.get("pyspark")
    if not report["kernels"] and sections.get("kernelspecs"):
        report["kernels"] = _kernelspecs(sections["kernelspecs"])
    if sections.get("r"):
        version, packages = _r_section(sections["r"])
        report["r"] = version
        report["r_packages"] = packages
    if sections.get("java"):
        report["java"] = _java_version(_first(sections["java"]) or "")
    spark_line = _first(sections.get("spark"))
    if spark_line and report["spark"] is None:
        found = _VERSION.search(spark_line)
        report["spark"] = found.group(1) if found else None
    return report


def _first(lines: list[str] | None) -> str | None:
    for line in lines or []:
        if line.strip():
            return line.strip()
    return None


def _python_section(lines: list[str] | None, errors: list[str]) -> dict[str, Any] | None:
    text = "\n".join(lines or []).strip()
    if not text:
        return None
    try:
        report = json.loads(text.splitlines()[-1])
    except ValueError:
        errors.append("the Python report was not readable")
        return None
    if "packages_error" in report:
        errors.append(f"listing Python packages failed: {report['packages_error']}")
    return report if isinstance(report, dict) else None


def _kernelspecs(lines: list[str]) -> dict[str, Any]:
    try:
        specs = json.loads("\n".join(lines)).get("kernelspecs", {})
    except (ValueError, AttributeError):
        return {}
    return {
        name: {
            "display_name": spec.get("spec", {}).get("display_name", name),
            "language": spec.get("spec", {}).get("language", ""),
        }
        for name, spec in specs.items()
    }


def _r_section(lines: list[str]) -> tuple[str | None, dict[str, str]]:
    version = None
    packages: dict[str, str] = {}
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and parts[0] == "@version":
            version = parts[1]
        elif len(parts) == 2:
            packages[parts[0]] = parts[1]
    return version, dict(sorted(packages.items(), key=lambda kv: kv[0].lower()))


def _java_version(line: str) -> str | None:
    quoted = re.search(r'"([^"]+)"', line)
    if quoted:
        return quoted.group(1)
    found = _VERSION.search(line)
    return found.group(1) if found else None
