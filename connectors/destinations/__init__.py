"""Destination connectors: one module per vendor."""
