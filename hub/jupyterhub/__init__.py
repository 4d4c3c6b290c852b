"""Dockyard's pieces that run inside JupyterHub: the authenticator and hub-side hooks."""
