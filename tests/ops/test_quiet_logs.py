"""Quiet by default: real `retl beat` and `retl worker` processes, idle through several schedule
ticks and reaper passes, print no INFO line (and every line they print is JSON); the first run
that happens says so."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

import pytest

from shared.services import connections, syncs
from shared.services.auth import create_api_key
from tests.ops.processes import running
from tests.scheduler.helpers import set_next_run_at

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

TICK_S = 1
IDLE_TICKS = 6


def test_an_idle_beat_and_worker_print_nothing_at_info_and_a_scheduled_run_says_so(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "RETL_LOG_FORMAT": "json", "RETL_LOG_LEVEL": "INFO",
           "RETL_BEAT_INTERVAL_SECONDS": str(TICK_S), "RETL_REAPER_INTERVAL_SECONDS": str(TICK_S),
           "RETL_MIN_SCHEDULE_INTERVAL_SECONDS": "1", "RETL_HOME": str(tmp_path)}
    with running("beat", ["beat"], tmp_path, env) as beat, \
            running("worker", ["worker", "--concurrency", "1"], tmp_path, env) as worker:
        beat.wait_for_event("beat started")
        worker.wait_for_event("ready")
        beat_from, worker_from = beat.offset(), worker.offset()

        time.sleep(TICK_S * IDLE_TICKS)  # ticks and reaper passes that find nothing to do

        idle = beat.lines(beat_from) + worker.lines(worker_from)
        assert [line for line in idle if line["level"] not in ("warning", "error")] == [], idle
        # What compose's health check of beat reads: touched at every tick sent.
        assert (tmp_path / "beat-heartbeat").exists()

        # The same processes are alive and ticking: a sync that is due gets its run.
        sync_id = _due_sync()
        started = worker.wait_for_event("run started", timeout_s=60, sync_id=sync_id)
        assert started["trigger"] == "schedule"
    for process in (beat, worker):
        process.lines()  # every line, to the shutdown's, is JSON


def _due_sync() -> str:
    workspace_id = create_api_key("quiet").workspace_id
    source = connections.create(workspace_id, "source", "warehouse", "duckdb", {"path": ":memory:"})
    destination = connections.create(workspace_id, "destination", "hook", "http",
                                     {"url": "http://127.0.0.1:9/x"})
    sync = syncs.create(workspace_id, {
        "name": "due", "sourceId": source.record.id, "destinationId": destination.record.id,
        "sourceQuery": "SELECT 1 AS id", "objectName": "records",
        "fieldMappings": [{"source": "id", "destination": "id", "key": True}],
        "syncMode": "upsert", "schedule": {"type": "interval", "every": "1h"},
    })
    set_next_run_at(sync.id, dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
    return sync.id
