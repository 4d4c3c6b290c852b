"""What the test suite started and did not stop: processes, containers, networks, volumes
and swarm services still there at its end.

Every fixture must stop what it started, whatever the outcome. The suite checks that at its
end (``tests/conftest.py``) and fails when anything is left; ``.ci/run`` checks again after
the suite.

Processes: the pytest process makes itself a *child subreaper* (Linux), so a process a test
started stays its descendant even after its parent died (JupyterHub starts the proxy and
its services in sessions of their own; a killed hub leaves them to whoever reaps orphans).
Engine objects: those created after the suite started, compared with what was there then.
``.ci/run`` does the same from outside: ``snapshot FILE`` before the suite, ``check FILE``
after it.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

_PR_SET_CHILD_SUBREAPER = 36
# What Dockyard's processes look like, for the look after the suite has ended.
_OUR_COMMANDS = (
    "configurable-http-proxy",
    "jupyterhub",
    "dockyard.cli",
    "jupyterhub_idle_culler",
    "jupyterhub-singleuser",
    "moto.server",
    "--remote-debugging-pipe",  # Chromium started by Playwright
)


def become_subreaper() -> bool:
    """Orphaned descendants of this process are re-parented to it (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def describe(process: psutil.Process) -> str:
    try:
        command = " ".join(process.cmdline())[:160]
    except psutil.Error:
        command = process.name()
    return f"pid {process.pid}: {command}"


# Descendants that are not a test's to stop: the machine's Docker engine, which the
# engine-restart test starts again and which must go on serving, and Python's own
# multiprocessing helper, which ends with the suite's process.
_NOT_LEFTOVERS = ("dockerd", "containerd")


def _is_machine_service(process: psutil.Process) -> bool:
    try:
        command = process.cmdline()
    except psutil.Error:
        return False
    return bool(command) and (Path(command[0]).name in _NOT_LEFTOVERS
                              or "multiprocessing.resource_tracker" in " ".join(command))


def living_descendants(grace: float = 3.0) -> list[psutil.Process]:
    """This process's descendants that are alive after ``grace`` seconds (a process
    stopped by the last teardown may still be exiting), but the machine's services;
    zombies are reaped."""
    deadline = time.monotonic() + grace
    while True:
        alive = []
        for child in psutil.Process().children(recursive=True):
            try:
                if child.status() == psutil.STATUS_ZOMBIE:
                    if child.ppid() == os.getpid():
                        os.waitpid(child.pid, os.WNOHANG)
                    continue
            except (psutil.Error, ChildProcessError):
                continue
            if not _is_machine_service(child):
                alive.append(child)
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.2)


def our_processes() -> list[psutil.Process]:
    """Processes on this machine that look like Dockyard's or the suite's (for .ci/run,
    after the suite's own process has ended)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if process.pid != os.getpid() and any(part in command for part in _OUR_COMMANDS):
            found.append(process)
    return found


def other_test_runs() -> list[psutil.Process]:
    """Other pytest processes on this machine (they share the Docker engine with us)."""
    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    found = []
    for process in psutil.process_iter(["cmdline"]):
        command = process.info["cmdline"] or []
        if process.pid not in mine and any(part.endswith("pytest") for part in command[:2]):
            found.append(process)
    return found


@dataclass
class EngineSnapshot:
    """The engine's objects when the suite started."""

    containers: set[str] = field(default_factory=set)
    networks: set[str] = field(default_factory=set)
    volumes: set[str] = field(default_factory=set)
    services: set[str] = field(default_factory=set)


def engine_snapshot(engine: object) -> EngineSnapshot:
    return EngineSnapshot(*_engine_objects(engine))


def _engine_objects(engine: object) -> tuple[set[str], set[str], set[str], set[str]]:
    # The list endpoints only: inspecting each object would race with tests that are
    # removing theirs at this moment.
    api = engine.api  # type: ignore[attr-defined]
    containers = {name.lstrip("/") for c in api.containers(all=True) for name in c["Names"][:1]}
    networks = {n["Name"] for n in api.networks()}
    volumes = {v["Name"] for v in api.volumes().get("Volumes") or []}
    services: set[str] = set()
    if api.info().get("Swarm", {}).get("LocalNodeState") == "active":
        services = {s["Spec"]["Name"] for s in api.services()}
    return containers, networks, volumes, services


def new_engine_objects(engine: object, before: EngineSnapshot) -> list[str]:
    """Engine objects that appeared since ``before`` and are still there."""
    containers, networks, volumes, services = _engine_objects(engine)
    # Swarm mode adds docker_gwbridge and ingress; a test that left swarm mode on is caught
    # by its services, and the engine-wide networks of swarm mode are not the suite's.
    networks -= {"docker_gwbridge", "ingress"}
    return ([f"container {name}" for name in sorted(containers - before.containers)]
            + [f"network {name}" for name in sorted(networks - before.networks)]
            + [f"volume {name}" for name in sorted(volumes - before.volumes)]
            + [f"swarm service {name}" for name in sorted(services - before.services)])


def _machine_state() -> dict[str, list[str]]:
    """Dockyard-like processes (pid and start time) and every engine object, by name."""
    state: dict[str, list[str]] = {"processes": [
        f"{p.pid}@{p.create_time():.2f} {describe(p)}" for p in our_processes()]}
    try:
        import docker

        engine = docker.from_env(timeout=10)
        for kind, names in zip(("container", "network", "volume", "swarm service"),
                               _engine_objects(engine), strict=True):
            state[kind] = sorted(names)
        engine.close()
    except Exception as exc:  # no engine on this machine: nothing of it can be left
        print(f"(Docker engine not checked: {exc})")
    return state


def main(argv: list[str]) -> int:
    """For .ci/run: ``snapshot FILE`` before the suite, ``check FILE`` after it: what is
    running or on the engine now and was not before is what the suite left."""
    import json

    command, path = argv
    if command == "snapshot":
        Path(path).write_text(json.dumps(_machine_state()))
        return 0
    before = json.loads(Path(path).read_text())
    leftovers = []
    for kind, now in _machine_state().items():
        earlier = set(before.get(kind, []))
        if kind == "network":
            earlier |= {"docker_gwbridge", "ingress"}  # swarm mode's own
        leftovers += [f"{kind} {name}" for name in now if name not in earlier]
    for line in leftovers:
        print(f"left running: {line}")
    print(f"{len(leftovers)} leftover(s) of the test suite")
    return 1 if leftovers else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
