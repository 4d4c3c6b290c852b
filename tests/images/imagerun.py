"""Running one-off containers of Dockyard's images for the image tests."""

from __future__ import annotations

import hashlib
import ssl
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.requirements import missing

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = "dockyard/notebook:latest"
TEST_IMAGE = "dockyard/test:latest"


@dataclass
class Ran:
    code: int
    output: str


class ImageRunner:
    """Runs one-off containers of an image and returns exit code and combined output."""

    def __init__(self, reference: str) -> None:
        import docker

        self.reference = reference
        self.client = docker.from_env(timeout=600)

    def run(self, command: list[str] | str, *, timeout: int = 300, user: str | None = None,
            environment: dict[str, str] | None = None,
            volumes: dict[str, dict[str, str]] | None = None,
            network_mode: str | None = None) -> Ran:
        if isinstance(command, str):
            command = ["bash", "-c", command]
        container = self.client.containers.run(
            self.reference, command, detach=True, user=user, environment=environment,
            volumes=volumes, network_mode=network_mode,
            name=f"dockyard-imagetest-{uuid.uuid4().hex[:10]}",
            # Ray puts its object store in /dev/shm; Docker's default 64 MB only warns.
            shm_size="256m",
        )
        try:
            status = container.wait(timeout=timeout)
            output = container.logs(stdout=True, stderr=True).decode(errors="replace")
        finally:
            container.remove(force=True)
        return Ran(int(status["StatusCode"]), output)

    def ok(self, command: list[str] | str, **kwargs) -> str:
        ran = self.run(command, **kwargs)
        assert ran.code == 0, f"{command!r} exited {ran.code}:\n{ran.output[-4000:]}"
        return ran.output

    def inspect(self) -> dict:
        return self.client.api.inspect_image(self.reference)

    def close(self) -> None:
        self.client.close()


def r_client_package() -> str:
    """Name of the R client package in images/client-r, or skip (fail under CI)."""
    description = REPO / "images" / "client-r" / "DESCRIPTION"
    if not description.is_file():
        missing("The R data client", f"{description} does not exist")
    for line in description.read_text().splitlines():
        if line.startswith("Package:"):
            return line.split(":", 1)[1].strip()
    pytest.fail(f"{description} has no Package: field")



def pem_fingerprints(bundle: bytes) -> set[str]:
    """SHA-256 fingerprints (keytool's AA:BB:... form) of the certificates in a PEM bundle."""
    text = bundle.decode("ascii", errors="ignore")
    found = set()
    for block in text.split("-----BEGIN CERTIFICATE-----")[1:]:
        body = block.split("-----END CERTIFICATE-----")[0]
        der = ssl.PEM_cert_to_DER_cert(
            "-----BEGIN CERTIFICATE-----\n" + body.strip() + "\n-----END CERTIFICATE-----\n"
        )
        digest = hashlib.sha256(der).hexdigest().upper()
        found.add(":".join(digest[i:i + 2] for i in range(0, len(digest), 2)))
    return found


def build_ca_bundle() -> bytes:
    """The CA bundle image builds were given (DOCKYARD_BUILD_CA, else the host's)."""
    from dockyard.settings import load_settings
    from spawner.images.build import read_build_ca

    return read_build_ca(load_settings().build_ca)


# Prints the fingerprints of every certificate the image's system bundle trusts.
SYSTEM_FINGERPRINTS = r"""
import hashlib, ssl
text = open("/etc/ssl/certs/ca-certificates.crt").read()
for block in text.split("-----BEGIN CERTIFICATE-----")[1:]:
    body = block.split("-----END CERTIFICATE-----")[0].strip()
    pem = "-----BEGIN CERTIFICATE-----\n" + body + "\n-----END CERTIFICATE-----\n"
    d = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest().upper()
    print("FP", ":".join(d[i:i + 2] for i in range(0, len(d), 2)))
"""
