"""Prometheus metrics of the sync engine, counted where batches are written and runs end, and
the backlog an autoscaler scales workers on, read from Postgres when scraped.

Labels are connector types and run statuses only: never a workspace, sync or record. Under
Celery's prefork pool every process writes its counts to PROMETHEUS_MULTIPROC_DIR (set by
`retl worker --metrics-port` before this module is imported) and the worker's main process
serves their sum (`worker_registry`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

log = logging.getLogger(__name__)

ROWS_WRITTEN = Counter(
    "retl_rows_written_total", "Records a destination accepted", ["connector"]
)
ROWS_FAILED = Counter(
    "retl_rows_failed_total", "Records a destination refused or that could not be sent",
    ["connector"],
)
BATCH_WRITE_SECONDS = Histogram(
    "retl_batch_write_seconds",
    "Time to write one batch, its retries and rate-limit waits included",
    ["connector"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
RETRIES = Counter(
    "retl_write_retries_total", "Batch writes tried again after a passing failure", ["connector"]
)
RATE_LIMIT_WAITS = Counter(
    "retl_rate_limit_waits_total",
    "Waits for a rate limit: the fleet-wide limiter's, or the vendor's 429",
    ["connector"],
)
RUNS_FINISHED = Counter("retl_runs_finished_total", "Runs that ended, by status", ["status"])


class BacklogCollector:
    """Work waiting for a worker, fleet-wide, as Postgres holds it at scrape time: batches
    stored and not yet written, and runs queued. Every worker reports the same numbers; an
    autoscaler takes their max."""

    def collect(self) -> Iterator[Metric]:
        from shared.db import transaction
        from shared.repositories import runs

        batches = GaugeMetricFamily(
            "retl_backlog_batches", "Batches stored and waiting to be written (all runs)"
        )
        queued = GaugeMetricFamily("retl_runs_queued", "Runs queued and not yet started")
        try:
            with transaction() as conn:
                backlog = runs.backlog(conn)
        except Exception as exc:  # a scrape never fails because the database is away
            log.warning("reading the backlog for metrics failed: %s", exc)
            return
        batches.add_metric([], backlog.batches_waiting)
        queued.add_metric([], backlog.runs_queued)
        yield batches
        yield queued


def worker_registry() -> CollectorRegistry:
    """What `retl worker --metrics-port` serves: every pool process's counts, and the backlog."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    registry.register(BacklogCollector())
    return registry
