"""JupyterLab's Notebook Jobs (jupyter-scheduler's front end) running notebooks as Dockyard
runs: the classes named in this package's jupyter_server configuration."""

from dockyard_scheduler.api import DockyardError
from dockyard_scheduler.environments import DockyardEnvironmentManager
from dockyard_scheduler.files import DockyardJobFilesManager
from dockyard_scheduler.scheduler import DockyardExecutionManager, DockyardScheduler

__all__ = [
    "DockyardEnvironmentManager",
    "DockyardError",
    "DockyardExecutionManager",
    "DockyardJobFilesManager",
    "DockyardScheduler",
]
