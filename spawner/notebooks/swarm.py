"""DockyardSwarmSpawner: the Docker notebook server as a Docker Swarm service (SwarmSpawner
underneath); only what differs on a swarm is here."""

from __future__ import annotations

import asyncio
from typing import Any

from docker.errors import APIError, NotFound
from docker.types import Mount, Resources
from dockerspawner import SwarmSpawner
from traitlets import default

from spawner.notebooks.docker import DockyardDockerSpawner, SpawnFailed
from spawner.notebooks.options import NotebookChoice


class DockyardSwarmSpawner(DockyardDockerSpawner, SwarmSpawner):
    """The same notebook server as a Swarm service.

    Services join a swarm-scoped bridge network that the hub (on the manager) reaches
    directly, so nothing is published on the host. Swarm services on Engine 20.10 cannot
    set no-new-privileges; all capabilities are dropped and the user is never root.
    """

    @default("network_name")
    def _default_network_name(self) -> str:
        return f"{self.name_prefix}-notebooks"

    @default("use_internal_ip")
    def _default_use_ip(self) -> bool:
        return True

    @property
    def mounts(self) -> list[Mount]:  # type: ignore[override]
        # SwarmSpawner mounts every volume as a bind; a named volume needs type=volume.
        return [
            Mount(target=bind["bind"], source=source, read_only=bind["mode"] == "ro",
                  type="bind" if source.startswith("/") else "volume")
            for source, bind in self.volume_binds.items()
        ]

    def apply_choice(self, choice: NotebookChoice) -> None:
        super().apply_choice(choice)
        self.extra_container_spec = {
            "user": f"{self.notebook_uid}:{self.notebook_gid}",
            "workdir": self.home_dir,
            "labels": self.object_labels(),
            "cap_drop": ["ALL"],
        }
        resources = Resources(mem_limit=choice.memory_bytes,
                              cpu_limit=int(choice.profile.cpus * 1e9))
        resources["Limits"]["Pids"] = choice.profile.pids
        self.extra_task_spec = {"resources": resources}
        self.extra_create_kwargs = {"labels": self.object_labels()}

    async def ensure_volumes(self) -> list[str]:
        await self.ensure_network()
        return await super().ensure_volumes()

    async def ensure_network(self) -> None:
        try:
            await self.docker("inspect_network", self.network_name)
        except NotFound:
            try:
                await self.docker("create_network", self.network_name, driver="bridge",
                                  scope="swarm", attachable=True,
                                  labels={"dockyard.prefix": self.name_prefix})
            except APIError as exc:
                if exc.status_code != 409:  # another spawn made it first
                    raise

    async def prepare_before_create(self, fresh: list[str]) -> None:
        # A task's container cannot be looked into before it runs, so a fresh volume is
        # handed to the notebook user first (mounted where the image's directory is, so
        # the image's content is copied in as it would be for the service).
        for volume, path in self.volumes_to_own().items():
            if volume in fresh:
                await self.give_volume_to_user(volume, path)

    async def prepare_after_create(self, obj: dict[str, Any], fresh: list[str]) -> None:
        return None

    async def start_object(self) -> None:
        # SwarmSpawner waits for the task with a back-off from 1 s to 11 s; poll briskly.
        delay = 0.1
        while True:
            task = await self.get_task()
            if not task:
                raise SpawnFailed(f"Service {self.service_name} has no task.", reason="swarm")
            state = task["Status"]["State"].lower()
            if state == "running":
                return
            if state in ("failed", "rejected", "shutdown", "complete", "orphaned"):
                raise SpawnFailed(f"Service {self.service_name} did not start: "
                                  f"{task['Status'].get('Err') or state}", reason="swarm")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    async def get_ip_and_port(self) -> tuple[str, int]:
        task = await self.get_task()
        container_id = task["Status"]["ContainerStatus"]["ContainerID"]
        info = await self.docker("inspect_container", container_id)
        return info["NetworkSettings"]["Networks"][self.network_name]["IPAddress"], self.port

    async def exit_report(self, status: Any) -> str:
        return f"The notebook service stopped before it answered: {status}"

