"""Notebook servers: the spawners JupyterHub runs to start a user's server on an engine.

| file        | what it holds                                                        |
|-------------|----------------------------------------------------------------------|
| docker.py   | DockyardDockerSpawner: a container on one Docker engine              |
| swarm.py    | DockyardSwarmSpawner: the same as a Docker Swarm service             |
| options.py  | the spawn page's form and the server-side check of a choice          |
| progress.py | the steps of a start, for the spawn page's progress stream           |
| profiles.py | NotebookProfile, a resource profile (the settings validate with it)  |
| images.py   | NotebookImage and ImageSource, how the spawner learns what is offered |

The spawners take plain values through their traits; which one JupyterHub uses and how
it is configured from Dockyard's settings is ``hub/spawners.py``. Importing this package
imports no engine SDK (the settings import ``profiles``).
"""
