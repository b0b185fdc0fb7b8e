"""Real `celery worker` subprocesses: a run shared by two workers, and a worker killed with
SIGKILL in the middle of a run whose records still all arrive."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.db import transaction
from shared.queue import celery_app
from shared.settings import get_settings
from tests.engine.conftest import Warehouse, make_sync, wait_for_run
from tests.fakes.base import Request, Response
from tests.fakes.http_sink import FakeHttpSink

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

CELERY = str(Path(sys.executable).with_name("celery"))
LEASE_SECONDS = "3"


class SlowSink(FakeHttpSink):
    """A receiver that takes a while per request, so a run lasts long enough to interfere."""

    delay_s = 0.05

    def handle(self, request: Request) -> Response:
        time.sleep(self.delay_s)
        return super().handle(request)


class Workers:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, name: str, concurrency: int = 1) -> subprocess.Popen:
        env = {**os.environ, "RETL_LEASE_SECONDS": LEASE_SECONDS, "RETL_HEARTBEAT_SECONDS": "1"}
        log = self.log_dir / f"{name}.log"
        process = subprocess.Popen(
            [CELERY, "-A", "worker.app", "worker", "-Q", f"{os.environ['RETL_QUEUE']},{os.environ['RETL_QUEUE']}-control",
             "--concurrency", str(concurrency), "-P", "prefork", "-n", f"{name}@%h",
             "--without-gossip",
             "--without-mingle", "--without-heartbeat", "-l", "info"],
            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        self.processes[name] = process
        deadline = time.monotonic() + 30
        while "ready." not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"worker {name} did not start:\n{log.read_text()}")
            time.sleep(0.1)
        return process

    def kill(self, name: str) -> None:
        """SIGKILL the worker and its pool children: nothing gets to clean up."""
        os.killpg(self.processes[name].pid, signal.SIGKILL)
        self.processes[name].wait(timeout=10)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture
def workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workers]:
    # The reaper called from this test uses the same short lease as the workers.
    monkeypatch.setenv("RETL_LEASE_SECONDS", LEASE_SECONDS)
    get_settings.cache_clear()
    celery_app.cache_clear()
    pool = Workers(tmp_path)
    try:
        yield pool
    finally:
        pool.stop_all()
        monkeypatch.delenv("RETL_LEASE_SECONDS")
        get_settings.cache_clear()
        celery_app.cache_clear()


def _claimants(run_id: str) -> set[str]:
    with transaction() as conn:
        rows = conn.execute(
            "SELECT DISTINCT claimed_by FROM run_batches WHERE run_id = %s", (run_id,)
        ).fetchall()
    return {row[0] for row in rows}


def _trigger(setup) -> str:
    from shared.services import runs as run_service

    return run_service.trigger(setup.workspace_id, [setup.sync_id], full_refresh=False)[0].id


def test_two_workers_share_one_run(workers: Workers, workspace_id: str, warehouse: Warehouse) -> None:
    warehouse.insert(200)
    with SlowSink() as sink:
        setup = make_sync(workspace_id, {"url": warehouse.url}, sink.url)
        workers.start("first")
        workers.start("second")
        run = wait_for_run(_trigger(setup))
        assert run.status == "succeeded", run.error
        assert run.rows_written == 200
        assert len(sink.store) == 200
        assert len(_claimants(run.id)) == 2


def test_worker_killed_mid_run_loses_no_record(workers: Workers, workspace_id: str, warehouse: Warehouse) -> None:
    from worker import runs as engine

    warehouse.insert(300)
    with SlowSink() as sink:
        setup = make_sync(workspace_id, {"url": warehouse.url}, sink.url)
        workers.start("doomed")
        run_id = _trigger(setup)
        deadline = time.monotonic() + 30
        while len(sink.received) < 5:
            assert time.monotonic() < deadline, "the first worker never started writing"
            time.sleep(0.02)
        workers.kill("doomed")
        written_before = len(sink.store)
        assert written_before < 300
        workers.start("survivor")
        run = wait_for_run(run_id, timeout_s=60, poll=engine.reap)
        assert run.status == "succeeded", run.error
        assert sorted(map(int, sink.store)) == list(range(1, 301))
        assert run.rows_written == 300
        assert run.rows_failed == 0
