"""The files under deploy/ query metrics retl serves: every `retl_…` name in the Grafana
dashboard and the KEDA ScaledObject is one a worker's metrics endpoint exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry, generate_latest

from shared import metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SUFFIXES = ("_bucket", "_count", "_sum")


def served_names() -> set[str]:
    """Names in the exposition of the engine's metrics and the backlog (without Postgres)."""
    registry = CollectorRegistry()
    for metric in (metrics.ROWS_WRITTEN, metrics.ROWS_FAILED, metrics.BATCH_WRITE_SECONDS,
                   metrics.RETRIES, metrics.RATE_LIMIT_WAITS, metrics.RUNS_FINISHED):
        registry.register(metric)
    text = generate_latest(registry).decode()
    names = set(re.findall(r"^# TYPE (\w+)", text, re.MULTILINE))
    return names | {"retl_backlog_batches", "retl_runs_queued"}


def referenced(text: str) -> set[str]:
    names = set()
    for name in re.findall(r"\bretl_[a-z_]+", text):
        for suffix in SUFFIXES:
            name = name.removesuffix(suffix)
        names.add(name.removesuffix("_total"))
    return names


def test_the_dashboard_and_the_scaled_object_query_served_metrics() -> None:
    served = {name.removesuffix("_total") for name in served_names()}
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    scaled = yaml.safe_load((DEPLOY / "keda-scaledobject.yaml").read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    expressions += [t["metadata"]["query"] for t in scaled["spec"]["triggers"]]

    names = referenced("\n".join(expressions))

    assert names and names <= served, names - served
    assert "retl_backlog_batches" in names
