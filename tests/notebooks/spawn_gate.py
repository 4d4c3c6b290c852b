"""Extra JupyterHub configuration of the notebook tests' hub (DOCKYARD_HUB_EXTRA_CONFIG).

A spawn waits just before JupyterHub calls ``Spawner.start()`` while the gate file
``HOME/spawn-gates/<user>`` exists, and says so by creating ``<user>.held`` next to it. The
hub counts the spawn pending all that time, so a test can open the progress stream at the
moment a person opening the spawn page early would, without racing the hub.
"""

# ruff: noqa: F821  (``c`` is provided by the hub's configuration loader)
import asyncio
import os
from pathlib import Path
from typing import Any

GATES = Path(os.environ["DOCKYARD_HOME"]) / "spawn-gates"


async def _wait_at_the_gate(spawner: Any) -> None:
    gate = GATES / spawner.user.name
    if not gate.exists():
        return
    (GATES / f"{spawner.user.name}.held").touch()
    while gate.exists():
        await asyncio.sleep(0.05)


c.Spawner.pre_spawn_hook = _wait_at_the_gate
