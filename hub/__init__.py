"""Dockyard's control plane: web app, API, worker, catalogs and the JupyterHub integration."""

__version__ = "0.1.0"
