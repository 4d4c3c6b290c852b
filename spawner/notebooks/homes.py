"""Reading one file from a user's home, where notebook servers keep it: a Docker volume
(named as the spawner names it) or a directory (local-process notebooks).

A file in a volume is read through the engine's archive API from a container that is
created but never started, with only that user's home mounted read-only: nothing runs, and
no path can reach past the volume into another user's files.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

from spawner.notebooks.docker import DockyardDockerSpawner

HOME_DIR = "/home/jovyan"


def home_volume_name(prefix: str, username: str) -> str:
    """The name DockyardDockerSpawner gives ``username``'s home volume."""
    template = DockyardDockerSpawner.home_volume.default_value
    escaped = DockyardDockerSpawner._escape(username)  # the spawner's own escaping
    return template.format(dockyard=prefix, username=escaped)


class VolumeHomes:
    """Homes in Docker volumes on this machine's engine."""

    def __init__(self, prefix: str, image: str) -> None:
        self.prefix = prefix
        #: Any image on the engine: the helper container is created from it, never started.
        self.image = image

    def read(self, username: str, relative_path: str, max_bytes: int) -> bytes:
        from spawner.engine import docker_client

        client = docker_client(timeout=30)
        try:
            return read_from_volume(client, home_volume_name(self.prefix, username),
                                    relative_path, max_bytes, self.image)
        finally:
            client.close()


class DirectoryHomes:
    """Homes as directories ``<root>/<username>`` (local-process notebooks)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def read(self, username: str, relative_path: str, max_bytes: int) -> bytes:
        return read_from_directory(self.root / username, relative_path, max_bytes)


def read_from_volume(client: Any, volume: str, relative_path: str, max_bytes: int,
                     image: str) -> bytes:
    """The first ``max_bytes`` of ``relative_path`` in ``volume``; FileNotFoundError (with a
    sentence) when the volume or the file is missing or is not a regular file.

    ``client`` is a docker SDK DockerClient; ``image`` any image present on the engine (it
    is never started)."""
    import docker.errors

    try:
        client.volumes.get(volume)
    except docker.errors.NotFound:
        raise FileNotFoundError("you have no home yet: start a notebook server once, or "
                                "upload the notebook instead") from None
    container = client.containers.create(
        image, command=["true"], network_disabled=True, user="65534:65534",
        volumes={volume: {"bind": HOME_DIR, "mode": "ro"}},
        labels={"dockyard.role": "home-reader"},
    )
    try:
        try:
            stream, stat = container.get_archive(f"{HOME_DIR}/{relative_path}")
        except docker.errors.NotFound:
            raise FileNotFoundError(f"there is no {relative_path} in your home") from None
        mode = int(stat.get("mode", 0))
        # Docker reports Go's FileMode: directories and links set high bits.
        if mode & (1 << 31):
            raise FileNotFoundError(f"{relative_path} is a directory, not a notebook")
        if mode & (1 << 27):
            raise FileNotFoundError(f"{relative_path} is a link; give the file itself")
        archive = io.BytesIO()
        for chunk in stream:
            archive.write(chunk)
            # The tar adds headers and padding; a little beyond the limit is enough.
            if archive.tell() > max_bytes + 64 * 1024:
                break
        archive.seek(0)
        with tarfile.open(fileobj=archive, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    raise FileNotFoundError(f"{relative_path} is not a regular file")
                handle = tar.extractfile(member)
                assert handle is not None
                return handle.read(max_bytes)
        raise FileNotFoundError(f"there is no {relative_path} in your home")
    finally:
        container.remove(force=True)


def read_from_directory(home: Path, relative_path: str, max_bytes: int) -> bytes:
    """The first ``max_bytes`` of a file in a home directory, never outside it (links
    that lead out are refused)."""
    root = home.resolve()
    target = (root / relative_path).resolve()
    if not target.is_relative_to(root):
        raise FileNotFoundError(f"{relative_path} leads outside your home")
    if not target.is_file():
        raise FileNotFoundError(f"there is no {relative_path} in your home")
    with target.open("rb") as handle:
        return handle.read(max_bytes)
