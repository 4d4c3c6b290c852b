"""Dockyard's one settings object.

Every knob is read here and nowhere else: from ``DOCKYARD_*`` environment variables,
then from the optional TOML file named by ``DOCKYARD_CONFIG``, then the defaults below.
Each field carries its own help text; the README's configuration table is generated
from these fields (``dockyard settings --markdown``) and a test keeps the two in step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

ENV_PREFIX = "DOCKYARD_"
SUPPORTED_DATABASES = ("sqlite", "postgresql")


class SettingsError(Exception):
    """A setting is missing or wrong; the message names it and says how to fix it."""


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
    hub_port: int = Field(8081, ge=1, le=65535, description="Port of the hub's internal API.")
    proxy_api_port: int = Field(
        8001, ge=1, le=65535, description="Port of the proxy's own API (loopback only)."
    )
    web_port: int = Field(
        10101, ge=1, le=65535, description="Port of the Dockyard web service behind the proxy."
    )
    public_url: str = Field(
        "",
        description="External URL of Dockyard (e.g. https://dockyard.example.com). "
        "Default: http://IP:PORT.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level of the hub, web service and worker."
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

    # -- jobs --------------------------------------------------------------------------
    job_backend: Literal["auto", "docker", "local"] = Field(
        "auto",
        description="Where job runs start. auto: Docker when an engine answers, else "
        "local processes (development mode).",
    )
    max_concurrent_runs: int = Field(8, ge=1, description="Runs executing at once, all users.")
    max_runs_per_user: int = Field(4, ge=1, description="Runs executing at once for one user.")
    worker_poll_seconds: float = Field(
        1.0, gt=0, le=60, description="How often the worker looks for queued runs."
    )

    # -- data --------------------------------------------------------------------------
    data_root: str = Field(
        "",
        description="Root of the data catalog's files: a directory or s3://bucket/prefix. "
        "Default: HOME/data.",
    )

    # -- derived values ----------------------------------------------------------------
    @field_validator("home", mode="after")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

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
        shown = "" if default in (None, "") else f"`{default}`"
        rows.append(f"| `{ENV_PREFIX}{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(rows)
