"""The environments JupyterLab offers for a notebook job: the images of Dockyard's catalog
enabled for jobs (the jobs default first), each with the user's pools as compute types."""

from __future__ import annotations

import asyncio
from typing import Any

from jupyter_scheduler.environments import EnvironmentManager, EnvironmentRetrievalError
from jupyter_scheduler.models import RuntimeEnvironment

from dockyard_scheduler.api import DockyardAPI, DockyardError
from dockyard_scheduler.runs import OUTPUT_FORMATS

OUTPUT_FORMAT_LABELS = {"ipynb": "Notebook", "html": "HTML"}
# What an admin sees as well as usable images: the catalog keeps failed and retired ones.
USABLE_STATUSES = ("ready", "registered")


def runtime_environments(images: list[dict[str, Any]],
                         pools: list[dict[str, Any]]) -> list[RuntimeEnvironment]:
    """Catalog images (``GET /images?use=jobs``) and pools (``GET /pools``) as
    jupyter-scheduler's environments; an image's reference is the environment's name."""
    usable = [image for image in images
              if image.get("for_jobs") and image.get("status") in USABLE_STATUSES]
    usable.sort(key=lambda image: (not image.get("default_for_jobs"), image["reference"]))
    compute_types = [pool["name"] for pool in pools]
    environments = []
    for image in usable:
        description = (image.get("description") or "").strip()
        kernels = ", ".join(image.get("kernels") or [])
        environments.append(RuntimeEnvironment(
            name=image["reference"],
            label=f"{image['reference']} · {description}" if description else image["reference"],
            description=description or image["reference"],
            file_extensions=["ipynb"],
            output_formats=list(OUTPUT_FORMATS),
            metadata={"kernels": kernels} if kernels else {},
            compute_types=compute_types,
            default_compute_type=compute_types[0] if compute_types else None,
        ))
    return environments


class DockyardEnvironmentManager(EnvironmentManager):
    def __init__(self) -> None:
        self._api: DockyardAPI | None = None

    async def list_environments(self) -> list[RuntimeEnvironment]:
        try:
            if self._api is None:
                self._api = DockyardAPI.from_env()
            images, pools = await asyncio.gather(
                asyncio.to_thread(self._api.get, "/images", {"use": "jobs"}),
                asyncio.to_thread(self._api.get, "/pools"),
            )
        except DockyardError as exc:
            raise EnvironmentRetrievalError(str(exc)) from None
        environments = runtime_environments(images["images"], pools["pools"])
        if not environments:
            raise EnvironmentRetrievalError(
                "No image in Dockyard's catalog is enabled for jobs; ask an admin to enable one.")
        return environments

    def manage_environments_command(self) -> str:
        return ""

    def output_formats_mapping(self) -> dict[str, str]:
        return dict(OUTPUT_FORMAT_LABELS)
