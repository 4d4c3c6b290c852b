"""What sets one installation of Dockyard apart from another on the same machine and the
same Docker engine: its internal ports and the prefix of the Docker objects it creates.

Two installations (a second ``make up`` with another ``DOCKYARD_HOME``, a test run beside a
developer's Dockyard) must neither fight over the hub's or the web service's ports nor share
notebook containers and home volumes: with one fixed prefix, the ``admin`` of the second
would get the first one's home directory. So the values are chosen once, the first time
Dockyard starts with a new home, and kept in ``HOME/installation.json``; a setting given
explicitly (environment or TOML) always wins. A home that already held an installation
before this file existed keeps the values it always had (nothing renamed, nothing lost).

Only ``dockyard up`` writes the file. The settings (``dockyard/settings/``) read it, so every
process of the installation (hub, web service, worker) sees the same values.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import zlib
from pathlib import Path
from typing import Any

INSTALLATION_FILE = "installation.json"

# The fixed values of the first releases: an installation made by them keeps them.
LEGACY_VALUES: dict[str, Any] = {
    "hub_port": 8081,
    "proxy_api_port": 8001,
    "web_port": 10101,
    "docker_name_prefix": "dockyard",
}
PORT_FIELDS = ("hub_port", "proxy_api_port", "web_port")
# Below Linux's ephemeral range (32768-60999), so that no outgoing connection holds one of
# these ports by chance when Dockyard starts again.
_PORT_RANGE = (20000, 32000)
# Files that only an installation which has started at least once has.
_EARLIER_INSTALLATION_MARKS = (
    "dockyard.sqlite",
    "jupyterhub.sqlite",
    "jupyterhub_cookie_secret",
    "admin-created",
)


def read_installation(home: Path) -> dict[str, Any]:
    """The values kept for the installation at ``home`` ({} when it has none yet)."""
    try:
        values = json.loads((home / INSTALLATION_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {key: values[key] for key in LEGACY_VALUES if key in values}


def ensure_installation(home: Path) -> dict[str, Any]:
    """Read the installation's values, choosing and keeping them on its first start."""
    kept = read_installation(home)
    if kept.keys() == LEGACY_VALUES.keys():
        return kept
    if any((home / mark).exists() for mark in _EARLIER_INSTALLATION_MARKS):
        values = dict(LEGACY_VALUES)
    else:
        values = {
            # "dy" and 6 hex digits: short enough for Docker's names, and one in 16 million
            # that two installations on one engine draw the same.
            "docker_name_prefix": f"dy{secrets.token_hex(3)}",
            **dict(zip(PORT_FIELDS, _free_ports_near(home, len(PORT_FIELDS)), strict=True)),
        }
    values.update(kept)
    path = home / INSTALLATION_FILE
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(values, indent=2) + "\n")
    os.replace(temporary, path)
    return values


def _free_ports_near(home: Path, count: int) -> list[int]:
    """``count`` ports free on the loopback now, starting from a place derived from the
    home's path, so that installations in different homes start far apart."""
    low, high = _PORT_RANGE
    span = high - low
    start = zlib.crc32(str(home).encode()) % span
    chosen: list[int] = []
    for step in range(span):
        port = low + (start + step) % span
        if _port_is_free(port):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise OSError(f"no {count} free ports between {low} and {high}")


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True
