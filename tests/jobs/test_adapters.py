"""The pure parts, tested without an engine or a database: translations between runs and
containers, the forward-only rules, outcome decisions, log reading, limits, tokens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from dockyard.jobs.run_logs import LogFile, complete_utf8_length, read_log
from dockyard.jobs.schemas import DefinitionIn, JobLimits, RunIn
from dockyard.jobs.states import RANK, deadline_of, may_advance, outcome
from dockyard.jobs.tokens import hash_token, run_id_of, run_token
from dockyard.models import RunState
from dockyard.settings import Settings
from dockyard.web.jobs import duration_chart
from dockyard.worker.context import job_namespace
from dockyard.worker.lifecycle import build_spec
from spawner.jobs.base import EngineState, JobSpec, JobStatus, command_argv
from spawner.jobs.docker import (
    DEFAULT_JOB_USER,
    container_name,
    container_options,
    job_user,
    parse_docker_time,
    status_from_inspect,
)

T0 = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)


def spec(**overrides: object) -> JobSpec:
    values: dict[str, object] = dict(run_id=42, attempt=2, owner="alice", image="img:1",
                                     argv=("python", "train.py"), cpu=1.5, memory_mb=512,
                                     env={"A": "1"})
    values.update(overrides)
    return JobSpec(**values)  # type: ignore[arg-type]


# -- commands ----------------------------------------------------------------------------------
def test_argv_list_is_exec_form_and_string_goes_to_the_containers_shell() -> None:
    assert command_argv(["python", "-c", "print(1)"]) == ("python", "-c", "print(1)")
    assert command_argv("echo $HOME && ls | wc -l") == ("/bin/sh", "-c", "echo $HOME && ls | wc -l")
    # Shell metacharacters in an argv list stay literal arguments.
    assert command_argv(["echo", "$(rm -rf /)"]) == ("echo", "$(rm -rf /)")
    with pytest.raises(ValueError):
        command_argv([])
    with pytest.raises(ValueError):
        command_argv(["ok", 3])


# -- run → container -------------------------------------------------------------------------
def test_container_options_carry_limits_hardening_and_labels() -> None:
    options = container_options(spec(), namespace="ns1", network="dockyard", user="1000:1000",
                                pids_limit=256)
    assert options["name"] == container_name("ns1", 42) == "dockyard-ns1-run-42"
    assert options["command"] == ["python", "train.py"]
    assert options["labels"] == {"dockyard.namespace": "ns1", "dockyard.role": "job",
                                 "dockyard.run-id": "42", "dockyard.attempt": "2",
                                 "dockyard.owner": "alice"}
    assert options["user"] == "1000:1000"
    assert options["mem_limit"] == options["memswap_limit"] == "512m"
    assert options["nano_cpus"] == 1_500_000_000
    assert options["pids_limit"] == 256
    assert options["security_opt"] == ["no-new-privileges"]
    assert options["cap_drop"] == ["ALL"]
    assert options["init"] is True
    assert options["network"] == "dockyard"
    assert options["environment"] == {"TINI_SUBREAPER": "1", "A": "1"}
    # No volumes, no binds, no privileges: in particular never the Docker socket.
    for forbidden in ("volumes", "mounts", "privileged", "cap_add", "device_requests"):
        assert forbidden not in options


def test_a_local_data_root_is_the_one_bind_mount() -> None:
    options = container_options(spec(), namespace="n", network="bridge", user="u",
                                pids_limit=10, data_root="/srv/dockyard/data")
    assert options["volumes"] == {"/srv/dockyard/data": {"bind": "/dockyard/data", "mode": "rw"}}
    assert "/var/run/docker.sock" not in str(options)


def test_gpus_become_a_device_request() -> None:
    options = container_options(spec(gpu=2), namespace="n", network="bridge", user="u",
                                pids_limit=10)
    (request,) = options["device_requests"]
    assert request["Count"] == 2 and request["Capabilities"] == [["gpu"]]


@pytest.mark.parametrize(("image_user", "expected"), [
    ("", DEFAULT_JOB_USER), (None, DEFAULT_JOB_USER), ("root", DEFAULT_JOB_USER),
    ("0", DEFAULT_JOB_USER), ("0:0", DEFAULT_JOB_USER), ("root:staff", DEFAULT_JOB_USER),
    ("jovyan", "jovyan"), ("1000:100", "1000:100"), ("1001", "1001"),
])
def test_jobs_run_as_the_images_user_but_never_root(image_user: str | None, expected: str) -> None:
    assert job_user(image_user) == expected


# -- container → status ----------------------------------------------------------------------
def test_docker_times_with_nanoseconds_and_the_zero_time() -> None:
    assert parse_docker_time("2024-05-01T10:00:00.123456789Z") == T0.replace(microsecond=123456)
    assert parse_docker_time("2024-05-01T12:00:00+02:00") == T0
    assert parse_docker_time("0001-01-01T00:00:00Z") is None
    assert parse_docker_time("") is None
    assert parse_docker_time("yesterday") is None


def inspect(status: str, **state: object) -> dict[str, object]:
    base = {"Status": status, "ExitCode": 0, "OOMKilled": False, "Error": "",
            "StartedAt": "2024-05-01T10:00:00.5Z", "FinishedAt": "0001-01-01T00:00:00Z"}
    base.update(state)
    return {"Id": "abc123", "State": base, "HostConfig": {"Memory": 64 * 1024 * 1024}}


def test_status_of_created_running_and_exited_containers() -> None:
    assert status_from_inspect(inspect("created")).state == EngineState.PENDING
    running = status_from_inspect(inspect("running"))
    assert running.state == EngineState.RUNNING and running.handle == "abc123"
    assert running.started_at == T0 + timedelta(milliseconds=500)
    exited = status_from_inspect(inspect("exited", ExitCode=3,
                                         FinishedAt="2024-05-01T10:00:09Z"))
    assert (exited.state, exited.exit_code, exited.reason) == (EngineState.EXITED, 3, "")
    assert exited.finished_at == T0 + timedelta(seconds=9)
    assert exited.ended


def test_out_of_memory_is_explained() -> None:
    status = status_from_inspect(inspect("exited", ExitCode=137, OOMKilled=True))
    assert status.exit_code == 137
    assert "out of memory" in status.reason and "64 MB" in status.reason


def test_dead_and_removing_containers() -> None:
    dead = status_from_inspect(inspect("dead", ExitCode=1, Error="driver failed"))
    assert dead.state == EngineState.EXITED and "driver failed" in dead.reason
    assert status_from_inspect(inspect("removing")).state == EngineState.MISSING


# -- forward-only status and outcomes -----------------------------------------------------------
def test_status_only_moves_forward() -> None:
    assert may_advance(RunState.QUEUED, RunState.PENDING)
    assert may_advance(RunState.PENDING, RunState.RUNNING)
    assert may_advance(RunState.QUEUED, RunState.CANCELLED)
    assert not may_advance(RunState.RUNNING, RunState.PENDING)
    assert not may_advance(RunState.RUNNING, RunState.RUNNING)
    for final in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.TIMED_OUT):
        assert all(not may_advance(final, other) for other in RANK)


def ended(code: int | None, *, finished: datetime | None = None, reason: str = "") -> JobStatus:
    return JobStatus(EngineState.EXITED, "h", exit_code=code, reason=reason,
                     started_at=T0, finished_at=finished or T0 + timedelta(seconds=5))


def test_outcomes_tell_the_truth() -> None:
    deadline = T0 + timedelta(seconds=60)
    assert outcome(ended(0), intent=None, cancel_requested=False, deadline=deadline)[0] \
        == RunState.SUCCEEDED
    state, reason = outcome(ended(2), intent=None, cancel_requested=False, deadline=deadline)
    assert (state, reason) == (RunState.FAILED, "exit code 2")
    state, reason = outcome(ended(137, reason="out of memory"), intent=None,
                            cancel_requested=False, deadline=deadline)
    assert state == RunState.FAILED and "out of memory" in reason
    # A stop the worker made says why, with the real exit code (never an assumed one).
    state, reason = outcome(ended(143), intent=RunState.CANCELLED, cancel_requested=True,
                            deadline=deadline)
    assert state == RunState.CANCELLED and "143" in reason
    state, reason = outcome(ended(137), intent=RunState.TIMED_OUT, cancel_requested=False,
                            deadline=deadline)
    assert state == RunState.TIMED_OUT and "137" in reason
    # After a restart the intent is rebuilt from the row and the times.
    late = ended(143, finished=deadline + timedelta(seconds=1))
    assert outcome(late, intent=None, cancel_requested=False, deadline=deadline)[0] \
        == RunState.TIMED_OUT
    assert outcome(ended(143), intent=None, cancel_requested=True, deadline=deadline)[0] \
        == RunState.CANCELLED
    # A job that finished on its own before the cancel took effect succeeded.
    assert outcome(ended(0), intent=None, cancel_requested=True, deadline=deadline)[0] \
        == RunState.SUCCEEDED
    gone = JobStatus(EngineState.MISSING, "h", reason="the container no longer exists")
    state, reason = outcome(gone, intent=None, cancel_requested=False, deadline=deadline)
    assert state == RunState.FAILED and "no longer exists" in reason


def test_deadline_uses_the_admin_maximum_when_a_run_has_no_timeout() -> None:
    assert deadline_of(T0, 30, 3600) == T0 + timedelta(seconds=30)
    assert deadline_of(T0, None, 3600) == T0 + timedelta(hours=1)
    assert deadline_of(None, 30, 3600) is None


# -- logs ----------------------------------------------------------------------------------------
def test_offsets_never_split_a_utf8_character(tmp_path: Path) -> None:
    text = "héllo wörld ✓ done\n"
    path = tmp_path / "run.log"
    path.write_bytes(text.encode())
    pieces, offset = [], 0
    while True:
        chunk = read_log(path, offset, limit=3)
        if chunk.next_offset == offset:
            break
        pieces.append(chunk.text)
        offset = chunk.next_offset
    assert "".join(pieces) == text
    assert complete_utf8_length("✓".encode()[:2]) == 0
    assert complete_utf8_length(b"ab\xc3") == 2


def test_reading_a_missing_or_shorter_log(tmp_path: Path) -> None:
    chunk = read_log(tmp_path / "none.log", 10)
    assert (chunk.text, chunk.next_offset, chunk.size) == ("", 10, 0)
    path = tmp_path / "short.log"
    path.write_text("abc")
    assert read_log(path, 99).next_offset == 99  # waits for a rewritten file to grow back


def test_log_file_is_cut_at_the_limit_with_a_note(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "1.log"
    with LogFile(path, max_bytes=10) as out:
        out.write(b"12345")
        out.write(b"67890ABCDE")
        out.write(b"more")
    data = path.read_bytes()
    assert data.startswith(b"1234567890\n[dockyard: log cut at 10 bytes")
    assert b"ABCDE" not in data and b"more" not in data


# -- input and limits -----------------------------------------------------------------------------
LIMITS = JobLimits(max_cpu=4, max_memory_mb=4096, max_gpu=0, max_timeout_seconds=3600,
                   max_retries=3, max_command_bytes=1000, max_env_vars=3, max_env_bytes=100,
                   page_size_max=200)


def fields_of(error: ValidationError) -> set[str]:
    return {".".join(str(p) for p in e["loc"]) for e in error.errors()}


@pytest.mark.parametrize(("payload", "field"), [
    ({"command": []}, "command"),
    ({"command": 5}, "command"),
    ({"command": ["ls", 1]}, "command"),
    ({"command": "  "}, "command"),
    ({"command": "a\x00b"}, "command"),
    ({"cpu": 0}, "cpu"),
    ({"cpu": -1}, "cpu"),
    ({"memory_mb": 1}, "memory_mb"),
    ({"gpu": -1}, "gpu"),
    ({"timeout_seconds": 0}, "timeout_seconds"),
    ({"max_retries": -1}, "max_retries"),
    ({"env": {"1BAD": "x"}}, "env"),
    ({"env": {"has-dash": "x"}}, "env"),
    ({"env": {"DOCKYARD_TOKEN": "x"}}, "env"),
    ({"tags": ["has space"]}, "tags"),
    ({"tags": ["x"] * 21}, "tags"),
    ({"nonsense": 1}, "nonsense"),
])
def test_bad_shapes_are_refused_per_field(payload: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        RunIn.model_validate(payload)
    assert field in fields_of(caught.value)


def test_definition_names_are_checked_by_the_schema() -> None:
    with pytest.raises(ValidationError) as caught:
        DefinitionIn.model_validate({"name": "no spaces please", "image": "i"})
    # A command or a notebook is needed too: the service says which, as a 422 on
    # "command" (tests/jobs/test_triggers_api.py), since either will do.
    assert fields_of(caught.value) == {"name"}


def test_limits_are_checked_with_actionable_messages() -> None:
    problems = LIMITS.check({"cpu": 5, "memory_mb": 5000, "gpu": 1, "timeout_seconds": 4000,
                             "max_retries": 4, "command": "x" * 2000,
                             "env": {"A": "1", "B": "2", "C": "3", "D": "4"}})
    by_field = {p.field: p.message for p in problems}
    assert set(by_field) == {"cpu", "memory_mb", "gpu", "timeout_seconds", "max_retries",
                             "command", "env"}
    assert "no GPUs" in by_field["gpu"] and "1000 bytes" in by_field["command"]
    assert LIMITS.check({"env": {"A": "x" * 200}})[0].field == "env"
    assert LIMITS.check({"cpu": 4, "memory_mb": 4096, "command": ["ok"]}) == []


# -- what a job gets --------------------------------------------------------------------------
def fake_run(**overrides: object) -> SimpleNamespace:
    values: dict[str, object] = dict(id=7, attempt=1, owner="alice", image="img:1",
                                     command="echo hi", cpu=1.0, memory_mb=256, gpu=0,
                                     env={"MINE": "1"}, queued_at=T0, kind="command",
                                     notebook=None, trigger=None)
    values.update(overrides)
    return SimpleNamespace(**values)


def test_spec_gives_the_job_its_identity() -> None:
    built = build_spec(fake_run(), token="dyr_7_secret", dockyard_url="http://gw:10101/x/",  # type: ignore[arg-type]
                       extra_env={"DOCKYARD_DATA_ROOT": "/data"})
    assert built.argv == ("/bin/sh", "-c", "echo hi")
    assert built.env == {"MINE": "1", "DOCKYARD_DATA_ROOT": "/data", "DOCKYARD_RUN_ID": "7",
                         "DOCKYARD_ATTEMPT": "1", "DOCKYARD_OWNER": "alice",
                         "DOCKYARD_URL": "http://gw:10101/x/", "DOCKYARD_TOKEN": "dyr_7_secret"}


def test_run_tokens_are_per_run_and_stable() -> None:
    key = b"k" * 32
    token = run_token(key, 7, T0)
    assert token.startswith("dyr_7_") and run_id_of(token) == 7
    assert run_token(key, 7, T0) == token
    assert run_token(key, 8, T0) != token
    # A reused id in a fresh database (another queue time) gets another token.
    assert run_token(key, 7, T0 + timedelta(seconds=1)) != token
    assert run_token(b"x" * 32, 7, T0) != token
    assert hash_token(token) != token and len(hash_token(token)) == 64
    assert run_id_of("tok-alice") is None and run_id_of("dyr_x_y") is None


def test_namespace_follows_the_database_not_the_password(tmp_path: Path) -> None:
    a = Settings(home=tmp_path, database_url="postgresql+psycopg://u:one@db/dockyard")
    b = Settings(home=tmp_path, database_url="postgresql+psycopg://u:two@db/dockyard")
    c = Settings(home=tmp_path, database_url="postgresql+psycopg://u:one@db/other")
    assert job_namespace(a) == job_namespace(b) != job_namespace(c)
    assert job_namespace(Settings(home=tmp_path, job_namespace="prod")) == "prod"


def test_duration_chart_scales_bars_and_colours_outcomes() -> None:
    runs = [
        SimpleNamespace(id=1, status=RunState.SUCCEEDED, started_at=T0,
                        finished_at=T0 + timedelta(seconds=10)),
        SimpleNamespace(id=2, status=RunState.FAILED, started_at=T0,
                        finished_at=T0 + timedelta(seconds=5)),
        SimpleNamespace(id=3, status=RunState.QUEUED, started_at=None, finished_at=None),
    ]
    chart = duration_chart(runs)  # type: ignore[arg-type]
    tall, half, none = chart["bars"]
    assert tall["height"] == chart["height"] - 4 and tall["y"] == 4
    assert abs(half["height"] - tall["height"] / 2) <= 1
    assert none["height"] == 3
    assert [b["css"] for b in chart["bars"]] == ["dy-bar dy-bar-succeeded",
                                                  "dy-bar dy-bar-failed", "dy-bar dy-bar-queued"]
    assert tall["x"] < half["x"] < none["x"]
