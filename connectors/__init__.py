"""Connectors: sources that yield rows and destinations that accept batches of records."""
