"""Source connectors: run a query read-only and stream its rows."""
