"""Image catalog benchmark: from a build context to an image users can use, through
Dockyard's HTTP API against the raw Docker SDK, in the same run.

Both sides build the same context: a Dockerfile ``FROM`` the base image (default
``dockyard/notebook:latest``, the image teams build theirs on) with one ``RUN`` step that
prints ten lines over about a second. Every build gets a fresh nonce in that step, so no
build is served from the layer cache; both use the classic builder with ``pull=False``.

- Dockyard: an admin uploads the context as a user of the API does (multipart ``POST
  /services/dockyard/api/v1/images`` with a real JupyterHub API token, through the proxy,
  to the web service under gunicorn, all started by a real ``dockyard up``). Nothing
  wakes the worker: it claims the build on its own poll, at the shipped settings (the
  worker's ``DOCKYARD_WORKER_POLL_SECONDS`` default; image work gets a turn once a
  second), builds it while writing every line into the database, then inspects the built
  image (one offline run that reads its versions, packages and kernels). Only then is the
  image ``ready``, offered to users. The clock runs from the upload until ``GET
  .../images/ID/build-log`` (asked every 50 ms, as a script following the build does)
  says ``ready``.
- Baseline, the raw path a platform engineer takes to get a usable image: the Docker SDK
  builds the same context (``api.build``, its stream drained and checked for errors),
  then runs the image once to see that it starts (``containers.run(IMAGE, "true",
  remove=True)``, i.e. ``docker run --rm IMAGE true``, through the image's entrypoint).
  Dockyard's inspection does more than that one run (it reads the image's contents for
  the catalog and the diff); that extra work is in the ratio on purpose, since users wait
  for it.

One warm-up build per side first (not counted), then the timed rounds, the two sides
alternating which goes first. The figures are reported without a goal. Also reported,
to show where Dockyard's seconds go: the wait until the worker claimed the build (from
the image's "build started" event), the build alone against the raw build alone, and
the inspection against ``docker run --rm IMAGE true``.

    .venv/bin/python bench/images.py [--rounds 5] [--base dockyard/notebook:latest] [--quick]
"""

from __future__ import annotations

import argparse
import io
import os
import secrets
import shutil
import signal
import statistics
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.report import Results  # noqa: E402
from dockyard.settings import Settings  # noqa: E402
from tests.support.hubproc import RunningHub, start_hub  # noqa: E402

#: How often the Dockyard side asks whether the image is ready (the measurement's grain).
POLL_SECONDS = 0.05
READY_LIMIT = 600.0  # seconds a build may take before the benchmark gives up
REFERENCE_PREFIX = "dybench/images"


def context_tar(base: str, nonce: str) -> bytes:
    """A build context: a Dockerfile whose one step is new to the cache every time."""
    dockerfile = (
        f"FROM {base}\n"
        f"RUN for i in 1 2 3 4 5 6 7 8 9 10; do echo {nonce} line $i; sleep 0.1; done\n"
    ).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    return buffer.getvalue()


@dataclass
class RawTimes:
    build: float
    check_run: float

    @property
    def total(self) -> float:
        return self.build + self.check_run


@dataclass
class DockyardTimes:
    total: float  # upload until the API says ready
    upload: float  # the upload's request until its answer
    claim_wait: float  # upload answered until the worker's "build started" event
    inspection: float  # the inspection run, as the worker measured it

    @property
    def build(self) -> float:
        """Claimed until built (the inspection and the upload's answer left out)."""
        return self.total - self.upload - self.claim_wait - self.inspection


def raw_build(client: Any, base: str, reference: str) -> RawTimes:
    started = time.perf_counter()
    stream = client.api.build(fileobj=io.BytesIO(context_tar(base, secrets.token_hex(6))),
                              custom_context=True, tag=reference, rm=True, forcerm=True,
                              pull=False, decode=True)
    for chunk in stream:
        if "error" in chunk:
            raise RuntimeError(chunk["error"])
    built = time.perf_counter()
    client.containers.run(reference, "true", remove=True)
    return RawTimes(build=built - started, check_run=time.perf_counter() - built)


class DockyardApi:
    """An admin of a running Dockyard, talking to its API with a hub token."""

    def __init__(self, hub: RunningHub, token: str) -> None:
        self.hub = hub
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {token}"

    def build(self, base: str, reference: str) -> DockyardTimes:
        context = context_tar(base, secrets.token_hex(6))
        started_wall = time.time()
        started = time.perf_counter()
        created = self.http.post(
            self.hub.service("api/v1/images"),
            data={"reference": reference},
            files={"context": ("context.tar", context, "application/x-tar")},
            timeout=60,
        )
        if created.status_code != 201:
            raise RuntimeError(f"upload: {created.status_code} {created.text[:500]}")
        upload = time.perf_counter() - started
        answered_wall = started_wall + upload
        image_id = created.json()["id"]
        log_url = self.hub.service(f"api/v1/images/{image_id}/build-log")
        offset = 0
        while time.perf_counter() - started < READY_LIMIT:
            answer = self.http.get(log_url, params={"offset": offset}, timeout=30)
            answer.raise_for_status()
            progress = answer.json()
            offset = progress["next_offset"]
            if progress["status"] == "ready":
                total = time.perf_counter() - started
                break
            if progress["status"] == "failed":
                raise RuntimeError(f"build of {reference} failed: {self._detail(image_id)}")
            time.sleep(POLL_SECONDS)
        else:
            raise TimeoutError(f"{reference} was not ready after {READY_LIMIT:g} s")
        image = self.http.get(self.hub.service(f"api/v1/images/{image_id}"), timeout=30).json()
        claimed = next(datetime.fromisoformat(e["at"]) for e in image["events"]
                       if e["action"] == "build started")
        return DockyardTimes(
            total=total,
            upload=upload,
            claim_wait=max(0.0, claimed.timestamp() - answered_wall),
            inspection=float(image["contents"]["duration_seconds"]),
        )

    def _detail(self, image_id: int) -> str:
        image = self.http.get(self.hub.service(f"api/v1/images/{image_id}"), timeout=30).json()
        return str(image.get("status_detail"))


def p50(values: list[float]) -> float:
    return statistics.median(values)


def summary(values: list[float]) -> str:
    return f"p50 {p50(values):6.2f} s   max {max(values):6.2f} s"


def stop_on_sigterm() -> None:
    """``make bench`` stops a benchmark that overruns with SIGTERM: leave through the
    ``finally`` blocks, so that the hub and the images built go too."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed builds per side")
    parser.add_argument("--base", default="dockyard/notebook:latest",
                        help="the image the Dockerfile starts FROM")
    parser.add_argument("--quick", action="store_true", help="2 timed builds per side")
    args = parser.parse_args()
    if args.quick:
        args.rounds = min(args.rounds, 2)
    stop_on_sigterm()

    shipped_poll = Settings.model_fields["worker_poll_seconds"].default
    client = docker.from_env(timeout=600)
    home = Path(tempfile.mkdtemp(prefix="dockyard-bench-images-"))
    tag = secrets.token_hex(3)
    made: list[str] = []
    hub: RunningHub | None = None
    print(f"Image catalog benchmark: FROM {args.base}, {args.rounds} rounds, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    try:
        client.images.get(args.base)  # a missing base fails here, not inside a build
        hub = start_hub(home, DOCKYARD_WORKER_POLL_SECONDS=str(shipped_poll),
                        DOCKYARD_LOG_LEVEL="WARNING")
        admin = hub.login()
        api = DockyardApi(hub, hub.hub_token(admin, hub.admin))

        def build(kind: str, name: str) -> RawTimes | DockyardTimes:
            reference = f"{REFERENCE_PREFIX}-{kind}-{tag}:{name}"
            made.append(reference)
            if kind == "raw":
                return raw_build(client, args.base, reference)
            return api.build(args.base, reference)

        # Warm-up: the base image's layers in the page cache, both code paths imported
        # and connected, the worker's first turn at image work behind it.
        build("raw", "warm")
        build("dockyard", "warm")

        raw: list[RawTimes] = []
        ours: list[DockyardTimes] = []
        for round_ in range(args.rounds):
            for kind in ("raw", "dockyard") if round_ % 2 == 0 else ("dockyard", "raw"):
                times = build(kind, f"r{round_}")
                if isinstance(times, RawTimes):
                    raw.append(times)
                else:
                    ours.append(times)

        raw_total = [t.total for t in raw]
        our_total = [t.total for t in ours]
        print()
        print(f"raw: build + docker run --rm IMAGE true   {summary(raw_total)}")
        print(f"Dockyard: upload until ready             {summary(our_total)}")
        print(f"  ratio (p50): {p50(our_total) / p50(raw_total):.2f}x")
        print("where Dockyard's seconds go (p50):")
        parts = [
            ("upload (request until answered)", [t.upload for t in ours], None),
            ("answered until the worker claimed it", [t.claim_wait for t in ours], None),
            ("build", [t.build for t in ours], ("raw build", [t.build for t in raw])),
            ("inspection", [t.inspection for t in ours],
             ("docker run --rm IMAGE true", [t.check_run for t in raw])),
        ]
        for label, values, raw_part in parts:
            line = f"  {label:<38} {p50(values):6.2f} s"
            if raw_part:
                line += f"   {raw_part[0]}: {p50(raw_part[1]):6.2f} s"
            print(line)
        print(f"load average {os.getloadavg()[0]:.2f} at the end")

        results = Results("images")
        rounds = f"{args.rounds} builds per side, FROM {args.base}"
        results.add("context to usable image, p50", p50(our_total), unit="s",
                    baseline=p50(raw_total),
                    baseline_name="SDK build + docker run --rm IMAGE true",
                    note=f"Dockyard: upload through the API until ready (built and inspected); "
                         f"{rounds}")
        results.add("context to usable image, max", max(our_total), unit="s",
                    baseline=max(raw_total),
                    baseline_name="SDK build + docker run --rm IMAGE true", note=rounds)
        results.add("build alone, p50", p50([t.build for t in ours]), unit="s",
                    baseline=p50([t.build for t in raw]), baseline_name="SDK build",
                    note="Dockyard: from the worker's claim, inspection left out")
        results.add("inspection, p50", p50([t.inspection for t in ours]), unit="s",
                    baseline=p50([t.check_run for t in raw]),
                    baseline_name="docker run --rm IMAGE true",
                    note="the inspection also reads versions, packages and kernels")
        results.add("upload answered until the worker claimed the build, p50",
                    p50([t.claim_wait for t in ours]), unit="s",
                    note=f"the worker's own poll, shipped settings "
                         f"(poll {shipped_poll:g} s; queued image work looked for on each pass)")
        results.write()
        return 0
    finally:
        if hub is not None:
            hub.stop()
        for reference in made:
            try:
                client.images.remove(reference, force=True)
            except docker.errors.ImageNotFound:
                pass
        client.close()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
