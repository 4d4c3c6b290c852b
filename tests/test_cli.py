"""`dockyard` on the command line: help, bad settings, and the runtime it chooses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.hubproc import hub_environment, running_up


def dockyard(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dockyard.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_help_lists_the_commands(tmp_path: Path) -> None:
    result = dockyard("--help", env=hub_environment(tmp_path))
    assert result.returncode == 0
    for command in ("up", "web", "worker", "db", "settings"):
        assert f"  {command} " in result.stdout


def test_db_upgrade_creates_the_database(tmp_path: Path) -> None:
    env = hub_environment(tmp_path)
    result = dockyard("db", "upgrade", env=env)
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout
    assert (tmp_path / "dockyard.sqlite").exists()


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"DOCKYARD_PORT": "70000"}, "DOCKYARD_PORT"),
        # A file where the home should be: even root cannot make a directory under it.
        ({"DOCKYARD_HOME": "/etc/hostname/dockyard"}, "DOCKYARD_HOME"),
        ({"DOCKYARD_DATABASE_URL": "oracle://scott@tiger/db"}, "DOCKYARD_DATABASE_URL"),
        (
            {"DOCKYARD_DATABASE_URL": "postgresql+psycopg://nobody:x@127.0.0.1:1/none"},
            "DOCKYARD_DATABASE_URL",
        ),
        ({"DOCKYARD_HOME": "/proc/dockyard-cannot-live-here"}, "DOCKYARD_HOME"),
    ],
)
def test_up_with_bad_settings_exits_2_with_one_line(
    tmp_path: Path, overrides: dict[str, str], named: str
) -> None:
    env = hub_environment(tmp_path, **overrides)
    result = dockyard("up", env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"dockyard: {named}:")
    assert "Traceback" not in result.stderr + result.stdout


def test_up_refuses_a_port_in_use(tmp_path: Path) -> None:
    import socket

    env = hub_environment(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", int(env["DOCKYARD_PORT"])))
        busy.listen()
        result = dockyard("up", env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("dockyard: DOCKYARD_PORT:")


def test_up_without_docker_falls_back_to_local_processes_and_says_so(tmp_path: Path) -> None:
    env = hub_environment(tmp_path, DOCKER_HOST=f"unix://{tmp_path}/no-docker.sock")
    env.pop("DOCKYARD_SPAWNER")
    env.pop("DOCKYARD_JOB_BACKEND")
    with running_up(env, tmp_path / "up.log") as up:
        up.wait_for_line("Press Ctrl-C")
        seen = up.output().splitlines(keepends=True)
    output = "".join(seen)
    assert "Notebooks: local processes" in output
    assert "Jobs: local processes" in output
    assert "no Docker engine answered" in output
    assert "First admin: admin" in output
