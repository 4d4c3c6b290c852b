"""Image catalog benchmark, as ratios against a raw baseline in the same run.

1. Build: a small Dockerfile (a RUN step that prints lines for about a second, never
   cached) built through Dockyard (multipart upload to the API, checked and stored, the
   worker's runner claiming it and streaming every line into the database) against the
   Docker SDK building the same context and draining its stream. Dockyard's time is from
   the upload to the image being built, the inspection that follows left out (it is
   measured on its own below).
2. Inspection: Dockyard's one-off inspection run (versions, kernels, packages, no
   network, uid 1000) against ``docker run --rm IMAGE true`` of the same image.

    .venv/bin/python bench/images.py [--rounds 5] [--image dockyard/test:latest]
"""

from __future__ import annotations

import argparse
import io
import secrets
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BASE = "debian:bookworm-slim"


def context_tar(nonce: str) -> bytes:
    dockerfile = (
        f"FROM {BASE}\n"
        f"RUN for i in 1 2 3 4 5 6 7 8 9 10; do echo {nonce} line $i; sleep 0.1; done\n"
    ).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    return buffer.getvalue()


def raw_build(client: Any, reference: str) -> float:
    started = time.perf_counter()
    stream = client.api.build(fileobj=io.BytesIO(context_tar(secrets.token_hex(6))),
                              custom_context=True, tag=reference, rm=True, decode=True)
    for chunk in stream:
        if "error" in chunk:
            raise RuntimeError(chunk["error"])
    return time.perf_counter() - started


def dockyard_build(flask_client: Any, runner: Any, writes: Any, settings: Any,
                   reference: str) -> tuple[float, float]:
    """Seconds from upload to built (inspection excluded), and the inspection's seconds."""
    headers = {"Authorization": "token tok-admin"}
    started = time.perf_counter()
    created = flask_client.post(
        "/api/v1/images",
        data={"reference": reference,
              "context": (io.BytesIO(context_tar(secrets.token_hex(6))), "c.tar")},
        headers=headers, content_type="multipart/form-data",
    )
    assert created.status_code == 201, created.json
    runner.tick(writes, settings)
    assert runner.wait(300)
    total = time.perf_counter() - started
    image = flask_client.get(f"/api/v1/images/{created.json['id']}", headers=headers).json
    assert image["status"] == "ready", image["status_detail"]
    inspection = float(image["contents"]["duration_seconds"])
    return total - inspection, inspection


def summary(values: list[float]) -> str:
    return f"p50 {statistics.median(values):.2f} s, max {max(values):.2f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--image", default="dockyard/test:latest",
                        help="image whose inspection is measured")
    args = parser.parse_args()

    import docker

    from dockyard.images.builds import ImageWorkRunner
    from dockyard.migrate import upgrade
    from dockyard.settings import Settings
    from dockyard.web import create_app
    from dockyard.web.auth import User
    from spawner.images.inspect import inspect_image

    class Tokens:
        def user_for_token(self, token: str) -> User | None:
            return User("admin", admin=True) if token == "tok-admin" else None

    client = docker.from_env(timeout=600)
    home = Path(tempfile.mkdtemp(prefix="dockyard-bench-images-"))
    made: list[str] = []
    try:
        settings = Settings(home=home)
        upgrade(settings.db_url)
        app = create_app(settings, identity=Tokens())  # type: ignore[arg-type]
        flask_client = app.test_client()
        writes = app.extensions["dockyard.write_sessions"]
        runner = ImageWorkRunner()

        # Warm-up: the base image's layers in the page cache, both code paths imported.
        for kind in ("raw", "dockyard"):
            reference = f"dybench/warm-{kind}:{secrets.token_hex(3)}"
            made.append(reference)
            if kind == "raw":
                raw_build(client, reference)
            else:
                dockyard_build(flask_client, runner, writes, settings, reference)

        raw_times: list[float] = []
        dockyard_times: list[float] = []
        for round_ in range(args.rounds):
            for kind in ("raw", "dockyard") if round_ % 2 == 0 else ("dockyard", "raw"):
                reference = f"dybench/{kind}:{secrets.token_hex(3)}"
                made.append(reference)
                if kind == "raw":
                    raw_times.append(raw_build(client, reference))
                else:
                    seconds, _ = dockyard_build(flask_client, runner, writes, settings,
                                                reference)
                    dockyard_times.append(seconds)

        run_times: list[float] = []
        inspect_times: list[float] = []
        client.containers.run(args.image, "true", remove=True, entrypoint=[])
        for _ in range(args.rounds):
            started = time.perf_counter()
            client.containers.run(args.image, "true", remove=True, entrypoint=[])
            run_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            report = inspect_image(args.image)
            inspect_times.append(time.perf_counter() - started)
        build_ratio = statistics.median(dockyard_times) / statistics.median(raw_times)
        inspect_ratio = statistics.median(inspect_times) / statistics.median(run_times)
        print(f"build, raw Docker SDK:          {summary(raw_times)}")
        print(f"build, through Dockyard:        {summary(dockyard_times)}")
        print(f"  ratio (p50): {build_ratio:.2f}x")
        print(f"docker run --rm {args.image} true: {summary(run_times)}")
        print(f"inspection of {args.image}:       {summary(inspect_times)} "
              f"({len(report['pip_packages'])} Python packages, "
              f"{len(report['kernels'])} kernels)")
        print(f"  ratio (p50): {inspect_ratio:.2f}x")
    finally:
        for reference in made:
            try:
                client.images.remove(reference, force=True)
            except docker.errors.ImageNotFound:
                pass
        client.close()
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
