"""Fake vendor servers on 127.0.0.1 that speak each vendor's documented HTTP API."""
