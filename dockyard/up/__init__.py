"""``dockyard up``: one command that runs Dockyard on this machine, and stops it at once."""
