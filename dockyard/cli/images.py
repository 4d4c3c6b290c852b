"""`dockyard images …` commands."""

from __future__ import annotations

import re
import sys
from collections import deque

import click

from dockyard.cli.root import main
from dockyard.settings import load_settings

# Lines worth showing without --verbose: the builder's steps and what Dockyard's own build
# scripts report; the rest (apt, pip) is kept for the failure report.
_PROGRESS = re.compile(
    r"^(Step \d+/\d+ :|context:|tagged |make-base:|install-build-ca:|add-jars:|"
    r"install-clients:|\S+ is missing: creating it)"
)
_FAILURE_CONTEXT_LINES = 25


@main.group()
def images() -> None:
    """Dockyard's curated images (notebook, test)."""


@images.command("build")
@click.argument("names", nargs=-1, metavar="[test|notebook|all]...")
@click.option("--no-cache", is_flag=True, help="Rebuild every layer.")
@click.option(
    "--build-arg", "build_args", multiple=True, metavar="NAME=VALUE",
    help="Build argument, e.g. HADOOP_AWS_JARS='URL#sha256=HEX URL…' for the notebook image.",
)
@click.option("-v", "--verbose", is_flag=True, help="Print all build output, not only steps.")
def build(names: tuple[str, ...], no_cache: bool, build_args: tuple[str, ...],
          verbose: bool) -> None:
    """Build images on the local Docker engine and tag them VERSION and latest.

    With no name, or 'all', builds every image this checkout has.
    """
    from spawner.images.build import BuildError, ImageBuild, available_images

    known = available_images()
    wanted = list(known) if not names or "all" in names else list(dict.fromkeys(names))
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise click.UsageError(
            f"unknown image {', '.join(unknown)}; choose from {', '.join([*known, 'all'])}"
        )
    args = {}
    for item in build_args:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.UsageError(f"--build-arg needs NAME=VALUE (got {item!r})")
        args[name] = value
    settings = load_settings()

    for name in wanted:
        spec = known[name]
        click.echo(f"==> {spec.repository}: {spec.dockerfile_path}")
        recent: deque[str] = deque(maxlen=_FAILURE_CONTEXT_LINES)
        try:
            job = ImageBuild(name, build_ca=settings.build_ca, build_args=args, nocache=no_cache)
            for line in job.lines():
                if verbose or _PROGRESS.match(line):
                    click.echo(line)
                    recent.clear()
                else:
                    recent.append(line)
        except BuildError as exc:
            if recent and not verbose:
                click.echo("\n".join(f"  | {line}" for line in recent), err=True)
            click.echo(f"dockyard: {exc}", err=True)
            sys.exit(1)
        result = job.result
        assert result is not None
        click.echo(
            f"built {result.tag} (also :latest), {result.size / 1e6:.0f} MB, "
            f"in {result.seconds:.1f} s"
        )
