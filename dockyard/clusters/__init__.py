"""Spark and Ray clusters: what a user or a run may ask for (``schemas.py``), what may
happen to a cluster on whose behalf (``service.py``) and the moves its status may make
(``states.py``). The worker starts, scales and removes them (``dockyard/worker``)."""
