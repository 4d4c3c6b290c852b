"""A single-node Docker Swarm for tests, shared safely between test processes.

Swarm mode is engine-wide, so tests that need it take an exclusive file lock for the
time they use it, turn swarm mode on only if it is off, and turn it off again only if
they turned it on: a swarm the machine already had is left as it was.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager

import docker

LOCK_FILE = "/tmp/dockyard-tests-swarm.lock"


def swarm_active(engine: docker.DockerClient) -> bool:
    return engine.info().get("Swarm", {}).get("LocalNodeState") == "active"


@contextmanager
def swarm_lock() -> Iterator[None]:
    """Exclusive use of the engine's swarm mode among test processes on this machine."""
    with open(LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextmanager
def single_node_swarm(engine: docker.DockerClient) -> Iterator[None]:
    with swarm_lock():
        created = False
        if not swarm_active(engine):
            engine.swarm.init(advertise_addr="127.0.0.1")
            created = True
        try:
            yield
        finally:
            if created:
                engine.swarm.leave(force=True)
                # Swarm mode adds docker_gwbridge; leave the engine as we found it.
                for network in engine.networks.list(names=["docker_gwbridge"]):
                    try:
                        network.remove()
                    except docker.errors.APIError:
                        pass
