"""Keys keep their type: sent, kept in the snapshot, reported in DLQ record_keys and deleted as
the source typed them; snapshots written before keys had a kind still diff and delete right."""

from __future__ import annotations

from typing import Any

import pytest

from shared.db import transaction
from shared.services import dlq as dlq_service
from tests.engine.conftest import EngineDriver, Warehouse, make_sync
from tests.fakes.http_sink import FakeHttpSink

pytestmark = pytest.mark.timeout(120)

UUIDS = [
    "6f1c1d3e-8a8b-4c1e-9d2a-1b2c3d4e5f60",
    "7a2d2e4f-9b9c-4d2f-8e3b-2c3d4e5f6071",
    "8b3e3f50-acad-4e30-9f4c-3d4e5f607182",
]

# (column type, the keys' SQL literals, the same keys as the upserts send them in JSON)
CASES = {
    "bigint": ("bigint", ["46", "47", "9007199254740993"], [46, 47, 9007199254740993]),
    "uuid": ("uuid", [f"'{u}'" for u in UUIDS], UUIDS),
    "numeric": ("numeric", ["1.50", "2", "3.25"], [1.5, 2, 3.25]),
    "text": ("text", ["'007'", "'b'", "'46'"], ["007", "b", "46"]),
}


def _table(warehouse: Warehouse, column_type: str, literals: list[str]) -> None:
    warehouse.execute(f"CREATE TABLE warehouse.keyed (k {column_type}, name text)")
    for number, literal in enumerate(literals):
        warehouse.execute(f"INSERT INTO warehouse.keyed VALUES ({literal}, 'name {number}')")


def _sent(sink: FakeHttpSink, operation: str) -> list[Any]:
    return [record["external_id"] for batch in sink.received if batch.operation == operation
            for record in batch.records]


def _snapshot_kinds(sync_id: str) -> set[str | None]:
    with transaction() as conn:
        return {row[0] for row in conn.execute(
            "SELECT key_kind FROM sync_snapshots WHERE sync_id = %s", (sync_id,)
        )}


@pytest.mark.parametrize("case", list(CASES))
def test_a_key_is_sent_reported_and_deleted_as_the_source_typed_it(
    case: str, driver: EngineDriver, workspace_id: str, warehouse: Warehouse, sink: FakeHttpSink
) -> None:
    column_type, literals, values = CASES[case]
    _table(warehouse, column_type, literals)
    setup = make_sync(
        workspace_id, {"url": warehouse.url}, sink.url, mode="mirror",
        query="SELECT k, name FROM warehouse.keyed",
        mappings=[{"source": "k", "destination": "external_id", "key": True},
                  {"source": "name", "destination": "name"}],
    )
    sink.reject_keys({str(values[2])}, "no such account")
    run = driver.run(setup)
    assert (run.status, run.rows_written, run.rows_failed) == ("succeeded", 2, 1)
    assert sorted(map(str, _sent(sink, "upsert"))) == sorted(map(str, values))
    assert {type(v) for v in _sent(sink, "upsert")} == {type(v) for v in values}
    expected_kind = "text" if case in ("uuid", "text") else "number"
    assert _snapshot_kinds(setup.sync_id) == {expected_kind}

    entries = dlq_service.list_page(setup.workspace_id, sync_id=setup.sync_id, resolved=False,
                                    cursor=None, limit=50).items
    assert [e.record_keys for e in entries] == [{"external_id": values[2]}]

    # The first record leaves the result: the mirror deletes it with the key the upsert sent.
    sink.clear_rejections()
    warehouse.execute(f"DELETE FROM warehouse.keyed WHERE k = {literals[0]}")
    run = driver.run(setup)
    assert run.status == "succeeded", run.error
    deleted = _sent(sink, "delete")
    assert deleted == [values[0]] and type(deleted[0]) is type(values[0])
    assert str(values[0]) not in sink.store


@pytest.mark.parametrize("case", ["bigint", "numeric"])
def test_a_snapshot_written_before_keys_had_a_kind_still_diffs_and_deletes_right(
    case: str, driver: EngineDriver, workspace_id: str, warehouse: Warehouse, sink: FakeHttpSink
) -> None:
    column_type, literals, values = CASES[case]
    _table(warehouse, column_type, literals)
    setup = make_sync(
        workspace_id, {"url": warehouse.url}, sink.url, mode="mirror",
        query="SELECT k, name FROM warehouse.keyed",
        mappings=[{"source": "k", "destination": "external_id", "key": True},
                  {"source": "name", "destination": "name"}],
    )
    assert driver.run(setup).status == "succeeded"
    with transaction() as conn:  # as the snapshot was before the migration
        conn.execute("UPDATE sync_snapshots SET key_kind = NULL WHERE sync_id = %s",
                     (setup.sync_id,))
    sink.received.clear()

    # Nothing changed: nothing is sent.
    run = driver.run(setup)
    assert (run.status, run.rows_unchanged, sink.received) == ("succeeded", 3, [])

    # Only a removal, so no row of this run is read in full: the key is still typed.
    warehouse.execute(f"DELETE FROM warehouse.keyed WHERE k = {literals[0]}")
    run = driver.run(setup)
    assert (run.status, run.rows_removed, run.rows_unchanged) == ("succeeded", 1, 2)
    assert _sent(sink, "delete") == [values[0]]
    assert type(_sent(sink, "delete")[0]) is type(values[0])
    assert _sent(sink, "upsert") == []
