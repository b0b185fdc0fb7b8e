"""The reaper finds runs and batches that lost their message or their worker, in one process."""

from __future__ import annotations

import time

from shared.db import transaction
from shared.repositories import engine as repo
from tests.engine.conftest import EngineDriver, Warehouse, get_run
from tests.fakes.http_sink import FakeHttpSink


def test_a_queued_run_whose_message_was_lost_is_enqueued_again(driver: EngineDriver, people_sync, warehouse: Warehouse, monkeypatch) -> None:
    warehouse.insert(3)
    setup = people_sync()
    run_id = driver.trigger(setup)  # the doorbell never rang: enqueueing is switched off
    rung: list[str] = []
    monkeypatch.setattr(driver.dispatch, "enqueue_run", rung.append)
    report = driver.engine.reap()
    assert rung == [run_id] and report.runs_enqueued == [run_id]
    assert driver.execute(run_id).status == "succeeded"


def test_a_planner_that_died_is_replaced_after_its_lease(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink, monkeypatch) -> None:
    warehouse.insert(12)
    setup = people_sync()
    run_id = driver.trigger(setup)
    with transaction() as conn:
        dead = repo.take_lease(conn, run_id, "a-worker-that-died", 0.1)
    # While the dead planner's lease runs, nobody else may take the run over.
    retry_in = driver.engine.execute_run(run_id)
    assert retry_in is not None and retry_in > 0
    time.sleep(0.2)
    rung: list[str] = []
    monkeypatch.setattr(driver.dispatch, "enqueue_run", rung.append)
    driver.engine.reap()
    assert rung == [run_id]
    run = driver.execute(run_id)
    assert run.status == "succeeded"
    assert run.fencing_token == dead.fencing_token + 1
    assert len(sink.store) == 12


def test_a_batch_whose_writer_died_is_written_by_another(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink) -> None:
    warehouse.insert(20)
    setup = people_sync()
    run_id = driver.trigger(setup)
    driver.engine.execute_run(run_id)
    lost, = driver.pending[:1]
    driver.pending = driver.pending[1:]
    with transaction() as conn:
        assert repo.claim_batch(conn, lost[0], lost[1], "a-worker-that-died", 0.1) is not None
    driver.drain()
    assert get_run(run_id).status == "running"
    time.sleep(0.2)
    report = driver.engine.reap()
    assert report.batches_enqueued == 1
    driver.drain()
    run = get_run(run_id)
    assert run.status == "succeeded"
    assert (run.rows_written, len(sink.store)) == (20, 20)


def test_one_run_per_sync_at_a_time(driver: EngineDriver, people_sync, warehouse: Warehouse) -> None:
    warehouse.insert(10)
    setup = people_sync()
    first = driver.trigger(setup)
    driver.engine.execute_run(first)  # planned, batches not written yet: still running
    second = driver.trigger(setup)
    assert second != first
    assert driver.engine.execute_run(second) is not None  # asked to wait
    assert get_run(second).status == "queued"
    driver.drain()
    assert get_run(first).status == "succeeded"
    assert driver.execute(second).status == "succeeded"


def test_a_run_queued_behind_a_running_one_is_not_rung_again_until_the_sync_is_free(
    driver: EngineDriver, people_sync, warehouse: Warehouse, monkeypatch
) -> None:
    warehouse.insert(3)
    setup = people_sync()
    first = driver.trigger(setup)
    with transaction() as conn:
        repo.take_lease(conn, first, "a-busy-worker", 60)
    second = driver.trigger(setup)
    rung: list[str] = []
    monkeypatch.setattr(driver.dispatch, "enqueue_run", rung.append)
    driver.engine.reap()
    assert second not in rung  # its own message is still waiting for the sync
