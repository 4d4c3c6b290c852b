"""Dockyard inside JupyterHub: the hub's configuration, login, landing page and the
spawner's view of the image catalog. Nothing else imports this package; JupyterHub loads
it through ``config/jupyterhub_config.py``."""
