"""Builds Dockyard's own images (dockyard/test, dockyard/notebook, and dockyard/hub when its
Dockerfile exists) on the Docker engine, streaming the build's output line by line.

Each build:

- creates the offline base ``debian:bookworm-slim`` with ``images/base/make-base.sh`` when
  a Dockerfile needs it and the engine lacks it (no registry is needed);
- sends a context made only of the files the image needs, confined to its directory
  (no ``..``, no symlink resolving outside), honouring the context's ``.dockerignore``;
- adds an extra CA bundle to that context as ``build-ca.crt`` (given, else the host's
  bundle, else empty), which the Dockerfiles install into the image's trust store;
- tags the result ``REPOSITORY:VERSION``, VERSION being derived from the context's content
  and the build arguments, and ``REPOSITORY:latest``.

``ImageBuild.lines()`` yields progress lines as they come so a web page can stream them;
``ImageBuild.log`` keeps them all.
"""

from __future__ import annotations

import hashlib
import io
import re
import stat
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import docker
from docker.errors import APIError, DockerException, ImageNotFound
from docker.utils.build import PatternMatcher

from spawner.images.facts import BuildFailed

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGES_DIR = REPO_ROOT / "images"
BASE_IMAGE = "debian:bookworm-slim"
MAKE_BASE = IMAGES_DIR / "base" / "make-base.sh"
CA_NAME = "build-ca.crt"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")

# Never part of a context, whatever a .dockerignore says: VCS data, local environments,
# state. A build-ca.crt on disk is replaced by the one the build supplies.
ALWAYS_EXCLUDED = [
    ".git", "**/.git", ".venv", "**/.venv", "node_modules", ".dockyard",
    "**/__pycache__", "**/*.pyc", "**/*.egg-info", "**/.pytest_cache", "**/.ruff_cache",
]
# A build sends output in bursts; a silent step (pip building a large wheel) must not be
# taken for a dead engine.
BUILD_TIMEOUT_SECONDS = 3600
GENERATED_MTIME = 946684800  # 2000-01-01: after 1980, which zip-based tools need
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_BUILT = re.compile(r"^Successfully built ([0-9a-f]+)$")
_FROM = re.compile(r"^\s*FROM\s+(?:--platform=\S+\s+)?(\S+)", re.IGNORECASE | re.MULTILINE)


class BuildError(Exception):
    """A build could not run or failed; the message is one line a person can act on."""


class ContextError(BuildError):
    """The build context would reach outside its directory, or is missing a part."""


@dataclass(frozen=True)
class ImageSpec:
    """One image Dockyard knows how to build."""

    name: str
    repository: str
    context: Path
    dockerfile: str
    # Top-level entries of the context that are sent; None sends the whole directory.
    include: tuple[str, ...] | None
    description: str
    # Where build-ca.crt goes in the context: next to the Dockerfiles' directories.
    ca_path: str = CA_NAME

    @property
    def dockerfile_path(self) -> Path:
        return self.context / self.dockerfile


@dataclass
class BuildResult:
    spec: ImageSpec
    version: str
    image_id: str
    tags: list[str]
    size: int
    seconds: float
    log: list[str] = field(repr=False)

    @property
    def tag(self) -> str:
        return self.tags[0]


def available_images(images_dir: Path = IMAGES_DIR) -> dict[str, ImageSpec]:
    """The images this checkout can build, by short name."""
    specs = {
        "test": ImageSpec(
            "test", "dockyard/test", images_dir, "test/Dockerfile",
            ("test", "client", "common"),
            "Small single-user image used by Dockyard's tests.",
        ),
        "notebook": ImageSpec(
            "notebook", "dockyard/notebook", images_dir, "notebook/Dockerfile",
            ("notebook", "client", "client-r", "common", "lab"),
            "Curated image for notebooks and jobs: Python, R, Spark, Ray, JupyterLab.",
        ),
    }
    # The hub image packages the control plane, so its context is the whole repository.
    if (images_dir / "hub" / "Dockerfile").is_file():
        specs["hub"] = ImageSpec(
            "hub", "dockyard/hub", images_dir.parent, "images/hub/Dockerfile", None,
            "JupyterHub, the Dockyard web service and worker.",
            ca_path=f"{images_dir.name}/{CA_NAME}",
        )
    return {name: spec for name, spec in specs.items() if spec.dockerfile_path.is_file()}


def read_build_ca(path: Path | None = None) -> bytes:
    """The extra CA bundle for builds: ``path`` if given, else the host's bundle, else empty."""
    if path is not None:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise BuildError(f"cannot read the build CA bundle {path}: {exc.strerror}") from None
        if data.strip() and b"-----BEGIN CERTIFICATE-----" not in data:
            raise BuildError(f"{path} is not a PEM bundle (no BEGIN CERTIFICATE line)")
        return data
    try:
        return HOST_CA.read_bytes()
    except OSError:
        return b""


@dataclass(frozen=True)
class ContextFile:
    arcname: str
    path: Path | None  # None: generated content
    data: bytes | None = None


def collect_context(spec: ImageSpec, build_ca: bytes) -> list[ContextFile]:
    """The files sent for ``spec``, checked to stay inside its context directory."""
    root = spec.context.resolve()
    patterns = list(ALWAYS_EXCLUDED)
    ignore_file = root / ".dockerignore"
    if ignore_file.is_file():
        patterns += [
            line.strip() for line in ignore_file.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
    # The Dockerfile is always sent, as the docker CLI does.
    patterns.append(f"!{spec.dockerfile}")
    ca_name = spec.ca_path

    tops = None
    if spec.include is not None:
        for top in spec.include:
            rel_top = PurePosixPath(top)
            if rel_top.is_absolute() or ".." in rel_top.parts or len(rel_top.parts) != 1:
                raise ContextError(f"context entry '{top}' of {spec.name} is not a name in {root}")
        tops = set(spec.include)

    entries: list[ContextFile] = []
    # PatternMatcher.walk prunes excluded directories (.venv, node_modules) and never
    # descends into a symlinked directory.
    for rel in PatternMatcher(patterns).walk(str(root)):
        rel = PurePosixPath(rel).as_posix()
        if rel == ca_name or (tops is not None and rel.split("/", 1)[0] not in tops):
            continue
        path = root / rel
        if path.is_symlink():
            target = path.resolve()
            if not target.is_relative_to(root):
                raise ContextError(
                    f"{rel} is a symlink to {target}, outside the build context {root}"
                )
        entries.append(ContextFile(rel, path))
    if spec.dockerfile not in {e.arcname for e in entries}:
        raise ContextError(f"{spec.dockerfile_path} is missing")
    entries.append(ContextFile(ca_name, None, build_ca))
    return sorted(entries, key=lambda e: e.arcname)


def write_context(entries: list[ContextFile], build_args: Mapping[str, str]) -> tuple[
    io.BytesIO, str
]:
    """The context as an uncompressed tar, and a version derived from its content.

    The version covers names, types, the executable bit, contents, symlink targets and the
    build arguments; not timestamps or owners, so the same sources give the same version on
    any checkout.
    """
    digest = hashlib.sha256()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            if entry.path is None:
                data = entry.data or b""
                info = tarfile.TarInfo(entry.arcname)
                info.size = len(data)
                info.mode = 0o644
                # Fixed, so the generated file never looks changed to the builder's cache.
                info.mtime = GENERATED_MTIME
                tar.addfile(info, io.BytesIO(data))
                digest.update(b"F\0" + entry.arcname.encode() + b"\0")
                digest.update(hashlib.sha256(data).digest())
                continue
            info = tar.gettarinfo(str(entry.path), arcname=entry.arcname)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            executable = bool(info.mode & stat.S_IXUSR)
            if info.isfile():
                with entry.path.open("rb") as handle:
                    content = handle.read()
                tar.addfile(info, io.BytesIO(content))
                digest.update(f"F\0{entry.arcname}\0{int(executable)}\0".encode())
                digest.update(hashlib.sha256(content).digest())
            elif info.isdir():
                tar.addfile(info)
                digest.update(f"D\0{entry.arcname}\0".encode())
            elif info.issym():
                tar.addfile(info)
                digest.update(f"L\0{entry.arcname}\0{info.linkname}\0".encode())
            # Sockets, fifos and devices have no place in a context and are left out.
    for name in sorted(build_args):
        digest.update(f"A\0{name}\0{build_args[name]}\0".encode())
    buffer.seek(0)
    return buffer, digest.hexdigest()[:12]


def base_images(dockerfile: Path) -> list[str]:
    return _FROM.findall(dockerfile.read_text())


class ImageBuild:
    """One build of one image. Iterate ``lines()`` to run it; then read ``result``."""

    def __init__(
        self,
        name: str,
        *,
        build_ca: Path | None = None,
        build_args: Mapping[str, str] | None = None,
        nocache: bool = False,
        images_dir: Path = IMAGES_DIR,
        make_base: Path = MAKE_BASE,
        client_factory: Callable[[], docker.DockerClient] | None = None,
    ) -> None:
        specs = available_images(images_dir)
        if name not in specs:
            known = ", ".join(sorted(specs)) or "none"
            raise BuildError(f"unknown image '{name}' (this checkout can build: {known})")
        self.spec = specs[name]
        self.build_ca = build_ca
        self.build_args = dict(build_args or {})
        self.nocache = nocache
        self.make_base = make_base
        self._client_factory = client_factory or (
            lambda: docker.from_env(timeout=BUILD_TIMEOUT_SECONDS)
        )
        self.log: list[str] = []
        self.result: BuildResult | None = None

    def _emit(self, line: str) -> str:
        self.log.append(line)
        return line

    def lines(self) -> Iterator[str]:
        """Run the build, yielding each line of progress; raises BuildError on failure."""
        started = time.monotonic()
        try:
            entries = collect_context(self.spec, read_build_ca(self.build_ca))
            context, version = write_context(entries, self.build_args)
        except OSError as exc:
            raise ContextError(f"cannot read the build context: {exc}") from None
        try:
            client = self._client_factory()
        except (DockerException, OSError) as exc:
            raise BuildError(f"no Docker engine answered: {_first_line(exc)}") from None
        try:
            try:
                client.ping()
            except (DockerException, OSError) as exc:
                raise BuildError(f"no Docker engine answered: {_first_line(exc)}") from None
            yield from self._ensure_bases(client)
            size_mb = len(context.getvalue()) / 1e6
            yield self._emit(
                f"context: {len(entries)} entries, {size_mb:.1f} MB, version {version}"
            )
            image_id = yield from self._build(client, context, version)
            tags = [f"{self.spec.repository}:{version}", f"{self.spec.repository}:latest"]
            for tag in tags:
                repository, _, label = tag.rpartition(":")
                client.api.tag(image_id, repository, label, force=True)
            size = int(client.api.inspect_image(image_id)["Size"])
        except APIError as exc:
            raise BuildError(f"the Docker engine refused: {exc.explanation or exc}") from None
        except (DockerException, OSError) as exc:
            # requests' connection errors and timeouts are OSErrors.
            raise BuildError(f"lost the Docker engine: {_first_line(exc)}") from None
        finally:
            client.close()
        self.result = BuildResult(
            self.spec, version, image_id, tags, size, time.monotonic() - started, self.log
        )
        yield self._emit(f"tagged {', '.join(tags)} ({size / 1e6:.0f} MB)")

    def _ensure_bases(self, client: docker.DockerClient) -> Iterator[str]:
        if BASE_IMAGE not in base_images(self.spec.dockerfile_path):
            return
        try:
            client.images.get(BASE_IMAGE)
            return
        except ImageNotFound:
            pass
        yield self._emit(f"{BASE_IMAGE} is missing: creating it offline with {self.make_base}")
        process = subprocess.Popen(  # noqa: S603 - our own script, no shell
            ["bash", str(self.make_base)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )
        assert process.stdout is not None
        for raw in process.stdout:
            yield self._emit(raw.rstrip("\n"))
        if process.wait() != 0:
            raise BuildError(
                f"creating {BASE_IMAGE} failed ({self.make_base} exited {process.returncode})"
            )

    def _build(
        self, client: docker.DockerClient, context: io.BytesIO, version: str
    ) -> Iterator[str]:
        stream = client.api.build(
            fileobj=context,
            custom_context=True,
            dockerfile=self.spec.dockerfile,
            tag=f"{self.spec.repository}:{version}",
            buildargs=self.build_args or None,
            labels={
                "org.opencontainers.image.title": self.spec.repository,
                "org.opencontainers.image.version": version,
                "org.opencontainers.image.description": self.spec.description,
            },
            nocache=self.nocache,
            pull=False,
            rm=True,
            forcerm=True,
            decode=True,
        )
        output = BuildStream(stream)
        step = ""
        try:
            for line in output.lines():
                line = line.rstrip("\r")
                if line.startswith("Step "):
                    step = line.split(" : ", 1)[0]
                yield self._emit(line)
        except BuildFailed as exc:
            message = str(exc).splitlines()
            where = f" at {step}" if step else ""
            raise BuildError(
                f"building {self.spec.repository} failed{where}: "
                f"{message[-1] if message else 'unknown error'}"
            ) from None
        if not output.image_id:
            raise BuildError(f"building {self.spec.repository} ended without an image")
        return output.image_id


class BuildStream:
    """The engine's answer to a build (``docker build``'s stream of JSON chunks) read as
    lines of progress, without terminal colour codes; then the id of the image built.

    Engines name the image built in two ways: an ``{"aux": {"ID": ...}}`` chunk and, from
    the classic builder, a ``Successfully built ID`` line; a BuildKit-less engine sends
    both. Either is enough; the aux id, the full one, is preferred. A chunk with an error
    ends the build: ``lines()`` raises BuildFailed with the engine's message.
    """

    def __init__(self, chunks: Iterable[dict[str, Any]]) -> None:
        self.chunks = chunks
        self.image_id = ""

    def lines(self) -> Iterator[str]:
        reported = built = pending = ""
        for chunk in self.chunks:
            if "error" in chunk or "errorDetail" in chunk:
                if pending.strip():
                    yield pending
                detail = chunk.get("errorDetail") or {}
                message = detail.get("message") or chunk.get("error") or ""
                raise BuildFailed(_clean(str(message)).strip())
            aux = chunk.get("aux")
            if isinstance(aux, dict) and aux.get("ID"):
                reported = str(aux["ID"])
            if "stream" in chunk:
                pending += _clean(str(chunk["stream"]))
            elif "status" in chunk:
                progress = f" {chunk['progress']}" if chunk.get("progress") else ""
                pending += f"{chunk['status']}{progress}\n"
            # Output comes in pieces that need not end at a line's end.
            *complete, pending = pending.split("\n")
            for line in complete:
                built = _built_id(line) or built
                yield line
        if pending.strip():
            built = _built_id(pending) or built
            yield pending
        self.image_id = reported or built


def _built_id(line: str) -> str:
    found = _BUILT.match(line.strip())
    return found.group(1) if found else ""


def build_image(name: str, on_line: Callable[[str], None] | None = None, **options) -> BuildResult:
    """Build one image, passing each progress line to ``on_line``."""
    build = ImageBuild(name, **options)
    for line in build.lines():
        if on_line is not None:
            on_line(line)
    assert build.result is not None
    return build.result


def _clean(text: str) -> str:
    return _ANSI.sub("", text)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
