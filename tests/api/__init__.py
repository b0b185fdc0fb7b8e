"""Tests of the public REST API, through the Flask test client and a real HTTP server."""
