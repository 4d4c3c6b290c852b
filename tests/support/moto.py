"""moto in server mode: the stand-in for AWS (S3, ECS, CloudWatch Logs) that clients
outside botocore, such as pyarrow's C++ S3 client, can reach too."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from tests.support.ports import free_ports


@contextmanager
def moto_server(log_dir: Path) -> Iterator[str]:
    """Run ``python -m moto.server`` on a free loopback port; yield its endpoint."""
    (port,) = free_ports(1)
    log = log_dir / "moto.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out, stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(endpoint + "/moto-api/", timeout=1)
            break
        except requests.RequestException:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"moto server did not start:\n{log.read_text()}") from None
            time.sleep(0.2)
    try:
        yield endpoint
    finally:
        process.terminate()
        process.wait(10)
