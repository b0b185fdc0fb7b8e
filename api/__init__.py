"""The REST API: a Flask app factory with one blueprint per resource."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask

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


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    install_redaction()
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY_BYTES, JSON_SORT_KEYS=False)
    if test_config:
        app.config.update(test_config)
    app.json.sort_keys = False
    for blueprint in (
        syncs.bp, runs.bp, dlq.bp, keys.bp, connections.destinations_bp, connections.sources_bp,
        connections.discovery_bp, alerts.bp, ops.bp,
    ):
        app.register_blueprint(blueprint)
    errors.register(app)
    metrics.instrument(app)
    app.wsgi_app = VersionPrefix(app.wsgi_app)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    return app
