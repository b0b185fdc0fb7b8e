"""Runs that send every row (first run, full refresh) read the source once: key, hash and row
together. Same results as the two-pass path: every row exactly once, counts, duplicate and
null keys, mirror removals, and a planner that dies mid-run is replaced without loss."""

from __future__ import annotations

from collections import Counter

import pytest

from connectors.sources.postgres import PostgresSource
from shared.db import transaction
from shared.repositories import engine as repo
from shared.services import dlq as dlq_service
from tests.engine.conftest import EngineDriver, Warehouse, get_run
from tests.fakes.http_sink import FakeHttpSink


def _sent(sink: FakeHttpSink) -> Counter[str]:
    return Counter(str(r["external_id"]) for batch in sink.received for r in batch.records)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often each read of the Postgres source ran."""
    calls: Counter[str] = Counter()
    for name in ("stream_key_hash_copy", "stream_rows_for_keys", "stream_rows_with_hashes"):
        original = getattr(PostgresSource, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            yield from _original(self, *args, **kwargs)

        monkeypatch.setattr(PostgresSource, name, counted)
    return calls


def test_first_run_reads_the_source_once_and_sends_every_row_once(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink, reads: Counter[str]) -> None:
    warehouse.insert(95)
    run = driver.run(people_sync())
    assert run.status == "succeeded"
    assert reads == Counter({"stream_rows_with_hashes": 1})
    assert _sent(sink) == Counter(str(i) for i in range(1, 96))
    assert (run.rows_read, run.rows_added, run.rows_changed, run.rows_unchanged) == (95, 95, 0, 0)
    assert (run.rows_written, run.rows_failed) == (95, 0)
    assert sink.store["7"] == {"external_id": 7, "email": "user7@example.com", "full_name": "User 7"}


def test_the_second_run_diffs_against_what_the_first_one_accepted(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink, reads: Counter[str]) -> None:
    warehouse.insert(30)
    setup = people_sync()
    driver.run(setup)
    warehouse.execute("UPDATE warehouse.people SET name = 'Changed' WHERE id IN (4, 22)")
    sink.received.clear()
    reads.clear()
    run = driver.run(setup)
    assert reads == Counter({"stream_key_hash_copy": 1, "stream_rows_for_keys": 1})
    assert _sent(sink) == Counter({"4": 1, "22": 1})
    assert (run.rows_added, run.rows_changed, run.rows_unchanged) == (0, 2, 28)


def test_full_refresh_resends_every_row_once_with_its_change_class(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink, reads: Counter[str]) -> None:
    warehouse.insert(40)
    setup = people_sync()
    driver.run(setup)
    warehouse.execute("UPDATE warehouse.people SET email = 'x@y' WHERE id = 12")
    warehouse.insert(3, start=41)
    sink.received.clear()
    reads.clear()
    run = driver.run(setup, full_refresh=True)
    assert reads == Counter({"stream_rows_with_hashes": 1})
    assert _sent(sink) == Counter(str(i) for i in range(1, 44))
    assert (run.rows_added, run.rows_changed, run.rows_unchanged) == (3, 1, 39)
    assert run.rows_written == 43
    # The snapshot took the new hashes: nothing is left to send.
    sink.received.clear()
    assert driver.run(setup).rows_written == 0
    assert sink.received == []


def test_mirror_full_refresh_deletes_what_left_the_result(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink) -> None:
    warehouse.insert(15)
    setup = people_sync(mode="mirror")
    driver.run(setup)
    warehouse.execute("DELETE FROM warehouse.people WHERE id IN (3, 9)")
    run = driver.run(setup, full_refresh=True)
    assert run.status == "succeeded"
    assert run.rows_removed == 2
    assert sorted(sink.store, key=int) == [str(i) for i in range(1, 16) if i not in (3, 9)]
    with transaction() as conn:
        left = conn.execute(
            "SELECT count(*) FROM sync_snapshots WHERE sync_id = %s", (setup.sync_id,)
        ).fetchone()[0]
    assert left == 13


def test_duplicate_keys_across_batches_keep_the_first_row(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink) -> None:
    warehouse.insert(25)
    # Batches of 10: the second occurrences of 3 land in later batches, and of 26 in the same.
    warehouse.execute(
        "INSERT INTO warehouse.people (id, email, name) VALUES (3, 'late@x', 'Late'),"
        " (NULL, 'n@x', 'N'), (26, 'first@x', 'First'), (26, 'second@x', 'Second'),"
        " (3, 'later@x', 'Later')"
    )
    setup = people_sync()
    run = driver.run(setup)
    assert run.status == "succeeded"
    assert _sent(sink) == Counter(str(i) for i in range(1, 27))
    assert sink.store["3"]["email"] == "user3@example.com"
    assert sink.store["26"]["email"] == "first@x"
    assert (run.rows_read, run.rows_written, run.rows_failed) == (30, 26, 4)
    assert run.rows_added == 26
    entries = dlq_service.list_page(setup.workspace_id, sync_id=setup.sync_id, resolved=False, cursor=None, limit=50).items
    assert sorted((e.error_code, e.record_key) for e in entries) == [
        ("DUPLICATE_KEY", "26"), ("DUPLICATE_KEY", "3"), ("NULL_KEY", ""),
    ]
    with transaction() as conn:
        rows = dict(conn.execute(
            "SELECT record_key, rows FROM run_failures WHERE run_id = %s", (run.id,)
        ).fetchall())
    assert rows == {"3": 2, "26": 1, "": 1}


def test_a_planner_that_dies_mid_pass_is_replaced_and_nothing_is_lost(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    warehouse.insert(60)
    setup = people_sync()
    run_id = driver.trigger(setup)
    original = PostgresSource.stream_rows_with_hashes

    class Died(BaseException):
        """Stands for the planner's process being killed: nothing below it runs."""

    def dies_after_three_chunks(self, *args, **kwargs):
        for number, chunk in enumerate(original(self, *args, **kwargs)):
            if number == 3:
                raise Died
            yield chunk

    monkeypatch.setattr(PostgresSource, "stream_rows_with_hashes", dies_after_three_chunks)
    monkeypatch.setattr("worker.planner.ROW_CHUNK", 10)
    with pytest.raises(Died):
        driver.engine.execute_run(run_id)
    written_before = driver.drain()
    assert written_before, "the batches packed before the crash are written"
    assert get_run(run_id).status == "running"
    monkeypatch.setattr(PostgresSource, "stream_rows_with_hashes", original)
    with transaction() as conn:  # the dead planner's lease runs out
        conn.execute(
            "UPDATE runs SET lease_expires_at = now() - interval '1 second' WHERE id = %s",
            (run_id,),
        )
    rung: list[str] = []
    monkeypatch.setattr(driver.dispatch, "enqueue_run", rung.append)
    driver.engine.reap()
    assert rung == [run_id]
    run = driver.execute(run_id)
    assert run.status == "succeeded"
    assert sorted(sink.store, key=int) == [str(i) for i in range(1, 61)]
    # What the first attempt got accepted is in the snapshot: the takeover sends the rest.
    assert set(_sent(sink)) == {str(i) for i in range(1, 61)}
    assert run.rows_written == 60 - len(written_before) * 10
    with transaction() as conn:
        assert repo.snapshot_is_empty(conn, setup.sync_id) is False



def test_batches_are_stored_in_order_while_the_next_ones_are_mapped(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    warehouse.insert(95)
    monkeypatch.setattr("worker.planner.ROW_CHUNK", 10)
    setup = people_sync()
    run_id = driver.trigger(setup)
    assert driver.engine.execute_run(run_id) is None
    assert [batch for _, batch, _ in driver.pending] == list(range(1, 11))
    with transaction() as conn:
        stored = conn.execute(
            "SELECT batch_no, record_keys FROM run_batches WHERE run_id = %s ORDER BY batch_no",
            (run_id,),
        ).fetchall()
    keys = [key for _, batch_keys in stored for key in batch_keys]
    assert keys == [str(i) for i in range(1, 96)]
    driver.drain()
    run = get_run(run_id)
    assert run.status == "succeeded"
    assert (run.rows_read, run.rows_added, run.rows_written) == (95, 95, 95)


def test_a_store_that_fails_stops_the_planner_and_records_nothing_after_it(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    warehouse.insert(60)
    monkeypatch.setattr("worker.planner.ROW_CHUNK", 10)
    original = repo.stage_rows_and_batch
    calls: list[int | None] = []

    def fails_on_the_third(conn, **kwargs):
        calls.append(kwargs["batch_no"])
        if len(calls) == 3:
            raise RuntimeError("the store went away")
        return original(conn, **kwargs)

    monkeypatch.setattr(repo, "stage_rows_and_batch", fails_on_the_third)
    setup = people_sync()
    run_id = driver.trigger(setup)
    assert driver.engine.execute_run(run_id) is None
    run = get_run(run_id)
    assert run.status == "failed"
    assert "the store went away" in (run.error or "")
    # Nothing after the failed batch was stored, and what was stored before it is in order.
    assert calls == [1, 2, 3]
    with transaction() as conn:
        stored = [row[0] for row in conn.execute(
            "SELECT batch_no FROM run_batches WHERE run_id = %s ORDER BY batch_no", (run_id,)
        )]
    assert stored == [1, 2]


def test_a_first_run_inserts_into_the_snapshot_and_falls_back_when_a_key_is_there(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink) -> None:
    warehouse.insert(30)
    setup = people_sync()
    run_id = driver.trigger(setup)
    assert driver.engine.execute_run(run_id) is None
    with transaction() as conn:
        (fresh,) = conn.execute(
            "SELECT snapshot_was_empty FROM run_progress WHERE run_id = %s", (run_id,)
        ).fetchone()
        # A key that reached the snapshot after planning (as another claim of its batch would
        # have put it there): the plain insert conflicts and the batch is recorded as an upsert.
        conn.execute(
            "INSERT INTO sync_snapshots (sync_id, record_key, content_hash) VALUES (%s, '7', 'old')",
            (setup.sync_id,),
        )
    assert fresh is True
    driver.drain()
    run = get_run(run_id)
    assert run.status == "succeeded"
    assert (run.rows_written, run.rows_failed) == (30, 0)
    with transaction() as conn:
        snapshot = dict(conn.execute(
            "SELECT record_key, content_hash FROM sync_snapshots WHERE sync_id = %s",
            (setup.sync_id,),
        ).fetchall())
        (batch_hash,) = conn.execute(
            "SELECT h FROM run_batches b, unnest(b.record_keys, b.content_hashes) AS u(k, h)"
            " WHERE b.run_id = %s AND u.k = '7'", (run_id,),
        ).fetchone()
    assert sorted(snapshot, key=int) == [str(i) for i in range(1, 31)]
    assert snapshot["7"] == batch_hash
    # The second run plans against a snapshot that holds records: no plain inserts.
    warehouse.execute("UPDATE warehouse.people SET name = 'Renamed' WHERE id = 3")
    second = driver.run(setup)
    assert second.status == "succeeded" and second.rows_written == 1
    with transaction() as conn:
        (fresh,) = conn.execute(
            "SELECT snapshot_was_empty FROM run_progress WHERE run_id = %s", (second.id,)
        ).fetchone()
    assert fresh is False
