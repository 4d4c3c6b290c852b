"""Keep ``dockyard up``'s promise about Ctrl-C: everything it started stops, at once.

JupyterHub starts the proxy and each managed service (web, worker, idle culler) in a
session of its own, and on shutdown stops the services one after the other, each with
SIGINT and then up to 10 + 5 + 5 seconds before SIGKILL. So a slow service makes Ctrl-C
take half a minute, and a hub that is killed leaves its proxy and services running. The
supervisor here stops the hub and its services together, kills whatever is left after
``HUB_GRACE_SECONDS`` (the whole stop stays under 3 seconds), and cleans up after a hub
that died. Notebook servers are left running, as documented: the hub adopts them again at
its next start. So are local-process jobs, which run in sessions of their own so that they
outlive a worker restart, as job containers do.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

# The hub's own clean shutdown gets this long before anything is killed; with what comes
# after, a person waits under 3 seconds after Ctrl-C, even on a busy machine.
HUB_GRACE_SECONDS = 1.2
_LOOK_EVERY_SECONDS = 1.0
_PR_SET_PDEATHSIG = 1
# Ctrl-C, `kill`, and a terminal or ssh session that closes.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _runs(process: psutil.Process, program: str) -> bool:
    try:
        return any(program in part for part in process.cmdline())
    except psutil.Error:
        return False  # gone, or a zombie: no longer anything's


def is_notebook_server(process: psutil.Process) -> bool:
    """Local-process notebook servers outlive the hub, as notebook containers do."""
    return _runs(process, "jupyterhub-singleuser")


def is_proxy(process: psutil.Process) -> bool:
    return _runs(process, "configurable-http-proxy")


def managed_processes(root_pid: int) -> list[psutil.Process]:
    """The hub's proxy and services with the processes of their own sessions (gunicorn's
    workers): not notebook servers, and not what a service started in a session of its
    own (local-process jobs, which outlive a worker restart)."""
    try:
        children = psutil.Process(root_pid).children()
    except psutil.Error:
        return []
    found: list[psutil.Process] = []
    for child in children:
        if is_notebook_server(child):
            continue
        found.append(child)
        try:
            session = os.getsid(child.pid)
            found.extend(d for d in child.children(recursive=True)
                         if os.getsid(d.pid) == session)
        except (psutil.Error, ProcessLookupError):
            pass
    return found


def die_with_parent() -> None:
    """For ``preexec_fn``: SIGTERM when the process that started us dies (Linux), so a
    ``dockyard up`` that is killed outright still takes its hub, and so its services and
    proxy, down with it."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def signal_all(processes: Iterable[psutil.Process], signum: int) -> None:
    for process in processes:
        try:
            process.send_signal(signum)
        except psutil.Error:
            pass  # gone already


def kill(processes: Iterable[psutil.Process]) -> None:
    # SIGKILL cannot be ignored, so there is nothing to wait for: a killed process that no
    # parent reaps stays a zombie, which holds no port, file or memory.
    signal_all(processes, signal.SIGKILL)


def stop_proxy_of(pid_file: Path) -> None:
    """A proxy whose hub died keeps running in its own session: stop it."""
    try:
        pid = int(pid_file.read_text().strip())
        proxy = psutil.Process(pid)
        if not is_proxy(proxy):
            return  # the pid was reused by something else
    except (OSError, ValueError, psutil.Error):
        return
    proxy.terminate()
    _gone, alive = psutil.wait_procs([proxy], timeout=1.0)
    kill(alive)
    pid_file.unlink(missing_ok=True)


def supervise(hub: subprocess.Popen[bytes], *, proxy_pid_file: Path) -> int:
    """Wait for the hub; on SIGINT, SIGTERM or SIGHUP stop it and its services at once
    (a second signal kills at once). Returns the exit code."""
    stop_asked_at: float | None = None
    kill_now = False

    def request_stop(_signum: int, _frame: object) -> None:
        nonlocal stop_asked_at, kill_now
        if stop_asked_at is not None:
            kill_now = True
            return
        stop_asked_at = time.monotonic()
        # Services first, all at once, with the signal the hub would send them one by one;
        # the hub then finds them gone and only has the proxy left to stop. (Not the proxy:
        # the hub would see it die and start a new one.)
        services = [p for p in managed_processes(hub.pid) if not is_proxy(p)]
        signal_all(services, signal.SIGINT)
        try:
            hub.terminate()
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, request_stop) for sig in _STOP_SIGNALS}
    managed: list[psutil.Process] = []
    looked_at = 0.0
    try:
        while True:
            try:
                code = hub.wait(timeout=0.05)
                break
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if now - looked_at >= _LOOK_EVERY_SECONDS and stop_asked_at is None:
                managed, looked_at = managed_processes(hub.pid), now
            if kill_now or (stop_asked_at is not None
                            and now - stop_asked_at >= HUB_GRACE_SECONDS):
                managed = managed_processes(hub.pid) or managed
                kill(managed)
                hub.kill()
    finally:
        if hub.poll() is None:  # only when this loop itself failed
            kill(managed_processes(hub.pid) or managed)
            hub.kill()
            hub.wait()
        # Whatever the hub left (after a crash or a kill) is overdue: its services, its proxy.
        kill(p for p in managed if p.is_running() and not is_notebook_server(p))
        stop_proxy_of(proxy_pid_file)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stop_asked_at is not None:
        return 0
    return code
