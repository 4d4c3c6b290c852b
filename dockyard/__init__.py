"""The Dockyard service: settings, database, jobs, worker, image and data catalogs, web app
and API, and the ``dockyard`` command. It runs behind JupyterHub (``hub/``) and reaches
container engines only through the adapters in ``spawner/``."""

__version__ = "0.1.0"
