"""A resource profile of a notebook server (memory, CPUs, processes), as the spawn page offers it.

Defined once, here: the settings validate ``DOCKYARD_NOTEBOOK_PROFILES`` with this type, and
the hub configuration hands the spawner the same fields as plain values. A frozen pydantic
model rather than a dataclass, so that a wrong profile in the settings is reported with
the same words as any other setting.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class NotebookProfile(BaseModel):
    """Resources of a notebook server, chosen on the spawn page."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$", description="Name sent by the form.")
    description: str = Field("", max_length=200, description="What the spawn page shows.")
    memory: str = Field(pattern=r"^[0-9]+[KMGT]$", description="Memory limit, e.g. 2G.")
    cpus: float = Field(gt=0, le=256, description="CPU limit, e.g. 1 or 0.5.")
    pids: int = Field(1024, ge=64, le=65536, description="Most processes in the container.")
