"""Build contexts an admin may build from, confined to their own directory.

Two kinds: one of the project's image directories (``images/NAME``, built with
``images/`` as its context the way ``dockyard images build`` does), or an uploaded
Dockerfile and/or tar archive. An upload is checked member by member and rewritten into
a fresh tar with the Dockerfile at its root: no absolute paths, no ``..``, no member
reached through a symlink, no symlink or hard link pointing outside, no devices.
"""

from __future__ import annotations

import io
import os
import posixpath
import re
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

IMAGE_DIR_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
DOCKERFILE = "Dockerfile"
DOCKERFILE_MAX_BYTES = 1024 * 1024
# A compressed upload may legitimately expand; beyond this it is a tar bomb.
EXPANSION_FACTOR = 4


class ContextRejected(ValueError):
    """The build source is not acceptable; ``field`` names the form or API field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class ContextSummary:
    files: int
    bytes: int


def images_root() -> Path:
    """The project's images/ directory (next to dockyard/ in a checkout or an install)."""
    return Path(__file__).resolve().parent.parent.parent / "images"


def check_image_directory(name: str, choices: Iterable[str], root: Path | None = None) -> Path:
    """images/NAME, if NAME is one of the buildable images (``choices``, as the engine
    adapter lists them) and nothing in its directory leads outside images/ (a symlink
    escaping the context would let a build read the host). The builder checks the whole
    context again when it packs it."""
    root = (root or images_root()).resolve()
    offered = sorted(choices)
    if not IMAGE_DIR_NAME.match(name) or name not in offered:
        raise ContextRejected(
            "directory",
            f"'{name}' is not one of the image directories ({', '.join(offered) or 'none found'})",
        )
    directory = root / name
    if not directory.is_dir() or directory.is_symlink():
        raise ContextRejected("directory", f"images/{name} is not a directory here")
    for current, dirs, files in os.walk(directory):
        for entry in (*dirs, *files):
            path = Path(current) / entry
            if path.is_symlink() and not _inside(path.resolve(), root):
                relative = path.relative_to(root)
                raise ContextRejected(
                    "directory", f"images/{relative} is a symlink leading outside images/"
                )
    return directory


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def assemble_upload(
    destination: Path,
    *,
    dockerfile: IO[bytes] | None,
    archive: IO[bytes] | None,
    max_bytes: int,
) -> ContextSummary:
    """Check the uploaded parts and write one tar (Dockerfile at its root) to
    ``destination``. Raises ContextRejected naming the field and the offending member."""
    if dockerfile is None and archive is None:
        raise ContextRejected(
            "dockerfile", "send a Dockerfile, a context archive (tar or tar.gz), or both"
        )
    dockerfile_bytes: bytes | None = None
    if dockerfile is not None:
        dockerfile_bytes = dockerfile.read(DOCKERFILE_MAX_BYTES + 1)
        if len(dockerfile_bytes) > DOCKERFILE_MAX_BYTES:
            raise ContextRejected("dockerfile", "the Dockerfile is larger than 1 MB")
        if not dockerfile_bytes.strip():
            raise ContextRejected("dockerfile", "the Dockerfile is empty")
        try:
            dockerfile_bytes.decode("utf-8")
        except UnicodeDecodeError:
            raise ContextRejected("dockerfile", "the Dockerfile is not UTF-8 text") from None

    destination.parent.mkdir(parents=True, exist_ok=True)
    files = 0
    total = 0
    has_dockerfile = False
    partial = destination.with_suffix(".partial")
    try:
        with tarfile.open(partial, "w") as out:
            if archive is not None:
                files, total, has_dockerfile = _copy_checked(
                    archive, out, skip_dockerfile=dockerfile_bytes is not None,
                    max_bytes=max_bytes * EXPANSION_FACTOR,
                )
            if dockerfile_bytes is not None:
                info = tarfile.TarInfo(DOCKERFILE)
                info.size = len(dockerfile_bytes)
                info.mode = 0o644
                out.addfile(info, io.BytesIO(dockerfile_bytes))
                files += 1
                total += info.size
                has_dockerfile = True
        if not has_dockerfile:
            raise ContextRejected(
                "context", "the archive has no Dockerfile at its top level; add one or "
                "upload the Dockerfile separately"
            )
        partial.replace(destination)
    finally:
        partial.unlink(missing_ok=True)
    return ContextSummary(files=files, bytes=total)


def _copy_checked(
    archive: IO[bytes], out: tarfile.TarFile, *, skip_dockerfile: bool, max_bytes: int
) -> tuple[int, int, bool]:
    try:
        source = tarfile.open(fileobj=archive, mode="r:*")
    except (tarfile.TarError, EOFError, OSError):
        raise ContextRejected(
            "context", "the context is not a tar archive (tar, tar.gz, tar.bz2 or tar.xz)"
        ) from None
    files = 0
    total = 0
    has_dockerfile = False
    links: set[str] = set()
    seen: set[str] = set()
    with source:
        try:
            for member in source:
                name = _member_name(member.name)
                if name is None:  # the archive's own root, "./"
                    continue
                _check_member(member, name, links)
                if name == DOCKERFILE and skip_dockerfile:
                    continue
                if name in seen:
                    raise ContextRejected("context", f"'{member.name}' appears twice")
                seen.add(name)
                total += member.size if member.isfile() else 0
                if total > max_bytes:
                    raise ContextRejected(
                        "context", f"the archive expands to more than {max_bytes // 2**20} MB"
                    )
                clean = _clean_info(member, name)
                if member.isfile():
                    extracted = source.extractfile(member)
                    out.addfile(clean, extracted)
                    files += 1
                else:
                    out.addfile(clean)
                if member.issym() or member.islnk():
                    links.add(name)
                has_dockerfile = has_dockerfile or (name == DOCKERFILE and member.isfile())
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ContextRejected("context", f"the archive is damaged ({exc})") from None
    return files, total, has_dockerfile


def _member_name(raw: str) -> str | None:
    name = raw
    while name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/")
    if name in ("", "."):
        return None
    return name


def _check_member(member: tarfile.TarInfo, name: str, links: set[str]) -> None:
    shown = member.name
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise ContextRejected("context", f"'{shown}' is an absolute path")
    parts = name.split("/")
    if ".." in parts or "" in parts or "\\" in name:
        raise ContextRejected("context", f"'{shown}' leads outside the context")
    for depth in range(1, len(parts)):
        if "/".join(parts[:depth]) in links:
            raise ContextRejected(
                "context", f"'{shown}' is reached through a link; links may only be leaves"
            )
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise ContextRejected(
            "context", f"'{shown}' is a device, fifo or other special file; not allowed"
        )
    if member.issym():
        target = member.linkname
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
        if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
            raise ContextRejected("context", f"symlink '{shown}' -> '{target}' leads outside")
    if member.islnk():
        target = _member_name(member.linkname) or ""
        if not target or target.startswith("/") or ".." in target.split("/"):
            raise ContextRejected(
                "context", f"hard link '{shown}' -> '{member.linkname}' leads outside"
            )


def _clean_info(member: tarfile.TarInfo, name: str) -> tarfile.TarInfo:
    """The member as we store it: our name, no owner, no setuid/setgid bits."""
    info = tarfile.TarInfo(name)
    info.type = member.type
    info.size = member.size if member.isfile() else 0
    info.mode = member.mode & 0o777
    info.mtime = member.mtime
    if member.issym():
        info.linkname = member.linkname
    elif member.islnk():
        info.linkname = _member_name(member.linkname) or ""
    return info
