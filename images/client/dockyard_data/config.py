"""Where the client finds the Dockyard API, read from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ClientConfig:
    url: str
    token: str
    # The job run this process belongs to (set by Dockyard in job containers): batches
    # written and read are recorded against it.
    run_id: int | None = None
    # Where this machine sees the catalog's local data root, when it is mounted at
    # another path than on the Dockyard server (containers).
    data_root: str = ""
    # An S3-compatible endpoint as seen from here, when it differs from the server's.
    s3_endpoint_url: str = ""
    timeout: float = 120.0

    @classmethod
    def from_env(cls) -> ClientConfig:
        """Read ``DOCKYARD_URL`` and ``DOCKYARD_TOKEN`` (falling back to the notebook's
        own ``JUPYTERHUB_API_TOKEN``, which the hub grants access to Dockyard), plus
        ``DOCKYARD_RUN_ID``, ``DOCKYARD_DATA_ROOT`` and the S3 endpoint as seen from here
        (``DOCKYARD_S3_ENDPOINT_URL``, else ``AWS_ENDPOINT_URL_S3``)."""
        url = os.environ.get("DOCKYARD_URL", "").rstrip("/")
        token = os.environ.get("DOCKYARD_TOKEN") or os.environ.get("JUPYTERHUB_API_TOKEN", "")
        run = os.environ.get("DOCKYARD_RUN_ID", "").strip()
        return cls(
            url=url,
            token=token,
            run_id=int(run) if run.isdigit() else None,
            data_root=os.environ.get("DOCKYARD_DATA_ROOT", "").rstrip("/"),
            s3_endpoint_url=(os.environ.get("DOCKYARD_S3_ENDPOINT_URL")
                             or os.environ.get("AWS_ENDPOINT_URL_S3", "")),
        )
