"""Dockyard's one settings object.

Every knob is read here and nowhere else: from ``DOCKYARD_*`` environment variables,
then from the optional TOML file named by ``DOCKYARD_CONFIG``, then the defaults below.
Each field carries its own help text; the README's configuration table is generated
from these fields (``dockyard settings --markdown``) and a test keeps the two in step.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from dockyard.installation import read_installation
from dockyard.settings.job_pools import JobPoolConfig, parse_pools
from spawner.notebooks.profiles import NotebookProfile

ENV_PREFIX = "DOCKYARD_"
SUPPORTED_DATABASES = ("sqlite", "postgresql")


class SettingsError(Exception):
    """A setting is missing or wrong; the message names it and says how to fix it."""


DEFAULT_NOTEBOOK_PROFILES = [
    NotebookProfile(name="small", description="Small: 2 GB memory, 1 CPU", memory="2G", cpus=1),
    NotebookProfile(name="large", description="Large: 8 GB memory, 2 CPUs", memory="8G", cpus=2,
                    pids=2048),
]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="ignore",
        validate_default=True,
    )

    # -- where and how Dockyard runs ---------------------------------------------------
    home: Path = Field(
        Path(".dockyard"),
        description="Directory for all state: database, secrets, logs, data, user homes.",
    )
    config: Path | None = Field(
        None, description="Optional TOML file with any of these settings (lower-case keys)."
    )
    ip: str = Field("127.0.0.1", description="Address the hub's public proxy listens on.")
    port: int = Field(
        8000, ge=1, le=65535, description="Port of the public proxy (the URL users open)."
    )
    hub_port: int = Field(
        8081, ge=1, le=65535,
        description="Port of the hub's internal API. Default: a free port chosen on the first "
        "`dockyard up` and kept in HOME/installation.json (8081 for homes made before that).",
    )
    proxy_api_port: int = Field(
        8001, ge=1, le=65535,
        description="Port of the proxy's own API (loopback only). Default: chosen and kept "
        "like DOCKYARD_HUB_PORT (8001 for homes made before that).",
    )
    web_port: int = Field(
        10101, ge=1, le=65535,
        description="Port of the Dockyard web service behind the proxy. Default: chosen and "
        "kept like DOCKYARD_HUB_PORT (10101 for homes made before that).",
    )
    public_url: str = Field(
        "",
        description="External URL of Dockyard (e.g. https://dockyard.example.com). "
        "Default: http://IP:PORT.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level of the hub, web service and worker."
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="Log lines of the hub, web service and worker: text for people, or json "
        "(one object per line with time, level, logger, message, run_id and user).",
    )

    # -- accounts ----------------------------------------------------------------------
    admin_user: str = Field(
        "admin", pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$", description="Name of the first admin."
    )
    admin_password: SecretStr | None = Field(
        None,
        description="Password of the first admin, set when the account is first created. "
        "Generated and printed once when unset.",
    )
    open_signup: bool = Field(
        False, description="Let anyone who signs up log in without an admin's approval."
    )

    # -- database ----------------------------------------------------------------------
    database_url: str = Field(
        "",
        description="SQLAlchemy URL of Dockyard's database. Default: SQLite file "
        "HOME/dockyard.sqlite. Production: postgresql+psycopg://user:pass@host/db.",
    )
    hub_database_url: str = Field(
        "", description="JupyterHub's own database. Default: SQLite file HOME/jupyterhub.sqlite."
    )

    # -- notebooks ---------------------------------------------------------------------
    spawner: Literal["auto", "docker", "swarm", "local"] = Field(
        "auto",
        description="How notebook servers start. auto: Docker when an engine answers and "
        "the notebook image exists, else local processes (development mode).",
    )
    notebook_image: str = Field(
        "dockyard/notebook:latest",
        description="Image for notebook servers until an admin enables images in the catalog.",
    )
    docker_network: str = Field(
        "bridge", description="Docker network that notebook and job containers join."
    )
    hub_connect_ip: str = Field(
        "",
        description="Address containers use to reach the hub and Dockyard. "
        "Default: the Docker network's gateway.",
    )
    idle_timeout: int = Field(
        3600, ge=60, description="Seconds of inactivity after which a notebook server is stopped."
    )
    notebook_profiles: list[NotebookProfile] = Field(
        DEFAULT_NOTEBOOK_PROFILES,
        min_length=1,
        description="Resource profiles offered on the spawn page (JSON list of {name, "
        "description, memory, cpus, pids}); the first is preselected. An image may narrow "
        "them in the catalog.",
    )
    named_servers: int = Field(
        3, ge=0, le=50,
        description="Named notebook servers a user may run besides the default one (0: none).",
    )
    shared_writable: bool = Field(
        False, description="Mount the team volume at /shared read-write (default read-only)."
    )
    docker_name_prefix: str = Field(
        "dockyard", pattern=r"^[a-z][a-z0-9-]{0,23}$",
        description="Prefix of the notebook containers, volumes and networks Dockyard "
        "creates, so that two installations can share one Docker engine. Default: made once "
        "per installation on the first `dockyard up` (dy + 6 hex digits) and kept in "
        "HOME/installation.json; `dockyard` for homes made before that.",
    )
    notebook_start_timeout: int = Field(
        300, ge=30,
        description="Seconds a notebook server may take to start and answer. Generous because "
        "a login burst shares the CPUs; a server whose container exits fails at once.",
    )
    spark_master: str = Field(
        "", description="SPARK_MASTER for notebooks and jobs (e.g. spark://host:7077). "
        "Default: Spark in local mode inside the container.",
    )
    ray_address: str = Field(
        "", description="RAY_ADDRESS for notebooks and jobs (e.g. ray://host:10001). "
        "Default: Ray starts inside the container.",
    )

    # -- images ------------------------------------------------------------------------
    image_upload_max_mb: int = Field(
        16, ge=1, le=4096,
        description="Largest build upload (Dockerfile plus context archive) an admin may "
        "send, in MB.",
    )
    image_inspect_timeout_seconds: int = Field(
        120, ge=10, le=3600,
        description="Time limit of the one-off container that records what an image "
        "contains (versions, kernels, packages).",
    )
    image_builds_at_once: int = Field(
        1, ge=1, le=8, description="Image builds one worker runs at the same time."
    )
    build_ca: Path | None = Field(
        None,
        description="PEM bundle of extra CA certificates that image builds trust (e.g. an "
        "HTTPS proxy's root), copied into each build context as build-ca.crt. Default: the "
        "host's /etc/ssl/certs/ca-certificates.crt when present, else none.",
    )

    # -- jobs --------------------------------------------------------------------------
    job_backend: Literal["auto", "docker", "local"] = Field(
        "auto",
        description="Where job runs start. auto: Docker when an engine answers, else "
        "local processes (development mode).",
    )
    job_pools: dict[str, JobPoolConfig] = Field(
        {},
        description="Named job pools beyond `default` (which is DOCKYARD_JOB_BACKEND), as "
        'JSON or [job_pools.NAME] TOML tables, e.g. {"swarm": {"backend": "swarm"}, '
        '"ecs": {"backend": "ecs", "cluster": "batch", "subnets": ["subnet-1"], '
        '"execution_role_arn": "arn:…", "log_group": "/dockyard/jobs", "users": ["alice"]}}. '
        "Options per backend: see dockyard/settings/job_pools.py. AWS credentials come from the "
        "standard AWS chain, never from here.",
    )
    max_concurrent_runs: int = Field(8, ge=1, description="Runs executing at once, all users.")
    max_runs_per_user: int = Field(4, ge=1, description="Runs executing at once for one user.")
    worker_poll_seconds: float = Field(
        0.25, gt=0, le=60, description="How often the worker looks for queued runs "
        "(a cheap indexed query). On PostgreSQL a submit also wakes the worker at once "
        "(NOTIFY); this bounds the wait between submit and start on SQLite, or when a "
        "notification is lost."
    )
    worker_name: str = Field(
        "", max_length=128, description="Name of this worker, recorded on the runs it "
        "dispatches so a restarted worker takes them back. Default: the host name.",
    )
    job_namespace: str = Field(
        "", pattern=r"^[a-z0-9-]{0,32}$",
        description="Label value that marks this installation's job and image inspection "
        "containers (the worker's reconcile finds them by it). Default: derived from the "
        "database URL.",
    )
    job_dockyard_url: str = Field(
        "", description="Dockyard's URL as jobs reach it (DOCKYARD_URL inside jobs). "
        "Default: the same as notebooks get (the web service at the Docker network's "
        "gateway; the public URL for local processes).",
    )
    job_max_cpu: float = Field(8.0, gt=0, description="Most CPUs one run may ask for.")
    job_max_memory_mb: int = Field(
        32768, ge=64, description="Most memory (MB) one run may ask for."
    )
    job_max_gpu: int = Field(
        0, ge=0, description="Most GPUs one run may ask for (0: no GPUs offered)."
    )
    job_max_timeout_seconds: int = Field(
        7 * 86400, ge=60, description="Longest timeout a run may ask for; runs without one "
        "are stopped after this long.",
    )
    job_max_retries: int = Field(10, ge=0, description="Most automatic retries a run may ask for.")
    job_max_command_bytes: int = Field(
        65536, ge=256, description="Longest command (bytes, as JSON) a run or definition may have."
    )
    job_max_env_vars: int = Field(100, ge=0, description="Most environment variables per run.")
    job_max_env_bytes: int = Field(
        65536, ge=256, description="Most bytes of environment (names plus values) per run."
    )
    job_pids_limit: int = Field(1024, ge=16, description="Most processes inside one job container.")
    notebook_job_max_mb: int = Field(
        20, ge=1, le=1024, description="Largest notebook (MB) a notebook job may be submitted "
        "with; larger ones are refused with a field error.",
    )
    notebook_output_max_mb: int = Field(
        200, ge=1, le=4096, description="Largest executed notebook (MB) a notebook job may "
        "keep as its output (outputs with plots grow).",
    )
    home_files_url: str = Field(
        "", pattern=r"^(https?://\S+)?$",
        description="Where the web service reads a file of a user's home (a notebook run "
        "submitted by its path) when it has no Docker socket: the engine window's route, "
        "which docker compose sets to http://engine-api:2375/dockyard/home-file. Empty: "
        "the web service reads homes itself (Docker volumes or directories).",
    )
    artifacts_root: str = Field(
        "", description="Where runs keep their files (notebook snapshots, executed notebooks): "
        "a directory or s3://bucket/prefix, out of reach of notebooks and jobs (never inside "
        "the data root they write to). Default: HOME/artifacts, or s3://BUCKET/_artifacts "
        "when the data root is in S3 (keep the containers' S3 key off that prefix).",
    )
    schedule_min_seconds: int = Field(
        60, ge=1, le=86400, description="Smallest gap (seconds) between two fire times of a "
        "job definition's schedule; a cron firing more often is refused.",
    )
    schedule_missed_grace_seconds: int = Field(
        60, ge=1, le=86400, description="A schedule tick the worker reaches later than this "
        "(seconds), e.g. after the worker was down, counts as missed and follows the "
        "definition's `missed` policy (skip, or run once).",
    )
    backfill_max_items: int = Field(
        1000, ge=1, le=100000, description="Most runs (partitions or days) one backfill may "
        "ask for.",
    )
    job_stop_grace_seconds: int = Field(
        10, ge=0, le=300, description="Seconds between SIGTERM and SIGKILL when a run is stopped."
    )
    job_log_max_bytes: int = Field(
        64 * 1024 * 1024, ge=4096, description="Most bytes of a run's log kept (and offered "
        "for download); output beyond is cut with a note.",
    )
    api_page_size_max: int = Field(
        200, ge=10, le=5000, description="Largest page the API's list endpoints return."
    )
    request_max_kb: int = Field(
        1024, ge=64, le=1024 * 1024,
        description="Largest request body (KB) the web service accepts; larger ones get 413. "
        "Image build uploads have their own limit (DOCKYARD_IMAGE_UPLOAD_MAX_MB).",
    )

    # -- clusters ----------------------------------------------------------------------
    max_cluster_workers_per_user: int = Field(
        8, ge=0, le=1000,
        description="Most Spark or Ray cluster workers one user may have at once, over "
        "their notebooks' clusters and the clusters of their active runs (0: no clusters). "
        "Each worker may ask for up to DOCKYARD_JOB_MAX_CPU and DOCKYARD_JOB_MAX_MEMORY_MB.",
    )
    cluster_idle_timeout: int = Field(
        3600, ge=0,
        description="Seconds after which a notebook's cluster that no driver uses and nobody "
        "looked at is stopped (0: never). A run's cluster ends with its run.",
    )
    cluster_start_timeout: int = Field(
        300, ge=10,
        description="Seconds a cluster may take until its head answers and every worker "
        "registered; a cluster that takes longer fails (and so does its run).",
    )

    # -- data --------------------------------------------------------------------------
    data_root: str = Field(
        "",
        description="Root of the data catalog's files: a directory or s3://bucket/prefix. "
        "Default: HOME/data.",
    )
    data_s3_endpoint_url: str = Field(
        "",
        description="Endpoint of an S3-compatible store (MinIO, Ceph) for an s3:// data root. "
        "Default: AWS. Credentials come from the standard AWS chain, never from here.",
    )
    data_s3_region: str = Field("", description="Region of the S3 bucket of the data root.")
    data_s3_client_access_key: str = Field(
        "",
        description="S3 access key given to notebook servers and jobs (AWS_ACCESS_KEY_ID) so "
        "the data client can write batches; best a store user that cannot delete. Default: "
        "none (the containers' own AWS credential chain).",
    )
    data_s3_client_secret_key: SecretStr | None = Field(
        None, description="The secret key that goes with DOCKYARD_DATA_S3_CLIENT_ACCESS_KEY."
    )
    data_write_access: Literal["owner", "everyone"] = Field(
        "owner",
        description="Who may write to a namespace besides admins: its owner (the first "
        "writer, or whom an admin names) or everyone. Everyone may read.",
    )
    data_pending_expiry_hours: float = Field(
        24.0,
        gt=0,
        description="A batch begun but not committed for this long is reported as abandoned; "
        "'dockyard data gc' removes such batches.",
    )

    # -- production (docker compose) ---------------------------------------------------
    services_mode: Literal["managed", "external"] = Field(
        "managed",
        description="managed: the hub starts the web service and the worker (dockyard up). "
        "external: they run in their own containers and the hub only registers the web "
        "service at DOCKYARD_WEB_URL with DOCKYARD_SERVICE_TOKEN (docker compose).",
    )
    web_url: str = Field(
        "",
        description="Where the hub's proxy reaches an external web service, e.g. "
        "http://web:10101 (services_mode=external).",
    )
    service_token: SecretStr | None = Field(
        None,
        description="API token of the external web service; the web container gets the same "
        "value as JUPYTERHUB_API_TOKEN (services_mode=external).",
    )
    worker_health_port: int = Field(
        0, ge=0, le=65535,
        description="Port of the worker's /health and /metrics listener (0: off).",
    )
    worker_health_ip: str = Field(
        "127.0.0.1", description="Address the worker's /health and /metrics listener binds."
    )
    hub_extra_config: Path | None = Field(
        None,
        description="A Python file of extra JupyterHub configuration (it gets `c`), loaded "
        "last: e.g. GenericOAuthenticator for OAuth/OIDC login.",
    )

    # -- derived values ----------------------------------------------------------------
    @field_validator("home", mode="after")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _installation_values(self) -> Settings:
        # Values chosen for this installation on its first start; explicit settings win.
        for name, value in read_installation(self.home).items():
            if name not in self.model_fields_set:
                setattr(self, name, value)
        return self

    @field_validator("notebook_profiles", mode="after")
    @classmethod
    def _distinct_profile_names(cls, value: list[NotebookProfile]) -> list[NotebookProfile]:
        names = [profile.name for profile in value]
        if len(set(names)) != len(names):
            raise ValueError(f"profile names must be distinct (got {', '.join(names)})")
        return value

    @field_validator("job_pools", mode="before")
    @classmethod
    def _valid_pools(cls, value: Any) -> Any:
        return parse_pools(value)

    @field_validator("database_url", "hub_database_url", mode="after")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value:
            return value
        try:
            url = make_url(value)
        except ArgumentError as exc:
            raise ValueError(f"not a database URL ({exc})") from None
        if url.get_backend_name() not in SUPPORTED_DATABASES:
            raise ValueError(
                f"unsupported database '{url.get_backend_name()}'; use sqlite:///PATH or "
                "postgresql+psycopg://USER:PASSWORD@HOST/DB"
            )
        return value

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'dockyard.sqlite'}"

    @property
    def hub_db_url(self) -> str:
        return self.hub_database_url or f"sqlite:///{self.home / 'jupyterhub.sqlite'}"

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.ip}:{self.port}").rstrip("/")

    @property
    def data_dir(self) -> str:
        return self.data_root or str(self.home / "data")

    @property
    def artifacts_dir(self) -> str:
        """Runs' files: never under the data root, which notebooks and jobs can write."""
        if self.artifacts_root:
            return self.artifacts_root
        if self.data_dir.startswith("s3://"):
            bucket = self.data_dir[len("s3://"):].split("/", 1)[0]
            return f"s3://{bucket}/_artifacts"
        return str(self.home / "artifacts")

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(f"{ENV_PREFIX}CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, turning any validation problem into one actionable line."""
    config_file = os.environ.get(f"{ENV_PREFIX}CONFIG")
    if config_file and not Path(config_file).is_file():
        raise SettingsError(
            f"{ENV_PREFIX}CONFIG: no such file '{config_file}'; point it at a TOML file or unset it"
        )
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problem = exc.errors()[0]
        name = ENV_PREFIX + str(problem["loc"][0]).upper() if problem["loc"] else "settings"
        given = problem.get("input")
        shown = "" if isinstance(given, dict) or given is None else f" (got {given!r})"
        raise SettingsError(f"{name}: {problem['msg']}{shown}") from None
    except Exception as exc:  # a malformed TOML file raises from the parser
        raise SettingsError(f"{ENV_PREFIX}CONFIG: cannot read '{config_file}': {exc}") from None


def markdown_table() -> str:
    """The README's configuration table, generated from the fields above."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, list) and default and isinstance(default[0], BaseModel):
            default = json.dumps([item.model_dump() for item in default])
        shown = "" if default in (None, "") else f"`{default}`"
        rows.append(f"| `{ENV_PREFIX}{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(rows)
