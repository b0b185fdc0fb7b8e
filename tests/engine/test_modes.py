"""Each sync mode, end to end in one process: what the receiver holds after each run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.services import dlq as dlq_service
from tests.engine.conftest import EngineDriver, Warehouse
from tests.fakes.http_sink import FakeHttpSink


@pytest.fixture(autouse=True, params=["searched", "keyed"])
def searches(request: pytest.FixtureRequest, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every mode twice: the staged keys searched for repeats beside the diff ("searched"),
    and a table whose primary key proves them unique, so no search runs ("keyed"). Yields
    the runs whose staged keys were searched."""
    from worker import planner

    if request.param == "keyed":
        warehouse.execute("ALTER TABLE warehouse.people ADD PRIMARY KEY (id)")
    searched: list[str] = []
    original = planner._rejects_beside_diff
    monkeypatch.setattr(planner, "_rejects_beside_diff",
                        lambda pg, stage, run_id, *a: searched.append(run_id) or original(pg, stage, run_id, *a))
    yield searched
    if request.param == "keyed":
        assert searched == []


def _constraints(warehouse: Warehouse) -> list[str]:
    rows = warehouse.conn.execute(
        "SELECT conname FROM pg_constraint WHERE conrelid = 'warehouse.people'::regclass"
    ).fetchall()
    return [row[0] for row in rows]


def _operations(sink: FakeHttpSink) -> dict[str, list[str]]:
    sent: dict[str, list[str]] = {}
    for batch in sink.received:
        sent.setdefault(batch.operation, []).extend(str(r["external_id"]) for r in batch.records)
    return {op: sorted(keys, key=int) for op, keys in sent.items()}


def test_insert_sends_only_added_records(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink) -> None:
    warehouse.insert(5)
    setup = people_sync(mode="insert")
    driver.run(setup)
    sink.received.clear()
    warehouse.execute("UPDATE warehouse.people SET name = 'Changed' WHERE id = 1")
    warehouse.insert(2, start=6)
    run = driver.run(setup)
    assert run.status == "succeeded"
    assert _operations(sink) == {"insert": ["6", "7"]}
    assert run.rows_changed == 1
    assert sink.store["1"]["full_name"] == "User 1"


def test_update_sends_changes_as_updates_and_missing_records_fail(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink) -> None:
    warehouse.insert(4)
    for key in ("1", "2", "3"):
        sink.store[key] = {"external_id": int(key), "email": "old", "full_name": "Old"}
    setup = people_sync(mode="update")
    run = driver.run(setup)
    assert run.status == "succeeded"
    assert _operations(sink) == {"update": ["1", "2", "3", "4"]}
    assert sink.store["2"]["full_name"] == "User 2"
    assert "4" not in sink.store
    assert (run.rows_written, run.rows_failed) == (3, 1)
    entries = dlq_service.list_page(setup.workspace_id, sync_id=setup.sync_id, resolved=False, cursor=None, limit=50).items
    assert [e.record_key for e in entries] == ["4"]
    assert "not found" in entries[0].message


def test_delete_removes_the_result_records_once(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink) -> None:
    for key in ("1", "2", "3", "9"):
        sink.store[key] = {"external_id": int(key)}
    warehouse.insert(3)
    setup = people_sync(mode="delete")
    run = driver.run(setup)
    assert run.status == "succeeded"
    assert _operations(sink) == {"delete": ["1", "2", "3"]}
    # A delete carries the key alone.
    assert all(set(r) == {"external_id"} for batch in sink.received for r in batch.records)
    assert set(sink.store) == {"9"}
    sink.received.clear()
    run = driver.run(setup)
    assert sink.received == []
    assert run.rows_unchanged == 3


def test_mirror_upserts_and_deletes_what_left_the_result(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink, searches: list[str]) -> None:
    warehouse.insert(6)
    setup = people_sync(mode="mirror")
    driver.run(setup)
    sink.received.clear()
    warehouse.execute("DELETE FROM warehouse.people WHERE id IN (2, 5)")
    warehouse.execute("UPDATE warehouse.people SET name = 'Changed' WHERE id = 3")
    run = driver.run(setup)
    assert run.status == "succeeded"
    assert _operations(sink) == {"upsert": ["3"], "delete": ["2", "5"]}
    assert (run.rows_removed, run.rows_changed, run.rows_unchanged) == (2, 1, 3)
    assert len(searches) == (0 if "people_pkey" in _constraints(warehouse) else 1)
    assert sorted(sink.store, key=int) == ["1", "3", "4", "6"]
    # The removals are settled: the next run sends nothing.
    sink.received.clear()
    run = driver.run(setup)
    assert sink.received == [] and run.rows_removed == 0


def test_mirror_keeps_a_refused_delete_for_the_next_run(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink) -> None:
    warehouse.insert(3)
    setup = people_sync(mode="mirror")
    driver.run(setup)
    warehouse.execute("DELETE FROM warehouse.people WHERE id = 2")
    sink.reject_keys({"2"}, "locked")
    run = driver.run(setup)
    assert run.rows_failed == 1 and "2" in sink.store
    sink.clear_rejections()
    sink.received.clear()
    run = driver.run(setup)
    assert _operations(sink) == {"delete": ["2"]}
    assert "2" not in sink.store
