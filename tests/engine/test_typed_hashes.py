"""Typed 64-bit content hashes computed by a Postgres or DuckDB source, and snapshots written with md5
hashes before them: an upgrade never makes every record look changed."""

from __future__ import annotations

import duckdb
import pytest

from connectors.sources.duckdb import FAST_HASH_CHECK, DuckDbSource, hash_is_the_pinned_one
from connectors.sources.postgres import PostgresSource
from shared.db import transaction
from tests.engine.conftest import PEOPLE_MAPPINGS, EngineDriver, Warehouse, make_sync
from tests.fakes.http_sink import FakeHttpSink


def _hashes(source: PostgresSource, query: str, columns: list[str], salt: str = "s") -> dict:
    chunks = source.stream_key_hashes(query, "id", columns, salt=salt, fast=True)
    return {key: value for chunk in chunks for key, value in chunk}


def test_a_typed_hash_changes_with_the_hashed_values_only(warehouse: Warehouse) -> None:
    warehouse.insert(3)
    source = PostgresSource({"url": warehouse.url})
    query = "SELECT * FROM warehouse.people"
    before = _hashes(source, query, ["email", "score"])
    assert len(set(before.values())) == 3
    assert all(len(value) != 32 for value in before.values())  # never taken for an md5
    warehouse.execute("UPDATE warehouse.people SET name = 'other' WHERE id = 1")
    assert _hashes(source, query, ["email", "score"]) == before
    warehouse.execute("UPDATE warehouse.people SET score = NULL WHERE id = 2")
    warehouse.execute("UPDATE warehouse.people SET email = 'other' WHERE id = 3")
    after = _hashes(source, query, ["email", "score"])
    assert after["1"] == before["1"]
    assert after["2"] != before["2"] and after["3"] != before["3"]
    # The salt (the mapping's fingerprint) is hashed in: a new mapping changes every hash.
    assert set(_hashes(source, query, ["email", "score"], salt="t").values()).isdisjoint(
        after.values())


def test_columns_postgres_cannot_hash_by_value_are_hashed_as_text(warehouse: Warehouse) -> None:
    warehouse.execute("ALTER TABLE warehouse.people ADD COLUMN doc json, ADD COLUMN spot point")
    warehouse.insert(2)
    warehouse.execute("UPDATE warehouse.people SET doc = '{\"a\": 1}', spot = '(1,2)'")
    source = PostgresSource({"url": warehouse.url})
    query = "SELECT id, doc, spot FROM warehouse.people"
    before = _hashes(source, query, ["doc", "spot"])
    warehouse.execute("UPDATE warehouse.people SET spot = '(3,4)' WHERE id = 2")
    after = _hashes(source, query, ["doc", "spot"])
    assert after["1"] == before["1"] and after["2"] != before["2"]


def _snapshot_hashes(sync_id: str) -> list[str]:
    with transaction() as conn:
        return [row[0] for row in conn.execute(
            "SELECT content_hash FROM sync_snapshots WHERE sync_id = %s", (sync_id,))]


def _to_md5_snapshot(driver: EngineDriver, setup, warehouse: Warehouse) -> None:
    """Rewrite the sync's snapshot as a version without typed hashes left it: md5 hashes."""
    from worker import mapping

    source = PostgresSource({"url": warehouse.url})
    query = "SELECT * FROM warehouse.people"
    plan = mapping.plan_for(
        [{"source": "id", "destination": "external_id", "key": True},
         {"source": "email", "destination": "email"},
         {"source": "name", "destination": "full_name"}],
        source.columns(query), object_name="records", mode="upsert",
    )
    md5 = {key: value for chunk in source.stream_key_hashes(
        query, plan.key_column, plan.read_columns, salt=plan.fingerprint) for key, value in chunk}
    _rewrite_snapshot(setup.sync_id, md5)


def _rewrite_snapshot(sync_id: str, hashes: dict[str, str]) -> None:
    with transaction() as conn:
        for key, value in hashes.items():
            conn.execute("UPDATE sync_snapshots SET content_hash = %s"
                         " WHERE sync_id = %s AND record_key = %s", (value, sync_id, key))


@pytest.mark.parametrize("full_refresh_first", [False, True])
def test_a_snapshot_of_md5_hashes_keeps_sending_only_changes_until_a_full_refresh(
    driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink,
    full_refresh_first: bool,
) -> None:
    warehouse.insert(20)
    setup = people_sync()
    assert driver.run(setup).rows_written == 20
    assert all(len(value) != 32 for value in _snapshot_hashes(setup.sync_id))
    _to_md5_snapshot(driver, setup, warehouse)
    if full_refresh_first:
        # A full refresh resends everything and rewrites the snapshot in typed hashes.
        assert driver.run(setup, full_refresh=True).rows_written == 20
        assert all(len(value) != 32 for value in _snapshot_hashes(setup.sync_id))
    else:
        assert all(len(value) == 32 for value in _snapshot_hashes(setup.sync_id))
    sink.received.clear()
    warehouse.execute("UPDATE warehouse.people SET name = 'Changed' WHERE id = 4")
    run = driver.run(setup)
    assert run.status == "succeeded", run.error
    assert (run.rows_changed, run.rows_unchanged, run.rows_written) == (1, 19, 1)
    assert [r["external_id"] for batch in sink.received for r in batch.records] == [4]


# -- DuckDB ----------------------------------------------------------------------------------

DUCK_QUERY = "SELECT id, email, name, tags, score FROM people"


@pytest.fixture
def duck_people(tmp_path) -> str:
    path = str(tmp_path / "people.duckdb")
    with duckdb.connect(path) as conn:
        conn.execute(
            "CREATE TABLE people AS SELECT i::INTEGER AS id, 'user' || i || '@example.com' AS email,"
            " 'User ' || i AS name, [i, i + 1] AS tags, (i * 1.25)::DECIMAL(10, 2) AS score"
            " FROM range(1, 21) t(i)"
        )
    return path


def _duck_change(path: str, statement: str) -> None:
    with duckdb.connect(path) as conn:
        conn.execute(statement)


def _duck_hashes(path: str, columns: list[str], salt: str = "s", **options) -> dict[str, str]:
    source = DuckDbSource({"path": path})
    try:
        chunks = source.stream_key_hashes(DUCK_QUERY, "id", columns, salt=salt, **options)
        return {key: value for chunk in chunks for key, value in chunk}
    finally:
        source.close()


def test_duckdb_typed_hash_changes_with_the_hashed_values_only(duck_people: str) -> None:
    columns = ["email", "tags", "score"]
    before = _duck_hashes(duck_people, columns, fast=True)
    assert len(set(before.values())) == 20
    assert all(len(value) != 32 for value in before.values())  # never taken for an md5
    _duck_change(duck_people, "UPDATE people SET name = 'other' WHERE id = 1")
    assert _duck_hashes(duck_people, columns, fast=True) == before
    _duck_change(duck_people, "UPDATE people SET score = NULL WHERE id = 2")
    _duck_change(duck_people, "UPDATE people SET tags = [0] WHERE id = 3")  # hashed as text
    _duck_change(duck_people, "UPDATE people SET email = 'other' WHERE id = 4")
    after = _duck_hashes(duck_people, columns, fast=True)
    assert {key for key in after if after[key] != before[key]} == {"2", "3", "4"}
    # The salt (the mapping's fingerprint) is hashed in: a new mapping changes every hash.
    assert set(_duck_hashes(duck_people, columns, salt="t", fast=True).values()).isdisjoint(
        after.values())
    # The copy text and the one-pass read give the same hashes.
    source = DuckDbSource({"path": duck_people})
    lines = b"".join(source.stream_key_hash_copy(DUCK_QUERY, "id", columns, salt="s", fast=True))
    assert dict(line.split("\t") for line in lines.decode().splitlines()) == after
    rows = [row for chunk in source.stream_rows_with_hashes(
        DUCK_QUERY, "id", columns, salt="s", fast=True) for row in chunk]
    assert {row[0]: row[1] for row in rows} == after
    source.close()


def test_duckdb_fast_hashes_only_while_its_hash_is_the_pinned_one() -> None:
    """DuckDB's hash() is not promised stable across its releases: with a DuckDB whose hash()
    differs from the one pinned, its sources hash in md5 (see FAST_HASH_CHECK). If this fails
    after an upgrade of DuckDB, every DuckDB sync would send every record once more."""
    assert hash_is_the_pinned_one()
    assert DuckDbSource({"path": ":memory:"}).fast_hashes
    statement, expected = FAST_HASH_CHECK
    assert not hash_is_the_pinned_one((statement, str(int(expected) + 1)))


@pytest.mark.parametrize("full_refresh_first", [False, True])
def test_a_duckdb_snapshot_of_md5_hashes_keeps_sending_only_changes(
    driver: EngineDriver, workspace_id: str, sink: FakeHttpSink, duck_people: str,
    full_refresh_first: bool,
) -> None:
    from worker import mapping

    setup = make_sync(workspace_id, {"path": duck_people}, sink.url, query=DUCK_QUERY,
                      source_connector="duckdb")
    assert driver.run(setup).rows_written == 20
    assert all(len(value) != 32 for value in _snapshot_hashes(setup.sync_id))
    # Rewrite the snapshot as a version without typed hashes left it: md5 hashes.
    source = DuckDbSource({"path": duck_people})
    plan = mapping.plan_for(PEOPLE_MAPPINGS, source.columns(DUCK_QUERY),
                            object_name="records", mode="upsert")
    source.close()
    _rewrite_snapshot(setup.sync_id, _duck_hashes(duck_people, plan.read_columns, salt=plan.fingerprint))
    if full_refresh_first:
        assert driver.run(setup, full_refresh=True).rows_written == 20
        assert all(len(value) != 32 for value in _snapshot_hashes(setup.sync_id))
    else:
        assert all(len(value) == 32 for value in _snapshot_hashes(setup.sync_id))
    sink.received.clear()
    _duck_change(duck_people, "UPDATE people SET name = 'Changed' WHERE id = 4")
    run = driver.run(setup)
    assert run.status == "succeeded", run.error
    assert (run.rows_changed, run.rows_unchanged, run.rows_written) == (1, 19, 1)
    assert [r["external_id"] for batch in sink.received for r in batch.records] == [4]
