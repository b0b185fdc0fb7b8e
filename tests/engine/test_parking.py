"""Batches that must wait on their destination give their process back: parked in Postgres with
their tries and a due time, shown on the run as `waiting_until`, written when due; a payload
that is not data is refused."""

from __future__ import annotations

import datetime as dt
import os
import pickle
from pathlib import Path

import pytest

from shared.db import transaction
from shared.services import dlq as dlq_service
from tests.engine.conftest import EngineDriver, Warehouse, get_run
from tests.fakes.http_sink import FakeHttpSink
from worker.destinations import destination_for, redis_client

pytestmark = pytest.mark.timeout(120)


def _batch(run_id: str) -> dict:
    with transaction() as conn:
        row = conn.execute(
            "SELECT status, tries, parkings, not_before, last_error, attempts FROM run_batches"
            " WHERE run_id = %s ORDER BY batch_no LIMIT 1",
            (run_id,),
        ).fetchone()
    return dict(zip(["status", "tries", "parkings", "not_before", "last_error", "attempts"],
                    row, strict=True))


def test_a_long_retry_after_parks_the_batch_and_the_run_says_until_when(
    driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink
) -> None:
    warehouse.insert(10)
    sink.fail_next(429, {"error": "slow down"}, {"Retry-After": "30"})
    run = driver.run(people_sync())
    assert run.status == "running"
    assert len(driver.parked) == 1 and driver.pending == []
    assert run.waiting_until is not None
    ahead = (run.waiting_until - dt.datetime.now(dt.UTC)).total_seconds()
    assert 20 < ahead <= 31
    batch = _batch(run.id)
    assert (batch["status"], batch["tries"], batch["parkings"]) == ("pending", 1, 1)
    assert "slow down" in batch["last_error"]
    assert sink.store == {}

    driver.wake_parked()
    driver.drain()
    run = get_run(run.id)
    assert run.status == "succeeded"
    assert run.waiting_until is None
    assert (run.rows_written, len(sink.store)) == (10, 10)
    assert _batch(run.id)["tries"] == 1  # the try that was answered 429


def test_a_retry_after_pauses_the_destination_for_every_batch(
    driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink
) -> None:
    warehouse.insert(30)  # three batches of ten
    sink.fail_next(429, {"error": "slow down"}, {"Retry-After": "30"})
    run = driver.run(people_sync())
    assert run.status == "running"
    assert len(driver.parked) == 3
    assert len(sink.requests) == 1, "the other batches waited without asking again"
    with transaction() as conn:
        tries = [row[0] for row in conn.execute(
            "SELECT tries FROM run_batches WHERE run_id = %s ORDER BY batch_no", (run.id,)
        )]
    assert sorted(tries) == [0, 0, 1]
    driver.wake_parked()
    driver.drain()
    run = get_run(run.id)
    assert (run.status, run.rows_written, len(sink.store)) == ("succeeded", 30, 30)


def test_tries_count_across_parkings_and_exhausted_records_go_to_the_dlq(
    driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink
) -> None:
    warehouse.insert(10)
    sink.fail_next(429, {"error": "over quota"}, {"Retry-After": "30"}, times=100)
    setup = people_sync()
    run = driver.run(setup)
    parkings = 0
    while driver.parked:
        assert get_run(run.id).waiting_until is not None
        parkings += 1
        assert parkings < 10, "the policy's attempts must end the parkings"
        driver.wake_parked()
        driver.drain()
    run = get_run(run.id)
    assert run.status == "failed"
    assert "unavailable after retries" in (run.error or "")
    assert parkings == 4  # five tries in all (RetryPolicy.attempts), four waits between them
    assert len(sink.requests) == 5
    assert (run.rows_written, run.rows_failed) == (0, 10)
    entries = dlq_service.list_page(setup.workspace_id, sync_id=setup.sync_id, resolved=False,
                                    cursor=None, limit=50).items
    assert len(entries) == 10
    assert {e.error_code for e in entries} == {"RATE_LIMIT"}
    assert all("over quota" in e.message for e in entries)


def test_a_batch_that_finds_no_free_slot_is_parked_without_spending_a_try(
    driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink
) -> None:
    warehouse.insert(10)
    setup = people_sync(destination_config={"maxConcurrency": 1})
    with transaction() as conn:
        from shared.repositories import connections

        record = connections.get_by_id(conn, setup.destination_id)
    _, limiter = destination_for(record)
    held = limiter.try_acquire_slot()  # another write holds the destination's only slot
    assert held is not None
    run = driver.run(setup)
    assert run.status == "running"
    assert len(driver.parked) == 1
    batch = _batch(run.id)
    assert (batch["status"], batch["tries"]) == ("pending", 0)
    assert sink.requests == []

    limiter.release_slot(held)
    driver.wake_parked()
    driver.drain()
    run = get_run(run.id)
    assert (run.status, run.rows_written, len(sink.store)) == ("succeeded", 10, 10)


def test_a_rate_wait_longer_than_a_task_sleeps_parks_the_batch(
    driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink
) -> None:
    warehouse.insert(20)  # two batches; one request every 10 s
    setup = people_sync(destination_config={"rateLimitPerSecond": 0.1})
    run = driver.run(setup)
    assert run.status == "running"
    assert len(sink.requests) == 1
    assert len(driver.parked) == 1
    assert get_run(run.id).waiting_until is not None
    redis_client().delete(f"retl:limit:{setup.destination_id}:window")  # the allowance renews
    driver.wake_parked()
    driver.drain()
    run = get_run(run.id)
    assert (run.status, run.rows_written, len(sink.store)) == ("succeeded", 20, 20)


class _Exploit:
    """Unpickling this runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_in_run_batches_is_refused_and_never_run(
    driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink, tmp_path: Path
) -> None:
    warehouse.insert(10)
    run_id = driver.trigger(people_sync())
    assert driver.engine.execute_run(run_id) is None
    marker = tmp_path / "pwned"
    crafted = pickle.dumps([("1", {"external_id": _Exploit(marker)})])
    with transaction() as conn:
        conn.execute("UPDATE run_batches SET payload = %s WHERE run_id = %s", (crafted, run_id))
    driver.drain()
    run = get_run(run_id)
    assert not marker.exists()
    assert run.status == "failed"
    assert "refused" in (run.error or "") and "not msgpack data" in (run.error or "")
    assert sink.store == {}


def test_a_run_over_the_workspace_cap_stays_queued_and_starts_when_a_place_frees(
    driver: EngineDriver, workspace_id: str, warehouse: Warehouse, sink: FakeHttpSink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from shared.settings import get_settings
    from tests.engine.conftest import make_sync

    monkeypatch.setenv("RETL_MAX_RUNS_PER_WORKSPACE", "1")
    get_settings.cache_clear()
    rung: list[str] = []
    monkeypatch.setattr(driver.dispatch, "enqueue_run", lambda run_id, countdown=0.0: rung.append(run_id))
    try:
        warehouse.insert(20)
        first = make_sync(workspace_id, {"url": warehouse.url}, sink.url)
        second = make_sync(workspace_id, {"url": warehouse.url}, sink.url,
                           destination_config={"url": sink.url + "/second"})
        first_run, second_run = driver.trigger(first), driver.trigger(second)
        assert driver.engine.execute_run(first_run) is None  # planned, its batches wait
        assert driver.engine.execute_run(second_run) is None  # no message left waiting
        assert get_run(second_run).status == "queued"
        assert rung == []
        driver.drain()
        assert get_run(first_run).status == "succeeded"
        assert rung == [second_run], "the end of the first run rings the queued one"
        assert driver.engine.execute_run(second_run) is None
        driver.drain()
        assert get_run(second_run).status == "succeeded"
    finally:
        monkeypatch.delenv("RETL_MAX_RUNS_PER_WORKSPACE")
        get_settings.cache_clear()


def test_a_planner_handed_back_more_often_than_a_batch_is_tried_fails_the_run(
    driver: EngineDriver, people_sync, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from connectors.errors import RetryableError
    from worker import planner
    from worker.executor import MustWait, RetryPolicy

    def quota_exhausted(*_args, **_kwargs):
        raise MustWait(30.0, 1, RetryableError("REQUEST_LIMIT_EXCEEDED: quota used up"))

    monkeypatch.setattr(planner, "call_or_must_wait", quota_exhausted)
    warehouse.insert(5)
    run_id = driver.trigger(people_sync())
    for _ in range(RetryPolicy().attempts):
        assert driver.engine.execute_run(run_id) is None
        assert get_run(run_id).status == "running"  # handed back, waiting for its lease
        with transaction() as conn:  # the wait is over
            conn.execute("UPDATE runs SET lease_expires_at = now() WHERE id = %s", (run_id,))
    assert driver.engine.execute_run(run_id) is None
    run = get_run(run_id)
    assert run.status == "failed"
    assert "the destination is unavailable" in run.error and "quota used up" in run.error
