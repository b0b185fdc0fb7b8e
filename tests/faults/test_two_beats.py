"""Two `retl beat` processes by mistake, with a worker: every due time of a schedule still gets
exactly one run, and neither beat trips over the other."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

import pytest

from shared.services import connections
from shared.services import syncs as sync_service
from shared.settings import get_settings
from tests.scheduler.helpers import runs_of
from tests.scheduler.test_beat_process import BIN, _start, _stop

pytestmark = [pytest.mark.slow, pytest.mark.faults, pytest.mark.timeout(120)]

INTERVAL_S = 2
TICKS = 7


def test_two_beats_make_one_run_per_due_time(
    workspace_id: str, sink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    fast = {"RETL_BEAT_INTERVAL_SECONDS": "1", "RETL_MIN_SCHEDULE_INTERVAL_SECONDS": "1"}
    for name, value in fast.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    source = connections.create(workspace_id, "source", "w", "duckdb", {"path": ":memory:"})
    destination = connections.create(workspace_id, "destination", "d", "http", {"url": sink.url})
    sync = sync_service.create(workspace_id, {
        "name": "ticks", "sourceId": source.record.id, "destinationId": destination.record.id,
        "sourceQuery": "SELECT 1 AS id", "objectName": "records",
        "fieldMappings": [{"source": "id", "destination": "id", "key": True}],
        "syncMode": "upsert", "schedule": {"type": "interval", "every": f"{INTERVAL_S}s"},
    })
    env = {**os.environ, **fast, "RETL_LOG_LEVEL": "INFO"}
    settings = get_settings()
    processes = {
        "beat-a": _start([str(BIN / "retl"), "beat"], tmp_path / "beat-a.log",
                         {**env, "RETL_HOME": str(tmp_path / "a")}),
        "beat-b": _start([str(BIN / "retl"), "beat"], tmp_path / "beat-b.log",
                         {**env, "RETL_HOME": str(tmp_path / "b")}),
        "worker": _start([str(BIN / "celery"), "-A", "worker.app", "worker",
                          "-Q", f"{settings.queue},{settings.control_queue}",
                          "--concurrency", "1", "--pool", "solo", "--loglevel", "INFO"],
                         tmp_path / "worker.log", env),
    }
    try:
        deadline = time.monotonic() + 90
        while len([r for r in runs_of(sync.id) if r.trigger == "schedule"]) < TICKS:
            for name, process in processes.items():
                assert process.poll() is None, (tmp_path / f"{name}.log").read_text()
            assert time.monotonic() < deadline, "the schedule did not fire often enough"
            time.sleep(0.2)
    finally:
        for process in processes.values():
            _stop(process)
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in processes}
    scheduled = sorted(r.scheduled_for for r in runs_of(sync.id) if r.trigger == "schedule")
    assert len(scheduled) == len(set(scheduled))
    # One run per due time: the due times keep the schedule's rhythm, none twice. (A due time
    # that finds the sync's previous run still going joins its queued run, as the README says,
    # so on a busy machine a step may be a multiple of the interval.) The first run may be a
    # catch-up of the times missed while the beats started: the rhythm is checked from the
    # second on.
    after_start = scheduled[1:]
    steps = [later - earlier for earlier, later in zip(after_start, after_start[1:], strict=False)]
    interval = dt.timedelta(seconds=INTERVAL_S)
    assert all(step > dt.timedelta(0) and step % interval == dt.timedelta(0) for step in steps), (
        scheduled, logs)
    assert steps.count(interval) >= len(steps) // 2, (scheduled, logs)
    for name in ("beat-a", "beat-b"):
        assert "Traceback" not in logs[name], logs[name]
