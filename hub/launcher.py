"""``dockyard up``: prepare the home directory and database, then run JupyterHub, which
runs Dockyard's web service, worker and idle culler as managed services."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
from pathlib import Path

import click
from sqlalchemy.exc import SQLAlchemyError

from hub.choices import choose_runtime
from hub.settings import ENV_PREFIX, Settings, SettingsError

REPO = Path(__file__).resolve().parent.parent
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
    from hub.migrate import upgrade

    try:
        upgrade(settings.db_url)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        raise SettingsError(
            f"{ENV_PREFIX}DATABASE_URL: cannot use the database ({reason}); "
            "check the URL, that the server runs and that the user may connect"
        ) from None


def check_port_free(settings: Settings) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((settings.ip, settings.port))
        except OSError as exc:
            raise SettingsError(
                f"{ENV_PREFIX}PORT: {settings.ip}:{settings.port} is not available "
                f"({exc.strerror}); stop what uses it or choose another port"
            ) from None


def secret_file(path: Path, nbytes: int = 32) -> str:
    """Read a secret kept under HOME, making it (mode 600) the first time."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(nbytes))
    return path.read_text().strip()


def run_up(settings: Settings) -> int:
    prepare_home(settings)
    check_port_free(settings)
    migrate_or_explain(settings)
    runtime = choose_runtime(settings)

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

    hub = subprocess.Popen(
        [sys.executable, "-m", "jupyterhub", "-f", str(HUB_CONFIG)],
        cwd=settings.home,
        env=env,
    )

    def _forward(signum: int, _frame: object) -> None:
        if hub.poll() is None:
            hub.send_signal(signum)

    signal.signal(signal.SIGTERM, _forward)
    signal.signal(signal.SIGINT, _forward)
    try:
        return hub.wait()
    finally:
        if hub.poll() is None:
            hub.terminate()
            hub.wait(timeout=30)
