"""Real `retl worker` processes sharing the fleet: a throttled destination does not keep another
sync's run queued, a large run does not starve a small one, and a worker stopped with SIGTERM
hands back what it holds so another worker carries on at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared.db import transaction
from shared.queue import celery_app
from shared.services import connections, syncs
from shared.services import runs as run_service
from shared.settings import get_settings
from tests.engine.conftest import Warehouse, get_run, make_sync, wait_for_run
from tests.fakes.base import Request, Response
from tests.fakes.http_sink import FakeHttpSink
from tests.fakes.salesforce import FakeSalesforce

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

ROOT = Path(__file__).resolve().parents[2]


class SlowSink(FakeHttpSink):
    """A receiver that takes `delay_s` per request."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s

    def handle(self, request: Request) -> Response:
        time.sleep(self.delay_s)
        return super().handle(request)


class Fleet:
    """`retl worker` processes started as an operator would."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *, concurrency: int = 2, grace: float = 30,
              env: dict[str, str] | None = None) -> subprocess.Popen:
        log = self.log_dir / f"{name}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", "worker", "--concurrency", str(concurrency),
             "--grace", str(grace)],
            env={**os.environ, **(env or {})}, stdout=log.open("w"), stderr=subprocess.STDOUT,
            start_new_session=True, cwd=ROOT,
        )
        self.processes[name] = process
        deadline = time.monotonic() + 40
        while "ready." not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"worker {name} did not start:\n{log.read_text()}")
            time.sleep(0.1)
        return process

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text()

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        for process in self.processes.values():
            process.wait(timeout=10)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    get_settings.cache_clear()
    celery_app.cache_clear()
    workers = Fleet(tmp_path)
    try:
        yield workers
    finally:
        workers.stop_all()
        get_settings.cache_clear()
        celery_app.cache_clear()


def _trigger(setup) -> str:
    return run_service.trigger(setup.workspace_id, [setup.sync_id], full_refresh=False)[0].id


def _wait_until(what: str, check: Callable[[], bool], timeout_s: float = 40) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.1)


# -- a throttled destination ---------------------------------------------------------------------


def test_a_destination_answering_429_does_not_keep_another_syncs_run_queued(
    fleet: Fleet, workspace_id: str, warehouse: Warehouse
) -> None:
    warehouse.insert(200)
    with FakeHttpSink() as throttled, FakeHttpSink() as healthy:
        throttled.fail_next(429, {"error": "slow down"}, {"Retry-After": "30"}, times=100_000)
        sync_a = make_sync(workspace_id, {"url": warehouse.url}, throttled.url)
        sync_b = make_sync(workspace_id, {"url": warehouse.url}, healthy.url)
        fleet.start("worker", concurrency=2)
        run_a = _trigger(sync_a)
        _wait_until("run A waits", lambda: get_run(run_a).waiting_until is not None)
        run_b = wait_for_run(_trigger(sync_b), timeout_s=30)
        assert run_b.status == "succeeded", run_b.error
        assert len(healthy.store) == 200
        a = get_run(run_a)
        assert a.status == "running" and a.waiting_until is not None
        assert throttled.store == {}


def test_a_salesforce_org_over_its_request_limit_does_not_keep_another_syncs_run_queued(
    fleet: Fleet, workspace_id: str, warehouse: Warehouse
) -> None:
    warehouse.insert(200)
    with FakeSalesforce() as org, FakeHttpSink() as healthy:
        org.api_limit = 0  # every call answers 403 REQUEST_LIMIT_EXCEEDED
        source = connections.create(workspace_id, "source", "sf-warehouse", "postgres",
                                    {"url": warehouse.url})
        destination = connections.create(
            workspace_id, "destination", "org", "salesforce",
            {"instanceUrl": org.url, "accessToken": org.access_token},
        )
        sync_a = syncs.create(workspace_id, {
            "name": "accounts", "sourceId": source.record.id,
            "destinationId": destination.record.id, "objectName": "Account",
            "sourceQuery": "SELECT * FROM warehouse.people", "syncMode": "upsert",
            "fieldMappings": [{"source": "id", "destination": "External_Id__c", "key": True},
                              {"source": "name", "destination": "Name"}],
        })
        sync_b = make_sync(workspace_id, {"url": warehouse.url}, healthy.url)
        fleet.start("worker", concurrency=2)
        run_a = run_service.trigger(workspace_id, [sync_a.id], full_refresh=False)[0].id
        _wait_until("run A waits", lambda: get_run(run_a).waiting_until is not None)
        run_b = wait_for_run(_trigger(sync_b), timeout_s=30)
        assert run_b.status == "succeeded", run_b.error
        assert len(healthy.store) == 200
        a = get_run(run_a)
        assert a.status == "running" and a.waiting_until is not None
        assert org.records("Account") == []


# -- fair share ----------------------------------------------------------------------------------


def test_a_small_run_is_not_queued_behind_a_large_one(
    fleet: Fleet, workspace_id: str, warehouse: Warehouse
) -> None:
    warehouse.insert(3_000)  # 300 batches of ten at 50 ms: 15 s of writing on one process
    with SlowSink(0.05) as slow, FakeHttpSink() as quick:
        large = make_sync(workspace_id, {"url": warehouse.url}, slow.url)
        small = make_sync(workspace_id, {"url": warehouse.url}, quick.url,
                          query="SELECT * FROM warehouse.people WHERE id <= 100")
        fleet.start("worker", concurrency=2)
        large_run = _trigger(large)
        _wait_until("the large run writes", lambda: len(slow.store) >= 100)
        small_run = wait_for_run(_trigger(small), timeout_s=60)
        assert small_run.status == "succeeded", small_run.error
        assert len(quick.store) == 100
        assert get_run(large_run).status == "running", "the small run finished first"
        assert len(slow.store) < 3_000
        done = wait_for_run(large_run, timeout_s=90)
        assert (done.status, done.rows_written, len(slow.store)) == ("succeeded", 3_000, 3_000)


# -- graceful scale-down -------------------------------------------------------------------------


def _claims_of(run_id: str) -> dict[str, int]:
    with transaction() as conn:
        return dict(conn.execute(
            "SELECT claimed_by, count(*) FROM run_batches WHERE run_id = %s AND status = 'running'"
            " GROUP BY claimed_by", (run_id,),
        ).fetchall())


def test_a_worker_stopped_with_sigterm_hands_its_batches_back_at_once(
    fleet: Fleet, workspace_id: str, warehouse: Warehouse
) -> None:
    warehouse.insert(1_000)
    # Claims and leases that are not handed back would hold the run for two minutes.
    env = {"RETL_LEASE_SECONDS": "120"}
    with SlowSink(0.05) as sink:
        setup = make_sync(workspace_id, {"url": warehouse.url}, sink.url)
        first = fleet.start("first", concurrency=1, grace=20, env=env)
        fleet.start("second", concurrency=1, grace=20, env=env)
        run_id = _trigger(setup)
        _wait_until("both workers write", lambda: len(sink.store) >= 100 and len(
            {owner.rsplit(":", 1)[1] for owner in _batch_writers(run_id)}) == 2)
        first.send_signal(signal.SIGTERM)  # the main process, as an autoscaler stops it
        assert first.wait(timeout=30) == 0, fleet.log("first")
        run = wait_for_run(run_id, timeout_s=60)
        assert run.status == "succeeded", run.error
        assert (run.rows_written, len(sink.store)) == (1_000, 1_000)
        assert _claims_of(run_id) == {}


def _batch_writers(run_id: str) -> set[str]:
    with transaction() as conn:
        return {row[0] for row in conn.execute(
            "SELECT DISTINCT claimed_by FROM run_batches WHERE run_id = %s"
            " AND claimed_by IS NOT NULL", (run_id,),
        )}


def test_a_planner_stopped_with_sigterm_hands_its_run_over_and_every_record_is_planned_once(
    fleet: Fleet, workspace_id: str, warehouse: Warehouse
) -> None:
    warehouse.insert(10_000)
    # A source that takes about five seconds to read, so the planner is stopped mid-way.
    warehouse.execute(
        "CREATE FUNCTION warehouse.slowly(i integer) RETURNS integer LANGUAGE plpgsql AS"
        " $$ BEGIN IF i % 100 = 0 THEN PERFORM pg_sleep(0.05); END IF; RETURN i; END $$"
    )
    env = {"RETL_LEASE_SECONDS": "120"}
    with FakeHttpSink() as sink:
        setup = make_sync(
            workspace_id, {"url": warehouse.url}, sink.url,
            query="SELECT warehouse.slowly(id) AS id, email, name FROM warehouse.people",
            destination_config={"batchSize": 100},
        )
        first = fleet.start("first", concurrency=1, grace=20, env=env)
        run_id = _trigger(setup)
        _wait_until("the first worker plans", lambda: get_run(run_id).rows_read >= 1_000)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0, fleet.log("first")
        assert "handed back" in fleet.log("first")
        fleet.start("second", concurrency=1, grace=20, env=env)
        run = wait_for_run(run_id, timeout_s=90)
        assert run.status == "succeeded", run.error
        assert len(sink.store) == 10_000
        # Planned once: the records written before the hand-over are unchanged to the planner
        # that took over, every other record is written by it.
        assert run.rows_added + run.rows_changed + run.rows_unchanged == 10_000
        assert run.rows_written + run.rows_failed == run.rows_added + run.rows_changed
        assert run.rows_written > 0
