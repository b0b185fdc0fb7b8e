"""A Postgres source whose keys the catalog proves unique is read in pages by key order, each
page's (key, hash) lines made by Postgres: the same lines as COPY gives, every row once, in
one snapshot; queries whose pages would need a sort are read by COPY. A large table's read is
divided between two readers by key range, in the same snapshot."""

from __future__ import annotations

import threading

import psycopg
import pytest

from connectors.sources import postgres as postgres_source
from connectors.sources.base import ConnectorError
from connectors.sources.postgres import PostgresSource
from tests.engine.conftest import EngineDriver, Warehouse
from tests.fakes.http_sink import FakeHttpSink


@pytest.fixture
def walks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The rows each walk of keys read (one walk per reader)."""
    counted: list[int] = []
    pages = postgres_source._read_pages

    def counting(*args):
        counted.append(0)
        walk = len(counted) - 1
        for block in pages(*args):
            counted[walk] += block.count(b"\n")
            yield block

    monkeypatch.setattr(postgres_source, "_read_pages", counting)
    return counted


@pytest.fixture
def divided(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads in key order are divided between readers whatever the table's size."""
    monkeypatch.setattr(PostgresSource, "readers_from_rows", 0)


def _lines(blocks) -> list[str]:
    return [line for block in blocks for line in block.decode().split("\n")[:-1]]


@pytest.fixture
def read_by(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """How each stream_key_hash_copy was read: 'pages' or 'copy'."""
    used: list[str] = []
    pages, copy_out = postgres_source._read_pages, postgres_source._copy_out
    monkeypatch.setattr(postgres_source, "_read_pages",
                        lambda *a: (used.append("pages"), (yield from pages(*a)))[1])
    monkeypatch.setattr(postgres_source, "_copy_out",
                        lambda *a: (used.append("copy"), (yield from copy_out(*a)))[1])
    return used


def _copy_lines(warehouse: Warehouse, query: str, key: str, columns: list[str], **options) -> list[str]:
    """The lines COPY gives for the query (read as the source reads a table without an index)."""
    source = PostgresSource({"url": warehouse.url})
    text = f"SELECT * FROM ({query}) AS kept OFFSET 0"  # a subquery of its own: not paged
    return _lines(source.stream_key_hash_copy(text, key, columns, **options))


# Tables large enough that Postgres walks the key's index for a page rather than sorting the
# table (which it prefers for a few dozen rows, read by COPY then).
@pytest.mark.parametrize("key_type", ["int", "bigint", "text", "uuid"])
@pytest.mark.parametrize("rows", [1001, 1200])  # 1200: the last page read comes back empty
def test_pages_give_the_lines_copy_gives(warehouse: Warehouse, read_by: list[str], key_type: str, rows: int) -> None:
    keys = {
        "int": "i", "bigint": "i * 10000000000", "uuid": "md5(i::text)::uuid",
        # Keys COPY text escapes: a tab, a newline, a carriage return, a backslash, \N.
        "text": "(ARRAY[E'tab\\tkey', E'new\\nline', E'cr\\rkey', E'back\\\\slash', '\\N'])[1 + i % 5]"
                " || i",
    }[key_type]
    warehouse.execute(f"CREATE TABLE warehouse.paged (id {key_type} PRIMARY KEY, n int, note text)")
    warehouse.execute(f"INSERT INTO warehouse.paged SELECT {keys}, i, 'n' || i"
                      f" FROM generate_series(1, {rows}) AS i")
    warehouse.execute("ANALYZE warehouse.paged")
    source = PostgresSource({"url": warehouse.url})
    query = "SELECT id, n, note FROM warehouse.paged"
    for options in ({"salt": "s"}, {"salt": "s", "fast": True}):
        read_by.clear()
        blocks = list(source.stream_key_hash_copy(query, "id", ["n", "note"], 400, **options))
        assert read_by == ["pages"]
        assert [block.count(b"\n") for block in blocks] == [400] * (rows // 400) + (
            [rows % 400] if rows % 400 else [])
        lines = _lines(blocks)
        assert len(lines) == rows
        assert sorted(lines) == sorted(_copy_lines(warehouse, query, "id", ["n", "note"], **options))
        assert read_by[-1] == "copy"


@pytest.mark.parametrize("query", [
    "SELECT id, n FROM warehouse.paged ORDER BY n LIMIT 5000",  # its pages would each sort
    # Its own OFFSET keeps the key condition out of the walk: every page would read from the
    # start, though the plan walks the index in order.
    "SELECT id, n FROM warehouse.paged ORDER BY id OFFSET 0",
    "SELECT id, (SELECT max(n) FROM warehouse.paged) AS n FROM warehouse.paged",
    "SELECT n AS id, n FROM warehouse.paged",  # no unique index on the key
])
def test_results_whose_pages_would_cost_more_than_their_rows_are_read_by_copy(warehouse: Warehouse, read_by: list[str], query: str) -> None:
    warehouse.execute("CREATE TABLE warehouse.paged (id int PRIMARY KEY, n int)")
    warehouse.execute("INSERT INTO warehouse.paged SELECT i, i % 7 FROM generate_series(1, 2000) AS i")
    warehouse.execute("ANALYZE warehouse.paged")
    source = PostgresSource({"url": warehouse.url})
    plain = _lines(source.stream_key_hash_copy("SELECT id, n FROM warehouse.paged", "id", ["n"], 400, salt="s"))
    assert (read_by, len(plain)) == (["pages"], 2000)  # the table itself is read in pages
    lines = _lines(source.stream_key_hash_copy(query, "id", ["n"], 400, salt="s"))
    assert read_by == ["pages", "copy"]
    assert len(lines) == 2000


def test_pages_are_read_in_one_snapshot(warehouse: Warehouse, read_by: list[str]) -> None:
    warehouse.execute("CREATE TABLE warehouse.paged (id int PRIMARY KEY, n int)")
    warehouse.execute("INSERT INTO warehouse.paged SELECT i, i FROM generate_series(1, 2000) AS i")
    warehouse.execute("ANALYZE warehouse.paged")
    source = PostgresSource({"url": warehouse.url})
    query = "SELECT id, n FROM warehouse.paged"
    before = _copy_lines(warehouse, query, "id", ["n"], salt="s")
    read_by.clear()
    blocks = source.stream_key_hash_copy(query, "id", ["n"], 500, salt="s")
    lines = _lines([next(blocks)])
    # Between pages: a row read already moves past the pages still to come, a later row
    # changes, and new rows arrive. The read still gives the rows as they were.
    warehouse.execute("UPDATE warehouse.paged SET id = 5000 WHERE id = 2")
    warehouse.execute("UPDATE warehouse.paged SET n = 0 WHERE id = 1700")
    warehouse.execute("INSERT INTO warehouse.paged SELECT i, i FROM generate_series(2001, 2100) AS i")
    lines += _lines(blocks)
    assert read_by == ["pages"]
    assert sorted(lines) == sorted(before)


@pytest.fixture
def slow_at_the_third_page(warehouse: Warehouse) -> str:
    """A query over 2,000 keyed rows whose third page of 400 takes 5 s."""
    warehouse.execute("CREATE TABLE warehouse.paged (id int PRIMARY KEY, n int)")
    warehouse.execute("INSERT INTO warehouse.paged SELECT i, i FROM generate_series(1, 2000) AS i")
    warehouse.execute("ANALYZE warehouse.paged")
    # (pg_sleep in the WHERE: in the select list it would keep the query a subquery of its own.)
    return ("SELECT id, n FROM warehouse.paged"
            " WHERE pg_sleep(CASE WHEN id = 1000 THEN 5 ELSE 0 END) IS NOT NULL")


def test_a_page_read_is_bounded_by_the_deadline_and_stops_when_closed(warehouse: Warehouse, read_by: list[str], slow_at_the_third_page: str) -> None:
    slow = slow_at_the_third_page
    source = PostgresSource({"url": warehouse.url}, statement_timeout_s=0.5)
    blocks = []
    with pytest.raises(ConnectorError) as failure:
        for block in source.stream_key_hash_copy(slow, "id", ["n"], 400, salt="s"):
            blocks.append(block)
    assert read_by == ["pages"]
    assert failure.value.code == "TIMEOUT"
    assert sum(block.count(b"\n") for block in blocks) == 800
    # Closed after one page: the source's transaction ends with it.
    source = PostgresSource({"url": warehouse.url})
    stream = source.stream_key_hash_copy("SELECT id, n FROM warehouse.paged", "id", ["n"], 400, salt="s")
    next(stream)
    stream.close()
    with psycopg.connect(warehouse.admin_url) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'retl-source'"
            " AND datname = current_database() AND state LIKE 'idle in transaction%%'"
        ).fetchone()[0] == 0


def test_an_interrupted_page_read_stops_at_once(warehouse: Warehouse, read_by: list[str], slow_at_the_third_page: str) -> None:
    slow = slow_at_the_third_page
    source = PostgresSource({"url": warehouse.url})
    timer = threading.Timer(0.5, source.interrupt)
    timer.start()
    try:
        with pytest.raises(ConnectorError):
            list(source.stream_key_hash_copy(slow, "id", ["n"], 400, salt="s"))
    finally:
        timer.cancel()
    assert read_by == ["pages"]


@pytest.mark.parametrize("mode", ["upsert", "mirror"])
def test_a_run_read_in_pages_sends_and_counts_only_what_changed(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink, read_by: list[str], mode: str) -> None:
    warehouse.execute("ALTER TABLE warehouse.people ADD PRIMARY KEY (id)")
    warehouse.insert(2_000)
    warehouse.execute("ANALYZE warehouse.people")
    setup = people_sync(mode=mode, destination_config={"batchSize": 500})
    assert driver.run(setup).rows_written == 2_000
    warehouse.execute("UPDATE warehouse.people SET name = 'Changed' WHERE id IN (4, 1500)")
    warehouse.execute("DELETE FROM warehouse.people WHERE id = 7")
    warehouse.insert(1, start=2_001)
    sink.received.clear()
    read_by.clear()
    run = driver.run(setup)
    assert run.status == "succeeded", run.error
    assert read_by == ["pages"]
    sent = sorted(str(r["external_id"]) for batch in sink.received for r in batch.records)
    assert sent == ["1500", "2001", "4"] + (["7"] if mode == "mirror" else [])  # 7: deleted
    assert (run.rows_read, run.rows_added, run.rows_changed, run.rows_unchanged) == (2_000, 1, 2, 1_997)
    if mode == "mirror":
        assert "7" not in sink.store and run.rows_removed == 1


def test_a_page_read_whose_connection_is_cut_fails_with_the_reason(warehouse: Warehouse, read_by: list[str]) -> None:
    warehouse.execute("CREATE TABLE warehouse.paged (id int PRIMARY KEY, n int)")
    warehouse.execute("INSERT INTO warehouse.paged SELECT i, i FROM generate_series(1, 2000) AS i")
    warehouse.execute("ANALYZE warehouse.paged")
    source = PostgresSource({"url": warehouse.url})
    blocks = source.stream_key_hash_copy("SELECT id, n FROM warehouse.paged", "id", ["n"], 400, salt="s")
    next(blocks)
    with psycopg.connect(warehouse.admin_url, autocommit=True) as conn:
        assert conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = 'retl-source' AND datname = current_database()"
        ).fetchone()[0] == 1
    with pytest.raises(ConnectorError) as failure:
        list(blocks)
    assert read_by == ["pages"]
    assert "terminating connection" in failure.value.message or "closed" in failure.value.message


_KEYS = {
    "int": "i", "bigint": "i * 10000000000", "uuid": "md5(i::text)::uuid",
    "text": "(ARRAY[E'tab\\tkey', E'new\\nline', 'plain', E'back\\\\slash'])[1 + i % 4] || i",
}


@pytest.mark.parametrize("key_type", list(_KEYS))
def test_a_large_table_is_read_by_two_readers_in_one_snapshot(warehouse: Warehouse, walks: list[int], divided: None, monkeypatch: pytest.MonkeyPatch, key_type: str) -> None:
    warehouse.execute(f"CREATE TABLE warehouse.paged (id {key_type} PRIMARY KEY, n int, note text)")
    warehouse.execute(f"INSERT INTO warehouse.paged SELECT {_KEYS[key_type]}, i, 'n' || i"
                      " FROM generate_series(1, 3000) AS i")
    warehouse.execute("ANALYZE warehouse.paged")
    query = "SELECT id, n, note FROM warehouse.paged"
    before = _copy_lines(warehouse, query, "id", ["n", "note"], salt="s", fast=True)
    # Every row changes after the read's snapshot was taken and before the second reader
    # starts: both readers still read the rows as they were.
    export = postgres_source._exported_snapshot

    def export_then_change(conn):
        snapshot = export(conn)
        warehouse.execute("UPDATE warehouse.paged SET n = -n")
        return snapshot

    monkeypatch.setattr(postgres_source, "_exported_snapshot", export_then_change)
    source = PostgresSource({"url": warehouse.url})
    walks.clear()
    lines = _lines(source.stream_key_hash_copy(query, "id", ["n", "note"], 400, salt="s", fast=True))
    assert len(walks) == 2 and min(walks) > 0 and sum(walks) == 3000
    assert len(lines) == 3000
    assert sorted(lines) == sorted(before)


def test_a_table_without_statistics_is_read_by_one_reader(warehouse: Warehouse, walks: list[int], divided: None) -> None:
    warehouse.execute("CREATE TABLE warehouse.paged (id int PRIMARY KEY, n int) WITH (autovacuum_enabled = off)")
    warehouse.execute("INSERT INTO warehouse.paged SELECT i, i FROM generate_series(1, 3000) AS i")
    source = PostgresSource({"url": warehouse.url})
    lines = _lines(source.stream_key_hash_copy("SELECT id, n FROM warehouse.paged", "id", ["n"], 400, salt="s"))
    assert len(lines) == 3000
    assert walks == [3000]  # not divided: nothing says where the middle key is


def test_a_source_that_does_not_export_its_snapshot_is_read_by_one_reader(warehouse: Warehouse) -> None:
    with psycopg.connect(warehouse.url) as conn:
        conn.execute("SELECT 1")
        conn.execute("SAVEPOINT inner_work")  # Postgres exports no snapshot from a subtransaction
        assert postgres_source._exported_snapshot(conn) is None
        # The transaction was rolled back, not left failed: the read goes on in a new one.
        assert conn.execute("SELECT count(*) FROM pg_class WHERE relname = 'pg_class'").fetchone()[0] == 1


def _source_sessions(warehouse: Warehouse) -> list[str]:
    with psycopg.connect(warehouse.admin_url) as conn:
        return [row[0] for row in conn.execute(
            "SELECT state FROM pg_stat_activity WHERE application_name = 'retl-source'"
            " AND datname = current_database()"
        ).fetchall()]


def test_a_divided_read_is_stopped_by_an_interrupt_and_closes_its_readers(warehouse: Warehouse, walks: list[int], divided: None, slow_at_the_third_page: str) -> None:
    source = PostgresSource({"url": warehouse.url})
    timer = threading.Timer(0.5, source.interrupt)
    timer.start()
    try:
        with pytest.raises(ConnectorError) as failure:
            list(source.stream_key_hash_copy(slow_at_the_third_page, "id", ["n"], 400, salt="s"))
    finally:
        timer.cancel()
    assert failure.value.message == "the source query was cancelled with its run"
    assert len(walks) == 2
    assert _source_sessions(warehouse) == []
    # Closed after its first block, both readers end their transactions.
    source = PostgresSource({"url": warehouse.url})
    stream = source.stream_key_hash_copy(slow_at_the_third_page, "id", ["n"], 400, salt="s")
    next(stream)
    stream.close()
    assert _source_sessions(warehouse) == []


@pytest.mark.parametrize("key_type", ["int", "text"])
def test_a_read_divided_three_ways_reads_every_row_once(warehouse: Warehouse, walks: list[int], divided: None, monkeypatch: pytest.MonkeyPatch, key_type: str) -> None:
    monkeypatch.setattr(PostgresSource, "page_readers", 3)
    # Text keys in mixed case, in a collation that orders them otherwise than Python does
    # ('a1' before 'B2').
    keys = {"int": "i", "text": "(ARRAY['a', 'B'])[1 + i % 2] || i"}[key_type]
    column = {"int": "int", "text": 'text COLLATE "und-x-icu"'}[key_type]
    warehouse.execute(f"CREATE TABLE warehouse.paged (id {column} PRIMARY KEY, n int)")
    warehouse.execute(f"INSERT INTO warehouse.paged SELECT {keys}, i FROM generate_series(1, 3000) AS i")
    warehouse.execute("ANALYZE warehouse.paged")
    query = "SELECT id, n FROM warehouse.paged"
    source = PostgresSource({"url": warehouse.url})
    lines = _lines(source.stream_key_hash_copy(query, "id", ["n"], 400, salt="s"))
    assert len(walks) == 3 and min(walks) > 0
    assert sorted(lines) == sorted(_copy_lines(warehouse, query, "id", ["n"], salt="s"))


def test_a_read_whose_second_reader_cannot_connect_is_read_by_the_first(warehouse: Warehouse, walks: list[int], divided: None, monkeypatch: pytest.MonkeyPatch) -> None:
    warehouse.execute("CREATE TABLE warehouse.paged (id int PRIMARY KEY, n int)")
    warehouse.execute("INSERT INTO warehouse.paged SELECT i, i FROM generate_series(1, 3000) AS i")
    warehouse.execute("ANALYZE warehouse.paged")
    connect = PostgresSource._connect

    def no_second_connection(self, **options):
        if options.get("snapshot"):
            raise ConnectorError("cannot reach the source: too many clients already")
        return connect(self, **options)

    monkeypatch.setattr(PostgresSource, "_connect", no_second_connection)
    source = PostgresSource({"url": warehouse.url})
    lines = _lines(source.stream_key_hash_copy("SELECT id, n FROM warehouse.paged", "id", ["n"], 400, salt="s"))
    assert len(lines) == 3000
    assert walks == [3000]
