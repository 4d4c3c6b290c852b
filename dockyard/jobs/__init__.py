"""Jobs: definitions and runs, what may happen to a run, its token and its log."""
