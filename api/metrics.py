"""Prometheus metrics of the API process, plus run and DLQ gauges read from Postgres at scrape.

Served only with RETL_METRICS_TOKEN set, to a scraper sending it as a bearer token. No label
carries a workspace's id or name: the numbers are the whole service's."""

from __future__ import annotations

import hmac
import time

from flask import Flask, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from shared.db import transaction
from shared.errors import NotFound, Unauthorized
from shared.repositories import dlq as dlq_repo
from shared.repositories import runs as run_repo
from shared.settings import get_settings

REGISTRY = CollectorRegistry()
REQUESTS = Counter(
    "retl_http_requests_total", "HTTP requests answered", ["method", "endpoint", "status"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "retl_http_request_seconds", "HTTP request latency", ["method", "endpoint"], registry=REGISTRY
)


class StateCollector:
    """Runs by status and open DLQ entries, across workspaces, as the database holds them now."""

    def collect(self):
        runs = GaugeMetricFamily("retl_runs", "Runs by status", labels=["status"])
        dlq = GaugeMetricFamily("retl_dlq_open_entries", "Open dead-letter entries by error code", labels=["error_code"])
        try:
            with transaction() as conn:
                run_counts = run_repo.count_by_status(conn)
                dlq_counts = dlq_repo.open_count_by_code(conn)
            for status, count in run_counts.items():
                runs.add_metric([status], count)
            for code, count in dlq_counts.items():
                dlq.add_metric([code], count)
        except Exception:  # a scrape never fails because the database is away
            pass
        yield runs
        yield dlq


REGISTRY.register(StateCollector())


def require_scrape_token(authorization: str | None) -> None:
    """404 while metrics are off (no RETL_METRICS_TOKEN), 401 unless the bearer token is it."""
    token = get_settings().metrics_token
    if token is None:
        raise NotFound("metrics are off: set RETL_METRICS_TOKEN and scrape with it as a bearer token")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Unauthorized("send Authorization: Bearer <RETL_METRICS_TOKEN>")


def instrument(app: Flask) -> None:
    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _record(response):
        endpoint = request.endpoint or "unknown"
        REQUESTS.labels(request.method, endpoint, str(response.status_code)).inc()
        if "started" in g:
            LATENCY.labels(request.method, endpoint).observe(time.perf_counter() - g.started)
        return response
