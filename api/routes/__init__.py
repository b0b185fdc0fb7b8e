"""Blueprints, one per resource; each route parses, calls one service, dumps."""

PREFIX = "/api/reverse-etl"
