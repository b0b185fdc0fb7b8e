"""A full run through real `retl api` and `retl worker` processes, read from the outside: the
JSON log lines of its start and end (and no credential, API key or record value in any line),
the worker's Prometheus metrics, and an alert delivered by the worker's Celery task, retried
after the receiver's passing failure."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from shared.services.auth import create_api_key
from tests.engine.conftest import Warehouse, warehouse  # noqa: F401 - the fixture
from tests.fakes.alert_receiver import FakeWebhook
from tests.fakes.http_sink import FakeHttpSink
from tests.ops.processes import Process, free_port, running, wait_until_answers

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SOURCE_PASSWORD = "pw-Canary-Source-5V"
SINK_TOKEN = "Bearer sink-Canary-Token-8J"
HOOK_TOKEN = "Bearer hook-Canary-Token-2W"
CANARY_EMAIL = "canary-Record-Value-{}@example.com"
CANARY_NAME = "Canary Record Name 7X"


@dataclass
class Stack:
    api: Process
    worker: Process
    url: str
    metrics_url: str
    key: str

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = requests.request(method, f"{self.url}/api/reverse-etl{path}", json=body,
                                    headers={"Authorization": f"Bearer {self.key}"}, timeout=30)
        assert response.status_code < 300, (response.status_code, response.text)
        return response.json()["data"]

    def wait_for_run(self, run_id: str, timeout_s: float = 90) -> dict[str, Any]:
        def ended() -> dict[str, Any] | None:
            run = self.call("GET", f"/runs/{run_id}")["attributes"]
            return run if run["status"] in ("succeeded", "failed", "cancelled") else None

        return self.worker.wait_for(ended, f"run {run_id} ending", timeout_s)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = requests.get(self.metrics_url, timeout=10).text
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
        }


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    key = create_api_key("canary-workspace").key
    api_port, metrics_port = free_port(), free_port()
    env = {**os.environ, "RETL_LOG_FORMAT": "json", "RETL_LOG_LEVEL": "INFO",
           "RETL_ALERT_RETRY_SECONDS": "0.2", "RETL_EGRESS_ALLOW": "127.0.0.1"}
    with running("api", ["api", "--host", "127.0.0.1", "--port", str(api_port)], tmp_path, env) as api, \
            running("worker", ["worker", "--concurrency", "2", "--metrics-port", str(metrics_port)],
                    tmp_path, env) as worker:
        url = f"http://127.0.0.1:{api_port}"
        wait_until_answers(api, f"{url}/healthz")
        worker.wait_for_event("ready")
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        wait_until_answers(worker, metrics_url)
        yield Stack(api, worker, url, metrics_url, key)
    for process in (api, worker):
        process.lines()  # to the last line printed at shutdown, every line is JSON


def people_sync(stack: Stack, warehouse: Warehouse, sink: FakeHttpSink) -> str:  # noqa: F811
    warehouse.insert(40)
    warehouse.execute("UPDATE warehouse.people SET email = format(%s, id), name = %s",
                      (CANARY_EMAIL.replace("{}", "%s"), CANARY_NAME))
    source_url = re.sub(r"^postgresql://([^:@/]+)@", rf"postgresql://\1:{SOURCE_PASSWORD}@",
                        warehouse.url)
    source = stack.call("POST", "/sources", {"name": "warehouse", "connector": "postgres",
                                             "config": {"url": source_url}})
    destination = stack.call("POST", "/destinations", {
        "name": "receiver", "connector": "http",
        "config": {"url": sink.url, "batchSize": 10, "resultsPath": "results",
                   "headers": {"Authorization": SINK_TOKEN}},
    })
    sync = stack.call("POST", "/syncs", {
        "name": "people", "sourceId": source["id"], "destinationId": destination["id"],
        "objectName": "records", "sourceQuery": "SELECT * FROM warehouse.people",
        "fieldMappings": [{"source": "id", "destination": "external_id", "key": True},
                          {"source": "email", "destination": "email"},
                          {"source": "name", "destination": "full_name"}],
        "syncMode": "upsert",
    })
    return sync["id"]


def test_a_run_logs_one_start_and_one_end_line_and_no_secret_or_record_value(
    stack: Stack, warehouse: Warehouse,  # noqa: F811
) -> None:
    with FakeHttpSink(required_headers={"Authorization": SINK_TOKEN}) as sink:
        sync_id = people_sync(stack, warehouse, sink)
        sink.reject_keys({"3", "4"}, message="refused by receiver")
        run_id = stack.call("POST", "/sync/run", {"syncId": sync_id})["id"]
        run = stack.wait_for_run(run_id)
        assert run["status"] == "succeeded", run
        assert sink.store["1"]["email"] == CANARY_EMAIL.format(1)  # the values did travel
        ended = stack.worker.wait_for_event("run ended", run_id=run_id)

    started = stack.worker.wait_for_event("run started", run_id=run_id)
    destination_id = stack.call("GET", f"/syncs/{sync_id}")["attributes"]["destination_id"]
    assert (started["sync_id"], started["destination_id"]) == (sync_id, destination_id)
    assert started["level"] == "info" and started["trigger"] == "manual"
    assert (ended["sync_id"], ended["destination_id"]) == (sync_id, destination_id)
    assert (ended["status"], ended["rows_written"], ended["rows_failed"]) == ("succeeded", 38, 2)
    assert ended["duration_s"] >= 0 and ended["error"] is None
    run_lines = [line for line in stack.worker.lines() if line.get("run_id") == run_id]
    assert [line["event"] for line in run_lines if line["level"] == "info"] == [
        "run started", "run ended"]

    logs = stack.api.text() + stack.worker.text()
    for secret in (SOURCE_PASSWORD, SINK_TOKEN.split()[1], stack.key, CANARY_NAME,
                   CANARY_EMAIL.format(1), "Canary-Record-Value"):
        assert secret not in logs, f"{secret!r} appears in the logs"


def test_a_workers_metrics_count_the_run_its_rows_and_the_backlog(
    stack: Stack, warehouse: Warehouse, database_url: str,  # noqa: F811
) -> None:
    with FakeHttpSink() as sink:
        sync_id = people_sync(stack, warehouse, sink)
        sink.reject_keys({"3", "4"})
        run_id = stack.call("POST", "/sync/run", {"syncId": sync_id})["id"]
        assert stack.wait_for_run(run_id)["status"] == "succeeded"
    # A queued run no worker was told about: the backlog an autoscaler would scale on.
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO runs (id, workspace_id, sync_id) SELECT 'retl_run_waiting',"
                     " workspace_id, id FROM syncs WHERE id = %s", (sync_id,))

    metrics = stack.worker.wait_for(
        lambda: (m := stack.metrics()).get(("retl_runs_finished_total", (("status", "succeeded"),)))
        and m, "the run counted in the metrics", timeout_s=30,
    )

    http = (("connector", "http"),)
    assert metrics[("retl_runs_finished_total", (("status", "succeeded"),))] == 1
    assert metrics[("retl_rows_written_total", http)] == 38
    assert metrics[("retl_rows_failed_total", http)] == 2
    assert metrics[("retl_batch_write_seconds_count", http)] == 4
    assert metrics[("retl_runs_queued", ())] == 1
    assert metrics[("retl_backlog_batches", ())] == 0
    assert "canary-workspace" not in requests.get(stack.metrics_url, timeout=10).text


def test_a_failing_sync_alerts_through_the_workers_task_retried_after_a_busy_receiver(
    stack: Stack, warehouse: Warehouse,  # noqa: F811
) -> None:
    with FakeHttpSink() as sink, FakeWebhook(required_headers={"Authorization": HOOK_TOKEN}) as hook:
        channel = stack.call("POST", "/alerts", {
            "name": "pager", "kind": "webhook",
            "config": {"url": hook.url + hook.path, "headers": {"Authorization": HOOK_TOKEN}},
        })
        sync_id = people_sync(stack, warehouse, sink)
        hook.fail_next(503, "busy", times=2)
        sink.fail_next(401, {"error": "token expired"}, times=1)
        run_id = stack.call("POST", "/sync/run", {"syncId": sync_id})["id"]
        assert stack.wait_for_run(run_id)["status"] == "failed"

        assert hook.arrived.wait(timeout=60), stack.worker.text()[-3000:]
        time.sleep(0.5)  # a duplicate delivery, if any, would arrive meanwhile

    (alert,) = hook.received
    assert alert["event"] == "sync_failing"
    assert alert["run"]["id"] == run_id and alert["sync"]["id"] == sync_id
    assert len(hook.requests) == 3  # two busy answers, then the delivery
    attributes = stack.call("GET", f"/alerts/{channel['id']}")["attributes"]
    assert attributes["last_delivery_status"] == "delivered"
    assert HOOK_TOKEN.split()[1] not in stack.worker.text()
