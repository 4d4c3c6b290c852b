"""Images on a Docker engine: building a context (``build``), the catalog's engine
operations (``engine``: facts, builds, inspections), the one-off inspection container
(``inspect``) and the plain values they answer with (``facts``)."""
