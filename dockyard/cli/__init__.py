"""The ``dockyard`` command: the root group and process commands (``root.py``) and one
module per area of subcommands, each registering itself on the root group when imported
here."""

from dockyard.cli import data, images, jobs, prod  # noqa: F401  (subcommands register themselves)
from dockyard.cli.root import main

__all__ = ["main"]
