"""The ``dockyard`` command: the root group and process commands (``root.py``) and one
module per area of subcommands, each registering itself on the root group when imported
here."""

from dockyard.cli import (  # noqa: F401  (subcommands register themselves)
    clusters,
    data,
    images,
    jobs,
    prod,
)
from dockyard.cli.root import main

__all__ = ["main"]
