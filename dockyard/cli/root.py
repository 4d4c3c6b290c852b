"""The ``dockyard`` command's root group, its shared helpers and the commands that run
Dockyard's processes (up, web, worker, db, settings)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click

from dockyard import __version__
from dockyard.settings import Settings, SettingsError, load_settings


class SettingsAwareGroup(click.Group):
    """Turns a bad setting into one line and exit code 2, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SettingsError as exc:
            click.echo(f"dockyard: {exc}", err=True)
            sys.exit(2)


@click.group(cls=SettingsAwareGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dockyard")
def main() -> None:
    """Dockyard: notebooks, batch jobs and versioned data behind one login.

    Settings come from DOCKYARD_* environment variables and an optional TOML file
    (DOCKYARD_CONFIG); run 'dockyard settings' to see them.
    """


def settings_for_command() -> Settings:
    from dockyard.logs import configure_logging

    settings = load_settings()
    configure_logging(settings)
    return settings


@main.command()
@click.option("--markdown", is_flag=True, help="Print the README's configuration table.")
def settings(markdown: bool) -> None:
    """Show the effective settings (secrets hidden)."""
    from dockyard.settings import markdown_table

    if markdown:
        click.echo(markdown_table())
        return
    current = load_settings()
    for name, value in current.model_dump().items():
        shown = "********" if "password" in name and value else value
        click.echo(f"DOCKYARD_{name.upper()}={'' if shown is None else shown}")


@main.group()
def db() -> None:
    """Dockyard's database."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply database migrations (safe to run again, and from two places at once)."""
    from dockyard.up.launch import migrate_or_explain

    settings = settings_for_command()
    migrate_or_explain(settings)
    click.echo("Database is up to date.")


@main.command()
def up() -> None:
    """Run Dockyard on this machine: JupyterHub, the web service and the worker."""
    from dockyard.up.launch import run_up

    code = run_up(settings_for_command())
    # Everything this process started has ended; tearing down the interpreter's modules
    # would add a second or more on a busy machine to what a Ctrl-C costs the person.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@main.command()
@click.option("--port", type=int, default=None, help="Override DOCKYARD_WEB_PORT.")
@click.option("--bind", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--threads", default=8, show_default=True, help="Request threads.")
def web(port: int | None, bind: str, threads: int) -> None:
    """Serve the Dockyard web pages and API (normally started by the hub)."""
    from dockyard.web.serve import serve

    settings = settings_for_command()
    serve(settings, bind=bind, port=port or settings.web_port, threads=threads)


@main.command()
@click.option("--once", is_flag=True, help="One pass over the queue, then exit.")
def worker(once: bool) -> None:
    """Move runs forward: dispatch, watch, time out, retry, reconcile."""
    from dockyard.worker.main import run_worker

    run_worker(settings_for_command(), once=once)
