"""The REST API: a Flask app factory with one blueprint per resource."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

from flask import Flask
from werkzeug.routing import BaseConverter

from api import errors, metrics
from api.routes import alerts, connections, dlq, keys, ops, runs, syncs
from shared.logs import install_redaction

# Bodies above this are refused with 413 before any parsing.
MAX_BODY_BYTES = 4 * 1024 * 1024


class VersionPrefix:
    """Serve `/v1/...` as an alias of the bare paths."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict, start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if path == "/v1" or path.startswith("/v1/"):
            environ["PATH_INFO"] = path[3:] or "/"
        return self.app(environ, start_response)


class BodyLimit:
    """Refuse a body whose declared length is over MAX_BODY_BYTES before anything reads it, the
    key check included, and close the connection rather than drain it. A chunked body (no
    length) is read here up to one byte past the limit: over it, the same 413; within it, the
    app gets it with its length, as if it had been declared."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict, start_response: Any) -> Any:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0  # the server answers 400 to a malformed length before the app sees it
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower() and not length:
            body = environ["wsgi.input"].read(MAX_BODY_BYTES + 1)
            length = len(body)
            environ.update({"wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(length)})
            environ.pop("HTTP_TRANSFER_ENCODING")
        if length <= MAX_BODY_BYTES:
            return self.app(environ, start_response)
        error = {
            "status": "413", "code": "request_entity_too_large", "title": "Request too large",
            "detail": f"the body is over the limit of {MAX_BODY_BYTES} bytes",
        }
        payload = json.dumps({"errors": [error]}).encode()
        start_response("413 Request Entity Too Large", [
            ("Content-Type", "application/json"), ("Content-Length", str(len(payload))),
            ("Connection", "close"),
        ])
        return [payload]


class SyncIdConverter(BaseConverter):
    """A sync's id in a path: any segment but `preview`, which is the unsaved sync's preview
    (`POST /syncs/preview`), so that path answers for its own methods only."""

    regex = r"(?!preview$)[^/]+"


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    install_redaction()
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY_BYTES, JSON_SORT_KEYS=False)
    if test_config:
        app.config.update(test_config)
    app.json.sort_keys = False
    app.url_map.converters["sync_id"] = SyncIdConverter
    for blueprint in (
        syncs.bp, runs.bp, dlq.bp, keys.bp, connections.destinations_bp, connections.sources_bp,
        connections.discovery_bp, alerts.bp, ops.bp,
    ):
        app.register_blueprint(blueprint)
    errors.register(app)
    metrics.instrument(app)
    app.wsgi_app = BodyLimit(VersionPrefix(app.wsgi_app))
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    return app
