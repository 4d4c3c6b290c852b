"""`dockyard clusters …`: start, list, scale and stop Spark and Ray clusters for your
notebooks, through the REST API (``DOCKYARD_URL`` and ``DOCKYARD_TOKEN``, like the jobs
commands)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from dockyard.cli.jobs import CLUSTER_KINDS, Api, Refused
from dockyard.cli.root import main

SETTLING = {"queued", "starting"}


@main.group()
@click.option("--url", envvar="DOCKYARD_URL", show_envvar=True,
              help="Dockyard's address, e.g. http://127.0.0.1:8000/services/dockyard/")
@click.option("--token", envvar="DOCKYARD_TOKEN", show_envvar=True,
              help="A JupyterHub API token (from /hub/token).")
@click.pass_context
def clusters(ctx: click.Context, url: str | None, token: str | None) -> None:
    """Spark and Ray clusters for your notebooks: start, list, scale, stop."""
    if ctx.resilient_parsing or "--help" in sys.argv or "-h" in sys.argv:
        return
    if not url or not token:
        raise click.UsageError("set DOCKYARD_URL and DOCKYARD_TOKEN (or --url and --token)")
    ctx.obj = Api(url, token)


def _find(api: Api, cluster: str) -> dict[str, Any]:
    """A live cluster by id or by name."""
    if cluster.isascii() and cluster.isdigit():
        return api.call("GET", f"/clusters/{cluster}")
    found = api.call("GET", "/clusters", params={"name": cluster})["clusters"]
    if not found:
        raise Refused(f"cluster: you have no live cluster named {cluster!r}",
                      [("cluster", f"you have no live cluster named {cluster!r} "
                        "('dockyard clusters list' shows yours)")])
    return found[0]


def _line(cluster: dict[str, Any]) -> str:
    size = (f"{cluster['workers']} x {cluster['worker_cpu']:g} CPU "
            f"{cluster['worker_memory_mb']} MB")
    return (f"{cluster['id']:>6}  {cluster['name']:<24} {cluster['kind']:<6} "
            f"{cluster['status']:<9} {size:<22} {cluster.get('address') or '-'}")


@clusters.command("list")
@click.option("--state", type=click.Choice(["live", "ended", "all"]), default="live",
              show_default=True)
@click.option("--owner", help="Admins: someone else's clusters.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@click.pass_obj
def list_clusters(api: Api, state: str, owner: str | None, as_json: bool) -> None:
    """Your clusters, newest first."""
    params: dict[str, Any] = {"state": state}
    if owner:
        params["owner"] = owner
    found: list[dict[str, Any]] = []
    while True:
        page = api.call("GET", "/clusters", params=params)
        found += page["clusters"]
        if not page.get("next_cursor"):
            break
        params["cursor"] = page["next_cursor"]
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    click.echo(f"{'ID':>6}  {'NAME':<24} {'KIND':<6} {'STATUS':<9} {'WORKERS':<22} ADDRESS")
    for cluster in found:
        click.echo(_line(cluster))


@clusters.command("create")
@click.argument("name")
@click.option("--kind", type=click.Choice(CLUSTER_KINDS), required=True)
@click.option("--workers", type=int, help="Workers besides the head (default 2).")
@click.option("--cpu", "worker_cpu", type=float, help="CPUs of each worker (default 1).")
@click.option("--memory", "worker_memory_mb", type=int,
              help="Memory of each worker in MB (default 2048).")
@click.option("--image", help="Image from the catalog with Ray or Spark (default: the jobs "
              "default image).")
@click.option("--pool", help="A job pool on Docker or Swarm (default: 'default').")
@click.option("--wait", is_flag=True, help="Wait until it runs (or fails).")
@click.pass_obj
def create_cluster(api: Api, name: str, wait: bool, **fields: Any) -> None:
    """Start a cluster for your notebooks:

    \b
        dockyard clusters create big-join --kind spark --workers 3 --memory 4096
        dockyard clusters create tune --kind ray --wait
    """
    body = {"name": name, **{key: value for key, value in fields.items() if value is not None}}
    cluster = api.call("POST", "/clusters", json=body)
    click.echo(f"Cluster {cluster['id']} {cluster['name']} queued ({cluster['kind']}, "
               f"{cluster['workers']} workers).")
    click.echo(f"{api.pages}/clusters/{cluster['id']}")
    if wait:
        sys.exit(_wait(api, cluster))


def _wait(api: Api, cluster: dict[str, Any]) -> int:
    while cluster["status"] in SETTLING:
        time.sleep(2)
        cluster = api.call("GET", f"/clusters/{cluster['id']}")
    if cluster["status"] == "running":
        click.echo(f"Cluster {cluster['name']} runs at {cluster['address']}.")
        return 0
    click.echo(f"Cluster {cluster['name']} {cluster['status']}"
               + (f": {cluster['reason']}" if cluster.get("reason") else ""), err=True)
    return 1


@clusters.command("scale")
@click.argument("cluster")
@click.argument("workers", type=int)
@click.pass_obj
def scale_cluster(api: Api, cluster: str, workers: int) -> None:
    """Scale CLUSTER (its id or name) to WORKERS workers."""
    found = _find(api, cluster)
    scaled = api.call("PATCH", f"/clusters/{found['id']}", json={"workers": workers})
    click.echo(f"Cluster {scaled['id']} {scaled['name']}: scaling to {scaled['workers']} "
               "workers.")


@clusters.command("stop")
@click.argument("cluster")
@click.pass_obj
def stop_cluster(api: Api, cluster: str) -> None:
    """Stop CLUSTER (its id or name): its containers and network are removed."""
    found = _find(api, cluster)
    stopped = api.call("DELETE", f"/clusters/{found['id']}")
    click.echo(f"Cluster {stopped['id']} {stopped['name']}: stop requested (now "
               f"{stopped['status']}).")
