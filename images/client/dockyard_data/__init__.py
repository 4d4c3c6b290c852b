"""Dockyard's data client: store and load dataframes with the batch-ID pattern.

Inside Dockyard containers it is configured from the environment (``DOCKYARD_URL``,
``DOCKYARD_TOKEN``); elsewhere set those two variables.
"""

from dockyard_data.config import ClientConfig

__all__ = ["ClientConfig"]
__version__ = "0.1.0"
