"""What a job definition or a run request may contain, checked field by field.

The shapes (types, patterns, non-negative numbers, unknown fields) are checked here by
pydantic, for the API and the web forms alike; the limits an admin sets (most CPUs,
longest command …) are checked by ``JobLimits.check`` with the same field-level messages.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from dockyard.clusters.schemas import ClusterSizeIn, PlainText
from dockyard.clusters.service import ClusterLimits
from dockyard.errors import Invalid
from dockyard.jobs.pools import PoolPolicy
from dockyard.models import MAX_ID
from dockyard.settings import Settings

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/=-]{0,63}$")
DEFINITION_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
RESERVED_ENV_PREFIX = "DOCKYARD_"
MAX_TAGS = 20
# A ceiling far above any admin limit, so absurd payloads stop before the limit checks.
_HARD_COMMAND_CEILING = 4 * 1024 * 1024

Command = list[str] | str


def _check_command(value: Command | None) -> Command | None:
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            raise PydanticCustomError("command", "the command is empty")
        if "\x00" in value:
            raise PydanticCustomError("command", "the command contains a NUL character")
    else:
        if not value or not value[0]:
            raise PydanticCustomError("command", "the command list is empty; give at least "
                                      "the program to run")
        if any("\x00" in arg for arg in value):
            raise PydanticCustomError("command", "an argument contains a NUL character")
    if len(json.dumps(value)) > _HARD_COMMAND_CEILING:
        raise PydanticCustomError("command", "the command is far too long")
    return value


def _check_env(value: dict[str, str] | None) -> dict[str, str] | None:
    if value is None:
        return None
    for name, item in value.items():
        if not ENV_NAME.match(name):
            raise PydanticCustomError(
                "env_name", "'{name}' is not an environment variable name (letters, digits and "
                "_; not starting with a digit)", {"name": name[:80]})
        if name.upper().startswith(RESERVED_ENV_PREFIX):
            raise PydanticCustomError(
                "env_reserved", "'{name}': names starting with DOCKYARD_ are set by Dockyard",
                {"name": name[:80]})
        if "\x00" in item:
            raise PydanticCustomError("env_value", "the value of '{name}' contains a NUL "
                                      "character", {"name": name[:80]})
    return value


def _check_tags(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    if len(value) > MAX_TAGS:
        raise PydanticCustomError("tags", "at most {n} tags", {"n": MAX_TAGS})
    for tag in value:
        if not TAG.match(tag):
            raise PydanticCustomError(
                "tag", "'{tag}' is not a tag: 1-64 letters, digits and _ . : / = -, starting "
                "with a letter or digit", {"tag": tag[:80]})
    return list(dict.fromkeys(value))  # drop repeats, keep order


class JobFieldsIn(BaseModel):
    """The runnable part shared by definitions and runs; every field optional here."""

    model_config = ConfigDict(extra="forbid")

    image: PlainText | None = Field(None, min_length=1, max_length=255,
                              description="An image from the catalog, enabled for jobs. "
                              "Unset: the jobs default image; in a local pool (no Docker "
                              "engine) none, the run uses Dockyard's own Python environment.")
    command: Command | None = Field(
        None, description="An argv list (exec form) or a shell string, run by the "
        "container's /bin/sh -c.")
    cpu: float | None = Field(None, gt=0, description="CPUs (fractions allowed).")
    memory_mb: int | None = Field(None, ge=16, description="Memory limit in MB.")
    gpu: int | None = Field(None, ge=0, description="GPUs.")
    env: dict[str, str] | None = Field(None, description="Extra environment variables.")
    tags: list[str] | None = Field(None, description="Labels to find runs by.")
    timeout_seconds: int | None = Field(None, ge=1, description="Stop the run after this long.")
    max_retries: int | None = Field(None, ge=0, description="Automatic retries after a failure.")
    pool: PlainText | None = Field(None, min_length=1, max_length=64,
                             description="Where the run goes: 'default' or a pool the admin "
                             "configured (GET /pools lists yours).")
    cluster: ClusterSizeIn | None = Field(
        None, description="Start a Spark or Ray cluster of this size for the run (on its "
        "pool, from its image) and make the job its driver (RAY_ADDRESS or SPARK_MASTER are "
        "set); the cluster is removed when the run ends.")

    @field_validator("command", mode="before")
    @classmethod
    def _command_shape(cls, value: Any) -> Any:
        is_argv = isinstance(value, list) and all(isinstance(a, str) for a in value)
        if value is not None and not isinstance(value, str) and not is_argv:
            raise PydanticCustomError("command", "give a list of strings (exec form) or one "
                                      "shell string")
        return value

    @field_validator("command")
    @classmethod
    def _valid_command(cls, value: Command | None) -> Command | None:
        return _check_command(value)

    @field_validator("env")
    @classmethod
    def _valid_env(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return _check_env(value)

    @field_validator("tags")
    @classmethod
    def _valid_tags(cls, value: list[str] | None) -> list[str] | None:
        return _check_tags(value)


class NotebookIn(BaseModel):
    """A notebook in the owner's home, to run as a notebook job."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(..., min_length=1, max_length=1024,
                      description="Relative to your home (e.g. work/etl.ipynb).")


NotebookParameters = dict[str, str | int | float | bool | None]


class ScheduleIn(BaseModel):
    """When a definition runs by itself: a cron in a time zone, and what to do about
    overlaps and missed ticks. The cron and zone are checked by dockyard.jobs.schedules."""

    model_config = ConfigDict(extra="forbid")

    cron: str = Field(..., max_length=200, description="Five cron fields (minute hour "
                      "day-of-month month day-of-week), e.g. '0 6 * * MON-FRI', or @daily, "
                      "@hourly …")
    timezone: str = Field("UTC", max_length=64, description="IANA time zone the cron is "
                          "read in, e.g. Europe/Berlin.")
    concurrency: Literal["allow", "forbid", "replace"] = Field(
        "allow", description="When a tick comes while a run it started is still active: "
        "allow another, forbid (skip the tick), or replace (cancel the active run).")
    missed: Literal["skip", "run_once"] = Field(
        "skip", description="Ticks missed while the worker was down: skip them, or run "
        "once for all of them.")


class AfterIn(BaseModel):
    """Run after each run of another of your definitions ends."""

    model_config = ConfigDict(extra="forbid")

    definition_id: int = Field(..., ge=1, le=MAX_ID, description="The upstream definition.")
    on: Literal["succeeded", "failed", "finished"] = Field(
        "succeeded", description="Which outcome of the upstream run fires this one "
        "(finished: any).")


class OnBatchIn(BaseModel):
    """Run on each new batch committed to a table."""

    model_config = ConfigDict(extra="forbid")

    namespace: str = Field(..., min_length=1, max_length=128)
    table: str = Field(..., min_length=1, max_length=128)
    partition: dict[str, str] = Field(
        default_factory=dict, description="Partition key → exact value or fnmatch pattern "
        "(e.g. {\"date\": \"2024-*\"}); keys left out match anything.")


class DefinitionIn(JobFieldsIn):
    """A job definition: a named, reusable recipe for runs, and what starts them."""

    name: str = Field(..., pattern=DEFINITION_NAME, description="Unique among your definitions.")
    description: str = Field("", max_length=4000)
    command: Command | None = Field(None, description="Required unless it is a notebook "
                                    "definition.")
    notebook: NotebookIn | None = Field(
        None, description="Make it a notebook definition: a notebook in your home (or "
        "upload one as multipart/form-data, file part 'notebook'); Dockyard keeps a "
        "snapshot as it is now, and every run of the definition runs that snapshot. "
        "Left out on a notebook definition's update: its snapshot stays.")
    parameters: NotebookParameters | None = Field(
        None, description="A notebook definition's parameters, given to each of its runs.")
    schedule: ScheduleIn | None = Field(None, description="Run on a schedule.")
    paused: bool = Field(False, description="A paused definition's triggers do not fire "
                         "(schedule, after, on_batch); ticks, upstream runs and batches that "
                         "come while paused are never fired later.")
    after: AfterIn | None = Field(None, description="Run after another definition's runs.")
    on_batch: OnBatchIn | None = Field(None, description="Run on each new batch of a table.")


class BackfillIn(BaseModel):
    """Runs for the past: every existing partition of the on_batch table that matches
    ``partition``, or, for a scheduled definition, every day from ``from`` to ``to``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    partition: dict[str, str] | None = Field(
        None, description="Partition key → exact value or fnmatch pattern; {} for every "
        "partition of the table.")
    from_: date | None = Field(None, alias="from", description="First day (YYYY-MM-DD).")
    to: date | None = Field(None, description="Last day, included.")
    max_parallel: int = Field(2, ge=1, le=20, description="Runs of the backfill active at "
                              "once.")


class RunIn(JobFieldsIn):
    """A run: from a definition (the other fields override it) or ad hoc."""

    definition_id: int | None = Field(None, ge=1, le=MAX_ID,
                                      description="Copy this definition's fields.")
    notebook: NotebookIn | None = Field(
        None, description="Run a notebook from your home instead of a command (or upload "
        "one: send the request as multipart/form-data with a file part 'notebook').")
    parameters: NotebookParameters | None = Field(
        None, description="A notebook run's parameters, injected by papermill into its "
        "cell tagged 'parameters' (or a new first cell).")


@dataclass(frozen=True)
class FieldProblem:
    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


class InvalidJob(Invalid):
    """Field-level problems with a definition or run request."""

    def __init__(self, problems: list[FieldProblem]) -> None:
        super().__init__([p.as_dict() for p in problems])
        # Pages show it in one line (a flash message).
        self.args = ("; ".join(f"{p.field}: {p.message}" for p in problems),)
        self.problems = problems


@dataclass(frozen=True)
class JobLimits:
    """The admin's limits, from the settings."""

    max_cpu: float
    max_memory_mb: int
    max_gpu: int
    max_timeout_seconds: int
    max_retries: int
    max_command_bytes: int
    max_env_vars: int
    max_env_bytes: int
    page_size_max: int
    #: Largest notebook a notebook run may be submitted with.
    max_notebook_bytes: int = 20 * 1024 * 1024
    #: Which job pools exist and who may use them.
    pools: PoolPolicy = field(default_factory=PoolPolicy)
    #: The smallest gap between two fire times of a schedule.
    schedule_min_seconds: int = 60
    #: Most items (runs) of one backfill.
    backfill_max_items: int = 1000
    #: What a run's cluster may be (None: clusters are not checked, e.g. in a tool).
    clusters: ClusterLimits | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> JobLimits:
        return cls(
            max_cpu=settings.job_max_cpu, max_memory_mb=settings.job_max_memory_mb,
            max_gpu=settings.job_max_gpu, max_timeout_seconds=settings.job_max_timeout_seconds,
            max_retries=settings.job_max_retries, max_command_bytes=settings.job_max_command_bytes,
            max_env_vars=settings.job_max_env_vars, max_env_bytes=settings.job_max_env_bytes,
            page_size_max=settings.api_page_size_max,
            max_notebook_bytes=settings.notebook_job_max_mb * 1024 * 1024,
            pools=PoolPolicy.from_settings(settings),
            schedule_min_seconds=settings.schedule_min_seconds,
            backfill_max_items=settings.backfill_max_items,
            clusters=ClusterLimits.from_settings(settings),
        )

    def check(self, fields: dict[str, Any]) -> list[FieldProblem]:
        problems: list[FieldProblem] = []

        def over(name: str, message: str) -> None:
            problems.append(FieldProblem(name, message))

        command = fields.get("command")
        if command is not None and len(json.dumps(command).encode()) > self.max_command_bytes:
            over("command", f"the command is longer than the {self.max_command_bytes} bytes "
                 "allowed; put long scripts in the image or in a file")
        cpu = fields.get("cpu")
        if cpu is not None and cpu > self.max_cpu:
            over("cpu", f"at most {self.max_cpu:g} CPUs per run")
        memory = fields.get("memory_mb")
        if memory is not None and memory > self.max_memory_mb:
            over("memory_mb", f"at most {self.max_memory_mb} MB per run")
        gpu = fields.get("gpu")
        if gpu and gpu > self.max_gpu:
            over("gpu", "this installation offers no GPUs" if self.max_gpu == 0
                 else f"at most {self.max_gpu} GPUs per run")
        timeout = fields.get("timeout_seconds")
        if timeout is not None and timeout > self.max_timeout_seconds:
            over("timeout_seconds", f"at most {self.max_timeout_seconds} seconds")
        retries = fields.get("max_retries")
        if retries is not None and retries > self.max_retries:
            over("max_retries", f"at most {self.max_retries} retries")
        env = fields.get("env") or {}
        if len(env) > self.max_env_vars:
            over("env", f"at most {self.max_env_vars} variables")
        elif sum(len(k) + len(v) for k, v in env.items()) > self.max_env_bytes:
            over("env", f"at most {self.max_env_bytes} bytes of names and values")
        return problems
