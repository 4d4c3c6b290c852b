"""``dockyard up``: prepare the home directory and database, then run JupyterHub, which
runs Dockyard's web service, worker and idle culler as managed services."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import click
from sqlalchemy.exc import SQLAlchemyError

from dockyard.containers import container_gateway, web_bind_address
from dockyard.installation import INSTALLATION_FILE, ensure_installation
from dockyard.runtime import RuntimeChoice, choose_runtime, engine_problems_explained
from dockyard.settings import ENV_PREFIX, Settings, SettingsError
from dockyard.up.processes import die_with_parent, supervise
from spawner.environment import LOOPBACK

REPO = Path(__file__).resolve().parents[2]
HUB_CONFIG = REPO / "config" / "jupyterhub_config.py"


def prepare_home(settings: Settings) -> None:
    """Create HOME and its folders, or explain in one line why we cannot."""
    try:
        for folder in (settings.home, settings.log_dir, settings.home / "users"):
            folder.mkdir(parents=True, exist_ok=True)
        probe = settings.home / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise SettingsError(
            f"{ENV_PREFIX}HOME: cannot write to '{settings.home}' ({exc.strerror}); "
            "choose a directory you can write to"
        ) from None
    if not settings.data_dir.startswith("s3://"):
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)


def migrate_or_explain(settings: Settings) -> None:
    from dockyard.migrate import upgrade

    try:
        upgrade(settings.db_url)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        raise SettingsError(
            f"{ENV_PREFIX}DATABASE_URL: cannot use the database ({reason}); "
            "check the URL, that the server runs and that the user may connect"
        ) from None


def check_port_free(ip: str, port: int, setting: str, hint: str = "") -> None:
    """Fail in one line, naming the setting, when ``ip:port`` cannot be listened on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((ip, port))
        except OSError as exc:
            raise SettingsError(
                f"{ENV_PREFIX}{setting}: {ip}:{port} is not available ({exc.strerror}); "
                f"stop what uses it or choose another port{hint}"
            ) from None


def check_ports_free(settings: Settings, runtime: RuntimeChoice) -> None:
    """Every port this installation listens on, at the address it listens on."""
    check_port_free(settings.ip, settings.port, "PORT")
    kept = f" (this installation keeps its ports in {settings.home / INSTALLATION_FILE})"
    containers = runtime.spawner in ("docker", "swarm")
    hub_ip = container_gateway(settings) if containers else LOOPBACK
    check_port_free(hub_ip, settings.hub_port, "HUB_PORT", kept)
    check_port_free(LOOPBACK, settings.proxy_api_port, "PROXY_API_PORT", kept)
    web_ip = web_bind_address(settings, runtime.spawner, runtime.job_backend)
    check_port_free(web_ip, settings.web_port, "WEB_PORT", kept)


def with_installation_values(settings: Settings) -> Settings:
    """The settings once this installation's own ports and name prefix are chosen (on its
    first start) and read back; explicit settings keep their values."""
    try:
        values = ensure_installation(settings.home)
    except OSError as exc:
        raise SettingsError(
            f"{ENV_PREFIX}HOME: cannot keep this installation's ports and names in "
            f"'{settings.home / INSTALLATION_FILE}' ({exc}); check the directory"
        ) from None
    chosen = {k: v for k, v in values.items() if k not in settings.model_fields_set}
    return settings.model_copy(update=chosen)


def secret_file(path: Path, nbytes: int = 32) -> str:
    """Read a secret kept under HOME, making it (mode 600) the first time."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(nbytes))
    return path.read_text().strip()


def run_up(settings: Settings) -> int:
    prepare_home(settings)
    settings = with_installation_values(settings)
    migrate_or_explain(settings)
    runtime = choose_runtime(settings)
    with engine_problems_explained(settings):
        check_ports_free(settings, runtime)

    env = dict(os.environ)
    env[f"{ENV_PREFIX}HOME"] = str(settings.home)
    env[f"{ENV_PREFIX}SPAWNER"] = runtime.spawner
    env[f"{ENV_PREFIX}JOB_BACKEND"] = runtime.job_backend
    env["CONFIGPROXY_AUTH_TOKEN"] = secret_file(settings.home / "proxy_token")
    env["PYTHONUNBUFFERED"] = "1"

    first_start = not (settings.home / "admin-created").exists()
    click.echo(f"Dockyard at {settings.base_url}/  (state in {settings.home})")
    for note in runtime.notes:
        click.echo(f"  {note}")
    if first_start and settings.admin_password is None:
        password = secrets.token_urlsafe(12)
        env[f"{ENV_PREFIX}ADMIN_PASSWORD"] = password
        click.echo(
            f"  First admin: {settings.admin_user} / {password}\n"
            "  (shown once; change it at /hub/change-password)"
        )
    elif first_start:
        click.echo(
            f"  First admin: {settings.admin_user} (password from {ENV_PREFIX}ADMIN_PASSWORD)"
        )
    click.echo("  Press Ctrl-C to stop.", nl=True)
    sys.stdout.flush()

    # The hub gets a session of its own, so that a Ctrl-C in the terminal reaches only us:
    # we stop the hub and its services together, once, in under 3 seconds.
    hub = subprocess.Popen(
        [sys.executable, "-m", "jupyterhub", "-f", str(HUB_CONFIG)],
        cwd=settings.home,
        env=env,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    return supervise(hub, proxy_pid_file=settings.home / "jupyterhub-proxy.pid")
