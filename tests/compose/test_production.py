"""docker compose support without Docker: the .env file, secret checks, the hub's
configuration with external services, and what containers are told."""

from __future__ import annotations

import os
import re
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import SecretStr
from traitlets.config import Config

from dockyard.cli import main
from dockyard.containers import container_environment, dockyard_url_for_containers
from dockyard.production import (
    ENV_ENTRIES,
    check_container_secrets,
    is_weak_secret,
    read_env_file,
    write_env_file,
)
from dockyard.runtime import RuntimeChoice
from dockyard.settings import Settings, SettingsError
from hub.hubconfig import configure_hub

REPO = Path(__file__).resolve().parent.parent.parent
SECRET_NAMES = [entry.name for entry in ENV_ENTRIES if entry.secret]
TOKEN = secrets.token_hex(32)
COOKIE_SECRET = secrets.token_hex(32)
PROXY_TOKEN = secrets.token_hex(32)
LOCAL = RuntimeChoice("local", "local", "dockyard/test:latest", ())


# -- dockyard init-prod --------------------------------------------------------------------
def test_init_prod_writes_private_random_secrets(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    result = CliRunner().invoke(main, ["init-prod", "--env-file", str(env_file),
                                       "--public-url", "https://dockyard.example.com/"])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    values = read_env_file(env_file)
    assert values["DOCKYARD_PUBLIC_URL"] == "https://dockyard.example.com"
    assert values["DOCKYARD_ADMIN_PASSWORD"] in result.output  # shown once, at creation
    secrets = [values[name] for name in SECRET_NAMES]
    assert len(set(secrets)) == len(secrets), "every secret is drawn separately"
    assert not any(is_weak_secret(value) for value in secrets)
    int(values["DOCKYARD_COOKIE_SECRET"], 16)  # JupyterHub reads the cookie secret as hex
    assert values["DOCKER_GID"].isdigit()
    # Its own names on a shared Docker engine: not another installation's home volumes.
    assert re.fullmatch(r"dy[0-9a-f]{6}", values["DOCKYARD_DOCKER_NAME_PREFIX"])

    # A second run keeps every value: secrets never change under a running installation.
    again = CliRunner().invoke(main, ["init-prod", "--env-file", str(env_file)])
    assert again.exit_code == 0 and "no change" in again.output
    assert read_env_file(env_file) == values
    assert values["DOCKYARD_ADMIN_PASSWORD"] not in again.output


def test_init_prod_fills_in_what_is_missing_and_keeps_the_rest(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("DOCKYARD_DB_PASSWORD=9f0c2d7be1a64c55a1f0e6d3b8c2a7e4\nMY_OWN=1\n")
    env_file.chmod(0o644)
    added, created = write_env_file(env_file)
    values = read_env_file(env_file)
    assert not created and "DOCKYARD_DB_PASSWORD" not in added
    assert values["DOCKYARD_DB_PASSWORD"] == "9f0c2d7be1a64c55a1f0e6d3b8c2a7e4"
    assert values["MY_OWN"] == "1"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    # An installation made before the prefix was in the file keeps its containers' names.
    assert values["DOCKYARD_DOCKER_NAME_PREFIX"] == "dockyard"


def test_init_prod_refuses_a_placeholder_already_in_the_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("DOCKYARD_SERVICE_TOKEN=changeme\n")
    result = CliRunner().invoke(main, ["init-prod", "--env-file", str(env_file)])
    assert result.exit_code == 2
    assert "DOCKYARD_SERVICE_TOKEN" in result.output and "placeholder" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("value", ["changeme", "changeme-please-1234", "password", "short",
                                   "aaaaaaaaaaaaaaaaaaaaaaaa", "<your token here 123456>"])
def test_weak_secrets(value: str) -> None:
    assert is_weak_secret(value)


# -- the checks each container makes before it starts ------------------------------------------
def hub_env(**changes: str) -> dict[str, str]:
    env = {"JPY_COOKIE_SECRET": COOKIE_SECRET, "CONFIGPROXY_AUTH_TOKEN": PROXY_TOKEN}
    env.update(changes)
    return env


def test_containers_refuse_placeholder_secrets(tmp_path: Path) -> None:
    good = Settings(home=tmp_path, database_url="postgresql+psycopg://dockyard:"
                    "4bd1c0a9e8f7d6c5b4a3@db/dockyard")
    check_container_secrets(good, "hub", hub_env())

    weak_db = good.model_copy(update={"database_url": "postgresql+psycopg://dockyard:changeme@db/x"})
    with pytest.raises(SettingsError, match="DOCKYARD_DATABASE_URL.*placeholder"):
        check_container_secrets(weak_db, "worker", {})
    with pytest.raises(SettingsError, match="JPY_COOKIE_SECRET"):
        check_container_secrets(good, "hub", hub_env(JPY_COOKIE_SECRET="changeme"))
    with pytest.raises(SettingsError, match="CONFIGPROXY_AUTH_TOKEN: empty"):
        check_container_secrets(good, "hub", {"JPY_COOKIE_SECRET": COOKIE_SECRET})
    with pytest.raises(SettingsError, match="JUPYTERHUB_API_TOKEN"):
        check_container_secrets(good, "web", {"JUPYTERHUB_API_TOKEN": "secret"})
    with pytest.raises(SettingsError, match="DOCKYARD_ADMIN_PASSWORD"):
        check_container_secrets(good.model_copy(update={"admin_password": SecretStr("admin")}),
                                "hub", hub_env())


def test_start_refuses_placeholders_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    env.update(DOCKYARD_HOME=str(tmp_path), JPY_COOKIE_SECRET="changeme",
               CONFIGPROXY_AUTH_TOKEN=PROXY_TOKEN)
    result = subprocess.run([sys.executable, "-m", "dockyard.cli", "start", "hub"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "dockyard: JPY_COOKIE_SECRET: looks like a placeholder or is too short (needs 16+ "
        "random characters); run 'dockyard init-prod' to generate the secrets"
    ]
    assert not (tmp_path / "dockyard.sqlite").exists(), "nothing starts before the check"


# -- the hub with external services -----------------------------------------------------------
def hub_config(settings: Settings) -> Config:
    c = Config()
    configure_hub(c, settings, LOCAL, python=sys.executable, repo=REPO, environ={})
    return c


def test_managed_mode_is_unchanged(tmp_path: Path) -> None:
    names = [s["name"] for s in hub_config(Settings(home=tmp_path)).JupyterHub.services]
    assert names == ["dockyard", "dockyard-worker", "idle-culler"]


def test_external_mode_registers_the_web_container(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, services_mode="external", web_url="http://web:10101/",
                        service_token=SecretStr(TOKEN))
    services = hub_config(settings).JupyterHub.services
    web, culler = services
    assert web == {"name": "dockyard", "display": True, "url": "http://web:10101",
                   "api_token": TOKEN, "oauth_no_confirm": True}
    assert culler["name"] == "idle-culler" and "command" in culler
    # Notebooks and jobs call the web container by name on the compose network.
    assert dockyard_url_for_containers(settings) == "http://web:10101/services/dockyard/"


@pytest.mark.parametrize("changes, problem", [
    ({"web_url": ""}, "DOCKYARD_WEB_URL"),
    ({"service_token": None}, "DOCKYARD_SERVICE_TOKEN: empty"),
    ({"service_token": SecretStr("changeme")}, "DOCKYARD_SERVICE_TOKEN: looks like"),
])
def test_external_mode_needs_url_and_token(tmp_path: Path, changes: dict, problem: str) -> None:
    settings = Settings(home=tmp_path, services_mode="external", web_url="http://web:10101",
                        service_token=SecretStr(TOKEN)).model_copy(update=changes)
    with pytest.raises(SettingsError, match=problem):
        hub_config(settings)


def test_extra_hub_config_is_loaded_last(tmp_path: Path) -> None:
    extra = tmp_path / "oauth.py"
    extra.write_text(
        'c.JupyterHub.authenticator_class = "generic-oauth"\n'
        'c.GenericOAuthenticator.client_id = "dockyard"\n'
    )
    c = hub_config(Settings(home=tmp_path, hub_extra_config=extra))
    assert c.JupyterHub.authenticator_class == "generic-oauth"
    assert c.GenericOAuthenticator.client_id == "dockyard"
    with pytest.raises(SettingsError, match="DOCKYARD_HUB_EXTRA_CONFIG: no such file"):
        hub_config(Settings(home=tmp_path, hub_extra_config=tmp_path / "missing.py"))


def test_json_logs_reach_jupyterhub(tmp_path: Path) -> None:
    c = hub_config(Settings(home=tmp_path, log_format="json"))
    assert c.JupyterHub.logging_config["handlers"]["console"]["formatter"] == "dockyard_json"


# -- what notebook and job containers are given ---------------------------------------------------
def test_containers_get_the_store_user_not_the_services_keys(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, data_root="s3://dockyard/data",
                        data_s3_endpoint_url="http://s3:9000",
                        data_s3_client_access_key="writer",
                        data_s3_client_secret_key=SecretStr("0c9d" * 8))
    env = container_environment(settings, "http://web:10101/services/dockyard/")
    assert env["AWS_ACCESS_KEY_ID"] == "writer"
    assert env["AWS_SECRET_ACCESS_KEY"] == "0c9d" * 8
    assert env["AWS_ENDPOINT_URL_S3"] == "http://s3:9000"
    bare = container_environment(Settings(home=tmp_path), "http://x/")
    assert "AWS_ACCESS_KEY_ID" not in bare
