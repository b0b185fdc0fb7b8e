"""Operations: liveness, readiness, Prometheus metrics (with RETL_METRICS_TOKEN) and the OpenAPI
document; no API key needed."""

from __future__ import annotations

import redis
from flask import Blueprint, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.metrics import REGISTRY, require_scrape_token
from api.openapi import openapi_document
from shared.db import transaction
from shared.settings import get_settings

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    checks: dict[str, str] = {}
    try:
        with transaction() as conn:
            conn.execute("SELECT 1")
        checks["postgres"] = "ok"
    except Exception as exc:  # readiness reports, it does not raise
        checks["postgres"] = f"error: {type(exc).__name__}"
    try:
        client = redis.Redis.from_url(get_settings().require_redis_url(), socket_timeout=2)
        client.ping()
        client.close()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return jsonify({"status": "ok" if ready else "unavailable", "checks": checks}), 200 if ready else 503


@bp.get("/metrics")
def metrics():
    require_scrape_token(request.headers.get("Authorization"))
    return Response(generate_latest(REGISTRY), mimetype=CONTENT_TYPE_LATEST)


@bp.get("/api/openapi.json")
def openapi():
    return jsonify(openapi_document())
