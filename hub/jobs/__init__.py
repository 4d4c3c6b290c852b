"""Jobs: what may happen to a run (service) and the loop that moves runs forward (worker)."""
