"""Where the client finds the Dockyard API, read once from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ClientConfig:
    url: str
    token: str

    @classmethod
    def from_env(cls) -> ClientConfig:
        """Read ``DOCKYARD_URL`` and ``DOCKYARD_TOKEN`` (falling back to the notebook's
        own ``JUPYTERHUB_API_TOKEN``, which the hub grants access to Dockyard)."""
        url = os.environ.get("DOCKYARD_URL", "").rstrip("/")
        token = os.environ.get("DOCKYARD_TOKEN") or os.environ.get("JUPYTERHUB_API_TOKEN", "")
        return cls(url=url, token=token)
