"""The one place where errors become HTTP answers in the documented error envelope."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from api.http import InvalidInput
from shared.errors import ServiceError

log = logging.getLogger(__name__)

_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Request too large",
    422: "Invalid input",
    500: "Internal error",
    503: "Unavailable",
}


def error_object(status: int, code: str, detail: str, source: dict[str, str] | None = None) -> dict:
    error: dict[str, Any] = {
        "status": str(status),
        "code": code,
        "title": _TITLES.get(status, "Error"),
        "detail": detail,
    }
    if source is not None:
        error["source"] = source
    return error


def _flatten(messages: Any, path: str = "") -> list[tuple[str, str]]:
    """Marshmallow's nested messages as (JSON pointer, message) pairs."""
    if isinstance(messages, dict):
        pairs: list[tuple[str, str]] = []
        for key, value in messages.items():
            name = "" if key == "_schema" else f"/{key}"
            pairs.extend(_flatten(value, path + name))
        return pairs
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        return [(path, m) for m in messages]
    if isinstance(messages, list):
        return [pair for m in messages for pair in _flatten(m, path)]
    return [(path, str(messages))]


def _respond(errors: list[dict], status: int):
    return jsonify({"errors": errors}), status


def register(app: Flask) -> None:
    @app.errorhandler(InvalidInput)
    def _invalid(exc: InvalidInput):
        errors = []
        for pointer, message in _flatten(exc.messages):
            source = {"pointer": pointer or "/"}
            if exc.location == "query":
                source["parameter"] = pointer.lstrip("/").split("/")[0]
            errors.append(error_object(422, "validation_error", message, source))
        return _respond(errors, 422)

    @app.errorhandler(ServiceError)
    def _service(exc: ServiceError):
        source = {"pointer": exc.pointer or "/"} if exc.pointer is not None else None
        return _respond([error_object(exc.status, exc.code, exc.detail, source)], exc.status)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        status = exc.code or 500
        code = (exc.name or "error").lower().replace(" ", "_")
        response, _ = _respond([error_object(status, code, exc.description or exc.name)], status)
        for name, value in exc.get_headers():  # e.g. the Allow of a 405
            if name.lower() != "content-type":
                response.headers[name] = value
        return response, status

    @app.errorhandler(psycopg.OperationalError)
    def _database_away(exc: psycopg.OperationalError):
        # The pool's connections were cut or Postgres cannot be reached (a checkout that waited
        # RETL_DATABASE_WAIT_SECONDS, PoolTimeout, is one too). Broken connections are discarded
        # and new ones opened when Postgres answers again: the next requests recover by themselves.
        log.warning("database unavailable: %s", type(exc).__name__)
        response, status = _respond(
            [error_object(503, "database_unavailable", "the database cannot be reached; try again shortly")], 503
        )
        response.headers["Retry-After"] = "5"
        return response, status

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return _respond([error_object(500, "internal_error", "an unexpected error happened")], 500)
