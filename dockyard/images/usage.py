"""Who uses an image now: job definitions, unfinished runs and running notebook servers.

Runs and definitions are Dockyard's own rows. Notebook servers belong to JupyterHub:
the web service asks the hub's REST API (as the ``dockyard`` service, whose role may
list users, read servers and their state) and reads the image each server runs from the
spawner's state (``state["image"]``, kept by the notebook spawners), else from the
``user_options`` it was started with, else it runs the default notebook image. When the
hub cannot be asked (the web app outside a hub), the Docker engine's running notebook
containers answer instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import requests
from sqlalchemy import select
from sqlalchemy.orm import Session

from dockyard.images.catalog import default_image
from dockyard.images.engine import image_engine_for_usage
from dockyard.models import FINAL_STATES, Image, JobDefinition, Run
from dockyard.settings import Settings

log = logging.getLogger(__name__)

@dataclass
class ImageUsage:
    definitions: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    # "user" or "user/server" for each running notebook server; None when unknown.
    servers: list[str] | None = field(default_factory=list)

    @property
    def in_use(self) -> bool:
        return bool(self.definitions or self.runs or self.servers)

    def summary(self) -> str:
        parts = []
        if self.servers:
            parts.append(f"{len(self.servers)} notebook server(s) of {', '.join(self.servers)}")
        if self.runs:
            parts.append(
                f"{len(self.runs)} unfinished run(s): "
                + ", ".join(f"#{r['id']} ({r['owner']})" for r in self.runs)
            )
        if self.definitions:
            parts.append(
                f"{len(self.definitions)} job definition(s): "
                + ", ".join(f"'{d['name']}' ({d['owner']})" for d in self.definitions)
            )
        return "; ".join(parts)


def usage_of(
    session: Session, references: Iterable[str], servers: dict[str, list[str]] | None
) -> dict[str, ImageUsage]:
    """Usage of each reference, with the servers already looked up (or None: unknown)."""
    wanted = list(dict.fromkeys(references))
    found = {
        ref: ImageUsage(servers=None if servers is None else list(servers.get(ref, [])))
        for ref in wanted
    }
    if not wanted:
        return found
    runs = session.execute(
        select(Run.id, Run.owner, Run.status, Run.image)
        .where(Run.image.in_(wanted), Run.status.not_in(list(FINAL_STATES)))
        .order_by(Run.id)
    )
    for run_id, owner, status, image in runs:
        found[image].runs.append({"id": run_id, "owner": owner, "status": str(status)})
    definitions = session.execute(
        select(JobDefinition.id, JobDefinition.owner, JobDefinition.name, JobDefinition.image)
        .where(JobDefinition.image.in_(wanted))
        .order_by(JobDefinition.id)
    )
    for def_id, owner, name, image in definitions:
        found[image].definitions.append({"id": def_id, "owner": owner, "name": name})
    return found


class HubServers:
    """Running notebook servers by image, from JupyterHub's REST API."""

    def __init__(self, api_url: str, api_token: str, *, timeout: float = 5) -> None:
        self.api_url = api_url.rstrip("/")
        self.api_token = api_token
        self.timeout = timeout

    @classmethod
    def from_service_environment(cls) -> HubServers | None:
        # JupyterHub hands these to every service it runs; they are the hub's, not
        # Dockyard settings.
        url = os.environ.get("JUPYTERHUB_API_URL")
        token = os.environ.get("JUPYTERHUB_API_TOKEN")
        return cls(url, token) if url and token else None

    def by_image(self, default_image: str) -> dict[str, list[str]] | None:
        found: dict[str, list[str]] = {}
        try:
            for user in self._active_users():
                for server_name, server in (user.get("servers") or {}).items():
                    if server.get("stopped"):
                        continue
                    state = server.get("state") or {}
                    options = server.get("user_options") or {}
                    image = state.get("image") or options.get("image") or default_image
                    who = user["name"] + (f"/{server_name}" if server_name else "")
                    found.setdefault(str(image), []).append(who)
        except (requests.RequestException, ValueError, KeyError) as exc:
            log.warning("Could not list notebook servers from the hub: %s", exc)
            return None
        return found

    def _active_users(self) -> Iterable[dict[str, Any]]:
        offset = 0
        while True:
            response = requests.get(
                f"{self.api_url}/users",
                params={"state": "active", "offset": offset, "limit": 200},
                headers={
                    "Authorization": f"token {self.api_token}",
                    "Accept": "application/jupyterhub-pagination+json",
                },
                timeout=self.timeout,
            )
            response.raise_for_status()
            page = response.json()
            items = page["items"] if isinstance(page, dict) else page
            yield from items
            following = page.get("_pagination", {}).get("next") if isinstance(page, dict) else None
            if not following:
                return
            offset = int(following["offset"])


def notebook_servers_by_image(
    default_reference: str, name_prefix: str
) -> dict[str, list[str]] | None:
    """Running notebook servers by image: from the hub when Dockyard runs as its service,
    else from the engine's notebook containers; None when neither answers."""
    hub = HubServers.from_service_environment()
    if hub is not None:
        found = hub.by_image(default_reference)
        if found is not None:
            return found
    return image_engine_for_usage().running_notebook_images(name_prefix)


def notebook_servers_now(session: Session, settings: Settings) -> dict[str, list[str]] | None:
    """Running notebook servers by image (None: nobody could tell)."""
    chosen = default_image(session, "notebooks")
    default_reference = chosen.reference if chosen is not None else settings.notebook_image
    return notebook_servers_by_image(default_reference, settings.docker_name_prefix)


def usage_now(session: Session, settings: Settings, images: list[Image]) -> dict[str, ImageUsage]:
    """Who uses each of ``images`` now, by reference."""
    servers = notebook_servers_now(session, settings)
    return usage_of(session, [image.reference for image in images], servers)
