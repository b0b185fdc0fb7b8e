"""The `retl` command: the whole service on one machine, or one process each for a fleet."""
