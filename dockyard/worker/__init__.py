"""The worker: the loop that claims queued runs, sends them to their pool's engine, follows
them to the end, copies their logs, and runs the image catalog's builds and inspections."""
