"""Running the data clients inside the curated notebook image against the web app on
this machine's loopback (the container shares the host's network namespace and sees
the data root at the same path)."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

NOTEBOOK_IMAGE = "dockyard/notebook:latest"


def run_in_notebook_image(script: str, *, program: list[str], live_url: str, token: str,
                          data_dir: str, env: dict[str, str] | None = None,
                          timeout: float = 300) -> subprocess.CompletedProcess[str]:
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    name = f"dockyard-data-test-{uuid.uuid4().hex[:10]}"
    command = [
        "docker", "run", "--rm", "--name", name, "--network", "host",
        "--user", f"{os.getuid()}:{os.getgid()}", "-e", "HOME=/tmp",
        "-v", f"{data_dir}:{data_dir}",
        "-e", f"DOCKYARD_URL={live_url}", "-e", f"DOCKYARD_TOKEN={token}",
    ]
    for key, value in (env or {}).items():
        command += ["-e", f"{key}={value}"]
    command += [NOTEBOOK_IMAGE, *program, script]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
