"""Adapters that start containers or processes: notebook spawners and job backends.

Nothing here touches Dockyard's database; ``hub`` decides what runs, this package knows how.
"""
