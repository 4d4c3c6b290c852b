"""``dockyard init-prod`` (the secrets for docker compose) and ``dockyard start`` (what
each compose container runs), plus the data-store backup used by "Backup and restore"."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from dockyard.cli.root import main, settings_for_command
from dockyard.settings import ENV_PREFIX, SettingsError

HUB_CONFIG = Path(__file__).resolve().parent.parent.parent / "config" / "jupyterhub_config.py"


@main.command("init-prod")
@click.option(
    "--env-file",
    default=".env",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The file docker compose reads, next to docker-compose.yml.",
)
@click.option("--public-url", default=None, help="Set DOCKYARD_PUBLIC_URL (e.g. https://…).")
def init_prod(env_file: Path, public_url: str | None) -> None:
    """Write the .env file for docker compose: random secrets, mode 600.

    Values already in the file are kept, so running it again only fills in what is
    missing and never changes a secret under a running installation.
    """
    from dockyard.production import read_env_file, write_env_file

    before = read_env_file(env_file)
    overrides = {"DOCKYARD_PUBLIC_URL": public_url.rstrip("/")} if public_url else {}
    try:
        added, created = write_env_file(env_file, overrides)
    except OSError as exc:
        raise SettingsError(f"cannot write {env_file}: {exc.strerror}") from None
    except SettingsError as exc:
        raise SettingsError(
            f"{exc}; remove the value from {env_file} to have one generated"
        ) from None
    images_dir = env_file.resolve().parent / "images"
    if (images_dir / "hub" / "Dockerfile").is_file():
        from dockyard.production import ensure_build_ca
        from dockyard.settings import load_settings

        # A CA certificate is not a secret: builds need it to reach the package indexes
        # through an intercepting HTTPS proxy (empty when there is none).
        if ensure_build_ca(images_dir, load_settings().build_ca):
            click.echo(f"Wrote {images_dir / 'build-ca.crt'} (extra CAs for image builds)")
    verb = "Created" if created else "Updated"
    click.echo(f"{verb} {env_file} (mode 600): " + (", ".join(added) if added else "no change"))
    if "DOCKYARD_ADMIN_PASSWORD" in added and "DOCKYARD_ADMIN_PASSWORD" not in before:
        password = read_env_file(env_file)["DOCKYARD_ADMIN_PASSWORD"]
        user = read_env_file(env_file)["DOCKYARD_ADMIN_USER"]
        click.echo(f"First admin: {user} / {password}  (also in {env_file})")
    click.echo("Next: docker compose build && docker compose up -d")


@main.command("start")
@click.argument("role", type=click.Choice(["hub", "web", "worker"]))
@click.option("--bind", default="0.0.0.0", show_default=True, help="Address the web service "
              "listens on (web only; in a container, all of its interfaces).")
@click.option("--threads", default=16, show_default=True, help="Request threads (web only).")
def start(role: str, bind: str, threads: int) -> None:
    """Start one part of Dockyard in a container: check secrets, upgrade the database,
    then run the hub (JupyterHub + proxy), the web service or a worker.

    Every container upgrades the database as it starts; the upgrade takes a lock, so
    replicas starting together wait for each other and the second finds nothing to do.
    """
    from dockyard.production import check_container_secrets
    from dockyard.up.launch import migrate_or_explain, prepare_home

    settings = settings_for_command()
    check_container_secrets(settings, role, dict(os.environ))
    prepare_home(settings)
    migrate_or_explain(settings)
    if role == "hub":
        if settings.hub_database_url == "":
            click.echo(f"dockyard: {ENV_PREFIX}HUB_DATABASE_URL is unset: JupyterHub keeps "
                       "its state in SQLite under DOCKYARD_HOME", err=True)
        sys.stdout.flush()
        os.chdir(settings.home)
        python = sys.executable
        os.execv(python, [python, "-m", "jupyterhub", "-f", str(HUB_CONFIG)])
    elif role == "web":
        from dockyard.web.serve import serve

        serve(settings, bind=bind, port=settings.web_port, threads=threads)
    else:
        from dockyard.worker.main import run_worker

        run_worker(settings)


@main.command("engine-proxy")
@click.option("--bind", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option("--port", default=2375, show_default=True, help="Port to listen on.")
@click.option("--socket", "socket_path", default="/var/run/docker.sock", show_default=True,
              help="The Docker engine's socket.")
def engine_proxy(bind: str, port: int, socket_path: str) -> None:
    """Serve a read-only view of the Docker engine (image metadata, the container list,
    a file of a user's home) for the web container, which gets no socket of its own."""
    from dockyard.engine_proxy import HomeFileRoute, make_server

    settings = settings_for_command()
    server = make_server(bind, port, socket_path,
                         home_files=HomeFileRoute.from_settings(settings))
    click.echo(f"Read-only Docker API for {socket_path} on {bind}:{port}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@main.group("backup")
def backup() -> None:
    """Copy the data catalog's files out of the data root and back (see README)."""


@backup.command("data-store")
@click.argument("destination", type=click.Path(file_okay=False, path_type=Path))
def backup_data_store(destination: Path) -> None:
    """Copy every file under DOCKYARD_DATA_ROOT (S3 or a directory) into DESTINATION, and
    runs' files (DOCKYARD_ARTIFACTS_ROOT) into DESTINATION/_artifacts."""
    from dockyard.backup import (
        ARTIFACTS_FOLDER,
        artifacts_filesystem,
        copy_tree,
        data_root_filesystem,
    )

    settings = settings_for_command()
    fs, root = data_root_filesystem(settings)
    count, size = copy_tree(fs, root, None, str(destination.resolve()))
    click.echo(f"Copied {count} files ({size} bytes) from {settings.data_dir} to {destination}")
    fs, root = artifacts_filesystem(settings)
    count, size = copy_tree(fs, root, None, str(destination.resolve() / ARTIFACTS_FOLDER))
    click.echo(f"Copied {count} files ({size} bytes) from {settings.artifacts_dir} to "
               f"{destination / ARTIFACTS_FOLDER}")


@backup.command("restore-data-store")
@click.argument("source", type=click.Path(file_okay=False, exists=True, path_type=Path))
def restore_data_store(source: Path) -> None:
    """Copy every file of SOURCE (made by 'backup data-store') back under DOCKYARD_DATA_ROOT,
    and SOURCE/_artifacts back under DOCKYARD_ARTIFACTS_ROOT."""
    from dockyard.backup import (
        ARTIFACTS_FOLDER,
        artifacts_filesystem,
        copy_tree,
        data_root_filesystem,
    )

    settings = settings_for_command()
    fs, root = data_root_filesystem(settings)
    count, size = copy_tree(None, str(source.resolve()), fs, root, skip=ARTIFACTS_FOLDER)
    click.echo(f"Copied {count} files ({size} bytes) from {source} to {settings.data_dir}")
    fs, root = artifacts_filesystem(settings)
    count, size = copy_tree(None, str(source.resolve() / ARTIFACTS_FOLDER), fs, root)
    click.echo(f"Copied {count} files ({size} bytes) from {source / ARTIFACTS_FOLDER} to "
               f"{settings.artifacts_dir}")
