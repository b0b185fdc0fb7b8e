"""End to end in one process: a Postgres table → a run → the fake HTTP receiver."""

from __future__ import annotations

import pytest

from shared.db import transaction
from shared.services import dlq as dlq_service
from tests.engine.conftest import EngineDriver, Warehouse, get_run
from tests.fakes.http_sink import FakeHttpSink


def _sent_keys(sink: FakeHttpSink) -> list[str]:
    return sorted(str(r["external_id"]) for batch in sink.received for r in batch.records)


def test_first_run_writes_every_row_with_mapped_fields(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink) -> None:
    warehouse.insert(25)
    run = driver.run(people_sync())
    assert run.status == "succeeded", run.error
    assert (run.rows_read, run.rows_written, run.rows_failed, run.rows_added) == (25, 25, 0, 25)
    assert len(sink.store) == 25
    assert sink.store["7"] == {"external_id": 7, "email": "user7@example.com", "full_name": "User 7"}
    assert {batch.operation for batch in sink.received} == {"upsert"}
    assert max(len(batch.records) for batch in sink.received) == 10


def test_second_run_sends_only_changed_and_added_rows(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink) -> None:
    warehouse.insert(30)
    setup = people_sync()
    driver.run(setup)
    sink.received.clear()
    warehouse.execute("UPDATE warehouse.people SET name = 'Changed' WHERE id IN (3, 17)")
    warehouse.insert(1, start=31)
    run = driver.run(setup)
    assert run.status == "succeeded"
    assert _sent_keys(sink) == ["17", "3", "31"]
    assert (run.rows_added, run.rows_changed, run.rows_unchanged) == (1, 2, 28)
    assert run.rows_written == 3
    assert sink.store["3"]["full_name"] == "Changed"


def test_run_without_changes_sends_nothing(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink) -> None:
    warehouse.insert(12)
    setup = people_sync()
    driver.run(setup)
    sink.received.clear()
    run = driver.run(setup)
    assert run.status == "succeeded"
    assert sink.received == []
    assert (run.rows_unchanged, run.rows_written) == (12, 0)


def test_full_refresh_resends_everything(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink) -> None:
    warehouse.insert(15)
    setup = people_sync()
    driver.run(setup)
    sink.received.clear()
    run = driver.run(setup, full_refresh=True)
    assert run.status == "succeeded"
    assert len(_sent_keys(sink)) == 15
    assert (run.rows_unchanged, run.rows_written) == (15, 15)


def test_mapping_change_resends_records(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink) -> None:
    from shared.services import syncs

    warehouse.insert(5)
    setup = people_sync()
    driver.run(setup)
    sink.received.clear()
    syncs.update(setup.workspace_id, setup.sync_id, {"fieldMappings": [
        {"source": "id", "destination": "external_id", "key": True},
        {"static": "crm", "destination": "origin"},
        {"template": "{{ name | upper }} <{{ email }}>", "destination": "label"},
    ]})
    run = driver.run(setup)
    assert run.status == "succeeded"
    assert run.rows_changed == 5
    assert sink.store["2"]["origin"] == "crm"
    assert sink.store["2"]["label"] == "USER 2 <user2@example.com>"


def test_null_and_duplicate_keys_are_failed_rows_in_the_dlq(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink) -> None:
    warehouse.insert(5)
    warehouse.execute("INSERT INTO warehouse.people (id, email, name) VALUES"
                      " (NULL, 'a@x', 'A'), (NULL, 'b@x', 'B'), (2, 'dup@x', 'Dup')")
    setup = people_sync()
    run = driver.run(setup)
    assert run.status == "succeeded"
    assert run.rows_read == 8
    assert run.rows_written == 5
    assert run.rows_failed == 3
    assert len(sink.store) == 5
    entries = dlq_service.list_page(setup.workspace_id, sync_id=setup.sync_id, resolved=False, cursor=None, limit=50).items
    codes = sorted(e.error_code for e in entries)
    assert codes == ["DUPLICATE_KEY", "NULL_KEY"]
    duplicate = next(e for e in entries if e.error_code == "DUPLICATE_KEY")
    assert duplicate.record_keys == {"external_id": 2}  # as the source typed it


def test_rejected_records_land_in_the_dlq_and_the_rest_are_written(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink) -> None:
    warehouse.insert(20)
    sink.reject_keys({"4", "13"}, "email is invalid")
    setup = people_sync()
    run = driver.run(setup)
    assert run.status == "succeeded"
    assert (run.rows_written, run.rows_failed) == (18, 2)
    assert "4" not in sink.store and len(sink.store) == 18
    entries = dlq_service.list_page(setup.workspace_id, sync_id=setup.sync_id, resolved=False, cursor=None, limit=50).items
    assert sorted(e.record_key for e in entries) == ["13", "4"]
    assert {e.error_code for e in entries} == {"DESTINATION_VALIDATION"}
    assert all("email is invalid" in e.message for e in entries)

    # Failing again in the next run: same entries, one more attempt each; nothing else resent.
    sink.received.clear()
    run = driver.run(setup)
    assert _sent_keys(sink) == ["13", "4"]
    entries = dlq_service.list_page(setup.workspace_id, sync_id=setup.sync_id, resolved=False, cursor=None, limit=50).items
    assert sorted((e.record_key, e.attempts) for e in entries) == [("13", 2), ("4", 2)]

    # Once the receiver accepts them, the entries resolve themselves.
    sink.clear_rejections()
    run = driver.run(setup)
    assert run.rows_written == 2
    assert dlq_service.list_page(setup.workspace_id, sync_id=setup.sync_id, resolved=False, cursor=None, limit=50).items == []
    resolved = dlq_service.list_page(setup.workspace_id, sync_id=setup.sync_id, resolved=True, cursor=None, limit=50).items
    assert {e.resolution for e in resolved} == {"auto_resolved"}


def test_resolve_with_replay_rewrites_only_those_records(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink) -> None:
    warehouse.insert(10)
    sink.reject_keys({"6"})
    setup = people_sync()
    driver.run(setup)
    sink.clear_rejections()
    sink.received.clear()
    entries = dlq_service.list_page(setup.workspace_id, sync_id=setup.sync_id, resolved=False, cursor=None, limit=50).items
    resolution = dlq_service.resolve(setup.workspace_id, [entries[0].id], "fixed_upstream", replay=True)
    assert resolution.replay_run_id is not None
    run = driver.execute(resolution.replay_run_id)
    assert run.status == "succeeded"
    assert run.trigger == "replay"
    assert _sent_keys(sink) == ["6"]
    assert "6" in sink.store


def test_destination_rate_limit_with_retry_after_is_retried(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink) -> None:
    warehouse.insert(10)
    sink.fail_next(429, {"error": "slow down"}, {"Retry-After": "1"}, times=2)
    setup = people_sync()
    run = driver.run(setup)
    assert run.status == "succeeded"
    assert len(sink.store) == 10
    assert run.rows_failed == 0
    assert dlq_service.list_page(setup.workspace_id, sync_id=None, resolved=False, cursor=None, limit=50).items == []


def test_destination_down_after_retries_fails_the_run(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink, monkeypatch) -> None:
    from worker import executor

    monkeypatch.setattr(executor.RetryPolicy, "__init__", _fast_policy_init)
    warehouse.insert(30)
    sink.fail_next(503, {"error": "down"}, times=100)
    setup = people_sync()
    run = driver.run(setup)
    assert run.status == "failed"
    assert "unavailable after retries" in (run.error or "")
    assert sink.store == {}


def _fast_policy_init(self, attempts: int = 3, initial_wait_s: float = 0.01, max_wait_s: float = 0.02,
                      max_retry_after_s: float = 1.0) -> None:
    object.__setattr__(self, "attempts", attempts)
    object.__setattr__(self, "initial_wait_s", initial_wait_s)
    object.__setattr__(self, "max_wait_s", max_wait_s)
    object.__setattr__(self, "max_retry_after_s", max_retry_after_s)


def test_auth_failure_fails_the_run_and_marks_the_destination(driver: EngineDriver, workspace_id, warehouse: Warehouse) -> None:
    from shared.services import connections
    from tests.engine.conftest import make_sync

    warehouse.insert(5)
    with FakeHttpSink(required_headers={"Authorization": "Bearer right"}) as guarded:
        setup = make_sync(workspace_id, {"url": warehouse.url}, guarded.url,
                          destination_config={"headers": {"Authorization": "Bearer wrong"}})
        run = driver.run(setup)
    assert run.status == "failed"
    assert "credentials" in (run.error or "")
    view = connections.get(workspace_id, "destination", setup.destination_id)
    assert view.record.status == "auth_failed"


def test_successful_run_marks_the_destination_connected(driver: EngineDriver, people_sync, warehouse: Warehouse) -> None:
    from shared.services import connections

    warehouse.insert(3)
    setup = people_sync()
    driver.run(setup)
    assert connections.get(setup.workspace_id, "destination", setup.destination_id).record.status == "connected"


def test_bad_query_fails_the_run_with_the_database_message(driver: EngineDriver, people_sync, sink: FakeHttpSink) -> None:
    run = driver.run(people_sync(query="SELECT * FROM warehouse.nope"))
    assert run.status == "failed"
    assert "nope" in (run.error or "")
    assert sink.received == []


def test_mapping_of_a_missing_column_fails_before_writing(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink) -> None:
    warehouse.insert(3)
    setup = people_sync(mappings=[
        {"source": "id", "destination": "external_id", "key": True},
        {"source": "phone", "destination": "phone"},
    ])
    run = driver.run(setup)
    assert run.status == "failed"
    assert "phone" in (run.error or "")
    assert sink.received == []


def test_values_are_cast_to_declared_field_types(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink) -> None:
    warehouse.insert(3)
    warehouse.execute("INSERT INTO warehouse.people (id, email, name, score) VALUES (4, 'x@y', 'not a number', 2)")
    setup = people_sync(
        mappings=[
            {"source": "id", "destination": "external_id", "key": True},
            {"source": "score", "destination": "score"},
            {"source": "updated_at", "destination": "updated"},
            {"source": "name", "destination": "rank"},
        ],
        destination_config={"fields": [
            {"name": "external_id", "type": "string"}, {"name": "score", "type": "number"},
            {"name": "updated", "type": "datetime"}, {"name": "rank", "type": "integer"},
        ]},
        query="SELECT id, score, updated_at, CASE WHEN id = 4 THEN name ELSE id::text END AS name"
              " FROM warehouse.people",
    )
    run = driver.run(setup)
    assert run.status == "succeeded"
    assert sink.store["2"] == {"external_id": "2", "score": 3.0, "updated": "2025-01-01T00:00:00Z", "rank": 2}
    assert run.rows_failed == 1
    entries = dlq_service.list_page(setup.workspace_id, sync_id=setup.sync_id, resolved=False, cursor=None, limit=50).items
    assert [(e.record_key, e.error_code) for e in entries] == [("4", "MAPPING")]


def test_counts_are_visible_while_the_run_is_in_progress(driver: EngineDriver, people_sync, warehouse: Warehouse) -> None:
    warehouse.insert(40)
    setup = people_sync()
    run_id = driver.trigger(setup)
    assert driver.engine.execute_run(run_id) is None
    # Planned, nothing written yet: the diff's counts are already on the run.
    planned = get_run(run_id)
    assert planned.status == "running"
    assert (planned.rows_read, planned.rows_added, planned.rows_written) == (40, 40, 0)
    driver.pending, rest = driver.pending[:1], driver.pending[1:]
    driver.drain()
    assert get_run(run_id).rows_written == 10
    driver.pending = rest
    driver.drain()
    assert get_run(run_id).status == "succeeded"


def test_cancel_stops_at_the_next_batch(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink) -> None:
    from shared.services import runs as run_service

    warehouse.insert(50)
    setup = people_sync()
    run_id = driver.trigger(setup)
    driver.engine.execute_run(run_id)
    first, rest = driver.pending[:1], driver.pending[1:]
    driver.pending = first
    driver.drain()
    run_service.cancel(setup.workspace_id, run_id)
    driver.pending = rest
    driver.drain()
    run = get_run(run_id)
    assert run.status == "cancelled"
    assert len(sink.store) == 10
    # What was not written goes out with the next run.
    sink.received.clear()
    run = driver.run(setup)
    assert run.rows_written == 40


def test_a_batch_delivered_twice_is_written_once(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink) -> None:
    warehouse.insert(20)
    setup = people_sync()
    run_id = driver.trigger(setup)
    driver.engine.execute_run(run_id)
    driver.pending = driver.pending + driver.pending
    driver.drain()
    run = get_run(run_id)
    assert run.status == "succeeded"
    assert run.rows_written == 20
    assert sink.record_count == 20


def test_stale_fencing_token_cannot_write(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink) -> None:
    warehouse.insert(10)
    setup = people_sync()
    run_id = driver.trigger(setup)
    driver.engine.execute_run(run_id)
    (rid, batch_no, token), = driver.pending[:1]
    report = driver.engine.write_batch(rid, batch_no, token - 1)
    assert report.status == "stale"
    assert sink.received == []
    with transaction() as conn:
        assert conn.execute("SELECT rows_written FROM runs WHERE id = %s", (run_id,)).fetchone()[0] == 0


def test_change_detection_also_works_for_sources_that_cannot_salt_hashes(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink, monkeypatch) -> None:
    from connectors.sources.postgres import PostgresSource
    from shared.services import syncs

    monkeypatch.setattr(PostgresSource, "hashes_take_salt", False)
    warehouse.insert(8)
    setup = people_sync()
    driver.run(setup)
    warehouse.execute("UPDATE warehouse.people SET email = 'new@x' WHERE id = 5")
    sink.received.clear()
    assert driver.run(setup).rows_changed == 1
    assert _sent_keys(sink) == ["5"]
    syncs.update(setup.workspace_id, setup.sync_id, {"fieldMappings": [
        {"source": "id", "destination": "external_id", "key": True},
        {"source": "email", "destination": "mail"},
    ]})
    assert driver.run(setup).rows_changed == 8


def test_a_source_without_pushed_down_filters_still_syncs_changes(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink, monkeypatch) -> None:
    from connectors.sources.postgres import PostgresSource

    monkeypatch.delattr(PostgresSource, "stream_rows_for_keys")
    monkeypatch.setattr(PostgresSource, "hashes_take_salt", False)
    warehouse.insert(6)
    setup = people_sync()
    assert driver.run(setup).rows_written == 6
    warehouse.execute("UPDATE warehouse.people SET name = 'Changed' WHERE id = 4")
    sink.received.clear()
    run = driver.run(setup)
    assert _sent_keys(sink) == ["4"]
    assert sink.store["4"]["full_name"] == "Changed"
    assert run.status == "succeeded"


def test_a_run_whose_destination_is_deleted_mid_run_ends_failed(
    driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink
) -> None:
    from shared.services import connections
    from shared.services import syncs as sync_service

    warehouse.insert(20)
    setup = people_sync()
    run_id = driver.trigger(setup)
    driver.engine.execute_run(run_id)
    sync_service.delete(setup.workspace_id, setup.sync_id)
    connections.delete(setup.workspace_id, "destination", setup.destination_id)
    driver.drain()
    run = get_run(run_id)
    assert run.status == "failed"
    assert "no longer exists" in run.error
    assert sink.record_count == 0


def _record_state(run_id: str, batch_no: int) -> tuple[str, int, int, int]:
    with transaction() as conn:
        return conn.execute(
            "SELECT b.status, r.rows_written, p.batches_done,"
            " (SELECT count(*) FROM sync_snapshots s WHERE s.sync_id = r.sync_id)::int"
            " FROM run_batches b JOIN runs r ON r.id = b.run_id"
            " JOIN run_progress p ON p.run_id = b.run_id"
            " WHERE b.run_id = %s AND b.batch_no = %s",
            (run_id, batch_no),
        ).fetchone()


@pytest.mark.parametrize("lost", ["lease", "claim"])
def test_a_batch_whose_lease_or_claim_is_lost_while_writing_records_nothing(
    driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink, monkeypatch,
    lost: str,
) -> None:
    from worker import runs as engine_runs

    warehouse.insert(10)
    setup = people_sync()
    run_id = driver.trigger(setup)
    driver.engine.execute_run(run_id)
    (rid, batch_no, token), = driver.pending[:1]
    original = engine_runs.write_with_retries

    def write_then_lose(*args, **kwargs):
        outcome = original(*args, **kwargs)
        with transaction() as conn:  # a takeover while the batch was in flight
            if lost == "lease":
                conn.execute(
                    "UPDATE runs SET fencing_token = fencing_token + 1 WHERE id = %s", (rid,)
                )
            else:
                conn.execute(
                    "UPDATE run_batches SET attempts = attempts + 1"
                    " WHERE run_id = %s AND batch_no = %s", (rid, batch_no),
                )
        return outcome

    monkeypatch.setattr(engine_runs, "write_with_retries", write_then_lose)
    report = driver.engine.write_batch(rid, batch_no, token)
    assert report.status == "stale"
    assert sink.record_count > 0  # sent, but the outcome is the new holder's to record
    assert _record_state(rid, batch_no) == ("running", 0, 0, 0)


def test_a_slow_write_keeps_its_claim_so_the_reaper_does_not_resend_it(
    driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink, monkeypatch
) -> None:
    import dataclasses
    import time

    from shared.settings import get_settings

    short = dataclasses.replace(get_settings(), lease_seconds=0.6)
    monkeypatch.setattr(driver.engine, "get_settings", lambda: short)
    slow_write = driver.engine.write_with_retries
    reaped = []

    def write_slowly(*args, **kwargs):
        time.sleep(1.5)  # more than two claims' length: only renewals keep it
        reaped.append(driver.engine.reap().batches_enqueued)
        return slow_write(*args, **kwargs)

    monkeypatch.setattr(driver.engine, "write_with_retries", write_slowly)
    warehouse.insert(5)
    setup = people_sync()
    run = driver.run(setup)
    assert run.status == "succeeded", run.error
    assert reaped == [0]
    assert sink.record_count == 5 and len(sink.received) == 1


def test_a_connector_that_crashes_ends_the_run_instead_of_looping(
    driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink, monkeypatch
) -> None:
    from connectors.destinations.http import HttpDestination

    def crash(self, *args, **kwargs):
        raise TypeError("unhashable type: 'list'")

    monkeypatch.setattr(HttpDestination, "write_batch", crash)
    warehouse.insert(5)
    run = driver.run(people_sync())
    assert run.status == "failed"
    assert "TypeError" in run.error


def test_one_renewer_keeps_every_claim_of_its_process_and_notices_a_lost_one(
    driver: EngineDriver,
) -> None:
    import time

    from worker.runs import ClaimKeeper, ClaimLost

    with transaction() as conn:
        for batch_no in (1, 2):
            conn.execute(
                "INSERT INTO run_batches (run_id, batch_no, operation, record_keys, payload,"
                " status, attempts, claimed_until)"
                " VALUES ('run_renewed', %s, 'upsert', '{}', ''::bytea, 'running', 1,"
                " now() + interval '0.6 seconds')", (batch_no,),
            )

    def claimed_until_in_future() -> dict[int, bool]:
        with transaction() as conn:
            rows = conn.execute(
                "SELECT batch_no, claimed_until > now() FROM run_batches"
                " WHERE run_id = 'run_renewed' ORDER BY batch_no"
            ).fetchall()
        return dict(rows)

    with ClaimKeeper("run_renewed", 1, 1, 0.6) as first, \
            ClaimKeeper("run_renewed", 2, 1, 0.6) as second:
        time.sleep(1.3)  # two claims' length: only renewals keep them
        assert claimed_until_in_future() == {1: True, 2: True}
        with transaction() as conn:  # the reaper handed batch 2 to another worker
            conn.execute(
                "UPDATE run_batches SET attempts = 2 WHERE run_id = 'run_renewed' AND batch_no = 2"
            )
        deadline = time.monotonic() + 2
        while not second.lost.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(ClaimLost):
            second.check()
        first.check()
        time.sleep(0.5)
        assert claimed_until_in_future()[1] is True


def test_the_renewer_outlives_a_failed_renewal(driver: EngineDriver, monkeypatch) -> None:
    import time

    from worker.runs import ClaimKeeper

    with transaction() as conn:
        conn.execute(
            "INSERT INTO run_batches (run_id, batch_no, operation, record_keys, payload,"
            " status, attempts, claimed_until)"
            " VALUES ('run_blip', 1, 'upsert', '{}', ''::bytea, 'running', 1,"
            " now() + interval '0.6 seconds')"
        )
    real_renew = ClaimKeeper.renew
    failures = []

    def fails_once(self):
        if not failures:
            failures.append(self.batch_no)
            raise RuntimeError("the pool is exhausted")
        return real_renew(self)

    monkeypatch.setattr(ClaimKeeper, "renew", fails_once)
    with ClaimKeeper("run_blip", 1, 1, 0.6) as keeper:
        time.sleep(1.0)  # the failed renewal at 0.2 s, then renewals at 0.4 s and on
        keeper.check()
        with transaction() as conn:
            assert conn.execute(
                "SELECT claimed_until > now() FROM run_batches WHERE run_id = 'run_blip'"
            ).fetchone()[0]
    assert failures == [1]
