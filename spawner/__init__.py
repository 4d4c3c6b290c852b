"""Engine adapters: how to start a notebook server, a job, an image build or inspection on one
kind of engine (Docker, Swarm, ECS, local processes).

The service (``dockyard``) decides what runs and records it; this package knows how. It
takes plain values, never Dockyard's settings object or database, and imports nothing from
``dockyard`` or ``hub`` (an import-linter contract, see ``pyproject.toml``).
"""
