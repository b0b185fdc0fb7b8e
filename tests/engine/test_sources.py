"""The Postgres and DuckDB sources: columns without reading, chunked streams, hashes computed in
the source, read-only queries and the statement timeout."""

from __future__ import annotations

import hashlib

import psycopg
import pytest

from connectors import registry
from connectors.errors import ConnectorError
from connectors.sources.duckdb import DuckDbSource
from connectors.sources.postgres import PostgresSource
from tests.engine.conftest import Warehouse


def _all(chunks) -> list[tuple]:
    return [row for chunk in chunks for row in chunk]


def test_both_sources_are_registered() -> None:
    assert registry.source_class("postgres") is PostgresSource
    assert registry.source_class("duckdb") is DuckDbSource
    assert PostgresSource.secret_fields() == ("url",)


def test_postgres_columns_streams_and_hashes(warehouse: Warehouse) -> None:
    warehouse.insert(25)
    source = PostgresSource({"url": warehouse.url})
    query = "SELECT id, email FROM warehouse.people ORDER BY id;"
    assert source.columns(query) == ["id", "email"]
    chunks = list(source.stream(query, chunk_size=10))
    assert [len(c) for c in chunks] == [10, 10, 5]
    assert chunks[0][0] == (1, "user1@example.com")
    hashes = _all(source.stream_key_hashes(query, "id", ["id", "email"], chunk_size=7))
    assert hashes[0] == ("1", hashlib.md5(b"(1,user1@example.com)").hexdigest())
    assert len({h for _, h in hashes}) == 25


def test_postgres_hash_changes_only_with_the_hashed_columns(warehouse: Warehouse) -> None:
    warehouse.insert(3)
    source = PostgresSource({"url": warehouse.url})
    query = "SELECT * FROM warehouse.people"
    before = dict(_all(source.stream_key_hashes(query, "id", ["email"])))
    warehouse.execute("UPDATE warehouse.people SET name = 'other' WHERE id = 1")
    assert dict(_all(source.stream_key_hashes(query, "id", ["email"]))) == before
    warehouse.execute("UPDATE warehouse.people SET email = 'other' WHERE id = 1")
    after = dict(_all(source.stream_key_hashes(query, "id", ["email"])))
    assert after["1"] != before["1"] and after["2"] == before["2"]


def test_postgres_rows_for_keys_filters_in_the_source(warehouse: Warehouse) -> None:
    warehouse.insert(50)
    source = PostgresSource({"url": warehouse.url})
    rows = _all(source.stream_rows_for_keys(
        "SELECT * FROM warehouse.people", "id", ["email"], ["3", "44"]
    ))
    assert sorted(rows) == [("3", "user3@example.com"), ("44", "user44@example.com")]


@pytest.mark.parametrize("statement", [
    "DELETE FROM warehouse.people",
    "WITH gone AS (DELETE FROM warehouse.people RETURNING *) SELECT * FROM gone",
    "SELECT id, nextval('warehouse.seq') FROM warehouse.people",
])
def test_postgres_query_that_writes_fails_and_changes_nothing(warehouse: Warehouse, statement: str) -> None:
    warehouse.insert(3)
    warehouse.execute("CREATE SEQUENCE warehouse.seq")
    source = PostgresSource({"url": warehouse.url})
    with pytest.raises(ConnectorError) as failure:
        _all(source.stream(statement))
    message = failure.value.message
    assert "read-only" in message or "write" in message
    count = warehouse.conn.execute("SELECT count(*) FROM warehouse.people").fetchone()[0]
    assert count == 3


def test_postgres_statement_timeout_cancels_a_slow_query(warehouse: Warehouse) -> None:
    source = PostgresSource({"url": warehouse.url}, statement_timeout_s=0.2)
    with pytest.raises(ConnectorError) as failure:
        _all(source.stream("SELECT pg_sleep(5)"))
    assert failure.value.code == "TIMEOUT"


def test_postgres_key_hash_copy_is_bounded_by_the_statement_timeout(warehouse: Warehouse) -> None:
    source = PostgresSource({"url": warehouse.url}, statement_timeout_s=0.2)
    with pytest.raises(ConnectorError) as failure:
        list(source.stream_key_hash_copy("SELECT 1 AS id, pg_sleep(5) AS n", "id", ["n"]))
    assert failure.value.code == "TIMEOUT"


def test_postgres_key_hash_copy_failing_midway_says_why(warehouse: Warehouse) -> None:
    source = PostgresSource({"url": warehouse.url})
    query = "SELECT i AS id, 1 / (20000 - i) AS n FROM generate_series(1, 30000) AS i"
    blocks = []
    with pytest.raises(ConnectorError) as failure:
        for block in source.stream_key_hash_copy(query, "id", ["n"], 1000):
            blocks.append(block)
    assert "division by zero" in failure.value.message
    assert sum(block.count(b"\n") for block in blocks) < 20000


@pytest.mark.parametrize(("query", "key", "unique"), [
    ("SELECT id, email FROM warehouse.accounts", "id", True),
    ("SELECT id AS k, email FROM warehouse.accounts WHERE n > 5 ORDER BY email LIMIT 10", "k", True),
    ("SELECT id, (SELECT max(n) FROM warehouse.accounts) AS m FROM warehouse.accounts", "id", True),
    ("SELECT code FROM warehouse.accounts", "code", True),  # NOT NULL UNIQUE
    ("SELECT email FROM warehouse.accounts", "email", False),  # unique, but may be null
    ("SELECT n FROM warehouse.accounts", "n", False),  # no unique index
    ("SELECT id + 0 AS id FROM warehouse.accounts", "id", False),  # an expression
    ("SELECT a.id FROM warehouse.accounts a, warehouse.accounts b", "id", False),
    ("SELECT id FROM warehouse.accounts UNION ALL SELECT id FROM warehouse.accounts", "id", False),
    ("SELECT id, generate_series(1, 2) AS g FROM warehouse.accounts", "id", False),
    ("SELECT id FROM warehouse.parted", "id", False),  # a partitioned table
    ("SELECT id FROM warehouse.parent", "id", False),  # a table with a child table
    ("SELECT 1 AS id", "id", False),
])
def test_postgres_proves_unique_keys_from_the_catalog_only_when_they_must_be(warehouse: Warehouse, query: str, key: str, unique: bool) -> None:
    warehouse.execute(
        "CREATE TABLE warehouse.accounts (id int PRIMARY KEY, email text UNIQUE,"
        " code text NOT NULL UNIQUE, n int)"
    )
    warehouse.execute("INSERT INTO warehouse.accounts SELECT i, 'e' || i, 'c' || i, i"
                      " FROM generate_series(1, 20) AS i")
    warehouse.execute("CREATE TABLE warehouse.parted (id int, y int, PRIMARY KEY (id, y))"
                      " PARTITION BY RANGE (y)")
    warehouse.execute("CREATE TABLE warehouse.parted_1 PARTITION OF warehouse.parted"
                      " FOR VALUES FROM (0) TO (10)")
    warehouse.execute("CREATE TABLE warehouse.parent (id int PRIMARY KEY)")
    warehouse.execute("CREATE TABLE warehouse.child () INHERITS (warehouse.parent)")
    warehouse.execute("INSERT INTO warehouse.parent VALUES (1)")
    warehouse.execute("INSERT INTO warehouse.child VALUES (1)")  # the same key, twice in all
    warehouse.execute("GRANT SELECT ON ALL TABLES IN SCHEMA warehouse TO PUBLIC")
    assert PostgresSource({"url": warehouse.url}).keys_unique(query, key) is unique


def test_postgres_bad_credentials_or_host_is_a_connector_error() -> None:
    source = PostgresSource({"url": "postgresql://nobody@127.0.0.1:1/none"})
    with pytest.raises(ConnectorError):
        source.test()


@pytest.fixture
def duck_file(tmp_path) -> str:
    import duckdb

    path = str(tmp_path / "warehouse.duckdb")
    with duckdb.connect(path) as conn:
        conn.execute("CREATE TABLE people AS SELECT i AS id, 'user' || i || '@example.com' AS email"
                     " FROM range(1, 26) t(i)")
    return path


def test_duckdb_columns_streams_and_hashes(duck_file: str) -> None:
    source = DuckDbSource({"path": duck_file})
    query = "SELECT id, email FROM people ORDER BY id"
    assert source.columns(query) == ["id", "email"]
    chunks = list(source.stream(query, chunk_size=10))
    assert [len(c) for c in chunks] == [10, 10, 5]
    hashes = _all(source.stream_key_hashes(query, "id", ["id", "email"]))
    assert hashes[0][0] == "1" and len(hashes[0][1]) == 32
    assert len({h for _, h in hashes}) == 25
    again = _all(source.stream_key_hashes(query, "id", ["id", "email"]))
    assert again == hashes
    rows = _all(source.stream_rows_for_keys(query, "id", ["email"], ["2", "20"]))
    assert sorted(rows) == [("2", "user2@example.com"), ("20", "user20@example.com")]


def test_duckdb_decimals_and_timestamptz_read_as_duckdb_gives_them(tmp_path) -> None:
    """Decimals and TIMESTAMPTZ are read as text and microseconds and rebuilt: the values are
    DuckDB's own (timestamps as the same instant, in UTC; out of Python's range as DuckDB gives
    them), the hashes unchanged."""
    import datetime as dt
    import decimal

    import duckdb

    path = str(tmp_path / "typed.duckdb")
    with duckdb.connect(path) as conn:
        conn.execute(
            "CREATE TABLE typed (id INTEGER, amount DECIMAL(10,2), wide DECIMAL(38,10),"
            " seen_at TIMESTAMPTZ, plain TIMESTAMP)"
        )
        conn.execute(
            "INSERT INTO typed VALUES"
            " (1, 1250.00, 12345678901234567890.0123456789, '2025-01-02 03:04:05.123456+02',"
            "  '2025-01-02 03:04:05'),"
            " (2, -0.50, -0.0000000001, '1960-06-01 00:00:00.000001+00', NULL),"
            " (3, NULL, NULL, NULL, NULL),"
            " (4, 0, 0, 'infinity', NULL),"
            " (5, 7.25, 1, '-infinity', NULL),"
            " (6, 1, 1, '12000-01-01 00:00:00+00', NULL)"
        )
        native = conn.execute("SELECT * FROM typed ORDER BY id").fetchall()
    source = DuckDbSource({"path": path})
    query = "SELECT * FROM typed ORDER BY id"
    columns = ["id", "amount", "wide", "seen_at", "plain"]
    assert _all(source.stream(query)) == native
    with_hashes = _all(source.stream_rows_with_hashes(query, "id", columns))
    assert [row[2:] for row in with_hashes] == native
    assert [row[:2] for row in with_hashes] == _all(source.stream_key_hashes(query, "id", columns))
    by_key = _all(source.stream_rows_for_keys(query, "id", columns, ["2", "4"]))
    assert [row[1:] for row in by_key] == [native[1], native[3]]
    first = with_hashes[0]
    assert type(first[3]) is decimal.Decimal and str(first[3]) == "1250.00"
    assert str(first[4]) == "12345678901234567890.0123456789"
    assert first[5] == dt.datetime(2025, 1, 2, 1, 4, 5, 123456, tzinfo=dt.UTC)
    assert first[5].utcoffset() == dt.timedelta(0)
    # What Python cannot hold comes back as DuckDB itself gives it.
    assert [row[5] for row in with_hashes[3:]] == [
        dt.datetime.max, dt.datetime.min, "12000-01-01 00:00:00+00"
    ]


def test_duckdb_reads_values_in_exactly_the_json_form_a_destination_would_give_them(tmp_path) -> None:
    """With json_forms=True, dates, times and decimals come as text and numbers made by DuckDB:
    for every value, exactly what `json_value` makes of the value read without it (Python's
    ISO 8601 text, "Z" for UTC, an integer for an integral decimal, the float otherwise); the
    keys and hashes are unchanged."""
    import duckdb

    from connectors.json_forms import json_value

    path = str(tmp_path / "typed.duckdb")
    with duckdb.connect(path) as conn:
        conn.execute(
            "CREATE TABLE typed (id INTEGER, amount DECIMAL(10,2), wide DECIMAL(38,10),"
            " whole DECIMAL(38,0), seen_at TIMESTAMPTZ, plain TIMESTAMP, day DATE, label TEXT,"
            " n INTEGER, ok BOOLEAN, ratio DOUBLE)"
        )
        conn.execute(
            "INSERT INTO typed VALUES"
            " (1, 1250.00, 12345678901234567890.0123456789, 99999999999999999999999999999999999999,"
            "  '2025-01-02 03:04:05.123456+02', '2025-01-02 03:04:05', '2025-01-02', 'a', 1,"
            "  true, 0.1),"
            " (2, -0.50, -0.0000000001, -1, '1960-06-01 00:00:00.000001+00',"
            "  '1960-06-01 23:59:59.999999', '1960-06-01', 'b', -1, false, -2.5),"
            " (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),"
            " (4, 0, 0, 0, 'infinity', 'infinity', 'infinity', '', 0, NULL, 0),"
            " (5, 7.25, 1, 5, '-infinity', '-infinity', '-infinity', 'c', 5, NULL, 1e300),"
            " (6, -0.00, 1.5000000000, 10, '12000-01-01 00:00:00+00', '0999-03-04 05:06:07.5',"
            "  '0005-01-01', 'd', 6, NULL, NULL),"
            " (7, 0.01, 100.0000000000, 7, '1969-12-31 23:59:59.5+00', '9999-12-31 23:59:59.999999',"
            "  '9999-12-31', 'e', 7, NULL, NULL),"
            " (8, 99999999.99, 0.1000000000, 8, '0001-01-01 00:00:00+00', '2000-02-29 12:00:00',"
            "  '2000-02-29', 'f', 8, NULL, NULL)"
        )
    source = DuckDbSource({"path": path})
    query = "SELECT * FROM typed ORDER BY id"
    columns = ["id", "amount", "wide", "whole", "seen_at", "plain", "day", "label", "n", "ok",
               "ratio"]
    typed = _all(source.stream_rows_with_hashes(query, "id", columns, 3, salt="s"))
    forms = _all(source.stream_rows_with_hashes(query, "id", columns, 3, salt="s", json_forms=True))

    def in_json_form(row: tuple) -> tuple:
        return tuple(v if v is None or type(v) in (str, int, float, bool) else json_value(v)
                     for v in row)

    expected = [in_json_form(row) for row in typed]
    assert [in_json_form(row) for row in forms] == expected
    for got, want in zip(forms, expected, strict=True):  # same types too: 1 is not 1.0
        assert [type(v) for v in in_json_form(got)] == [type(v) for v in want]
    # Within Python's range DuckDB made the form itself; beyond it (±infinity) the value is
    # DuckDB's own, for the destination's JSON form to take, as without the option.
    assert [row for row in forms if row[0] not in ("4", "5")] == [
        row for row in expected if row[0] not in ("4", "5")
    ]
    assert forms[0][6] == "2025-01-02T01:04:05.123456Z"
    assert forms[0][3] == 1250 and forms[1][3] == -0.5
    typed_by_key = _all(source.stream_rows_for_keys(query, "id", columns, ["2", "7"]))
    forms_by_key = _all(source.stream_rows_for_keys(query, "id", columns, ["2", "7"],
                                                   json_forms=True))
    assert forms_by_key == [(row[0], *row[2:]) for row in forms if row[0] in ("2", "7")]
    assert [in_json_form(row) for row in typed_by_key] == forms_by_key


def test_duckdb_memory_reads_parquet_paths(tmp_path) -> None:
    import duckdb

    path = tmp_path / "people.parquet"
    duckdb.sql(f"COPY (SELECT 1 AS id, 'a' AS name UNION ALL SELECT 2, 'b') TO '{path}' (FORMAT parquet)")
    source = DuckDbSource({}, allowed_directories=(str(tmp_path),))
    assert sorted(_all(source.stream(f"SELECT * FROM '{path}'"))) == [(1, "a"), (2, "b")]


@pytest.mark.parametrize("query", [
    "SELECT * FROM read_text('/proc/self/environ')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('{allowed}/../secret.txt')",
])
def test_duckdb_queries_cannot_read_files_outside_the_allowed_folders(tmp_path, query) -> None:
    allowed = tmp_path / "data"
    allowed.mkdir()
    (tmp_path / "secret.txt").write_text("RETL_SECRET_KEY=top")
    source = DuckDbSource({}, allowed_directories=(str(allowed),))
    with pytest.raises(ConnectorError, match="ermission"):
        _all(source.stream(query.format(allowed=allowed)))


def test_duckdb_queries_read_no_files_when_no_folder_is_allowed(tmp_path) -> None:
    (tmp_path / "rows.csv").write_text("id\n1\n")
    with pytest.raises(ConnectorError, match="ermission"):
        _all(DuckDbSource({}).stream(f"SELECT * FROM read_csv('{tmp_path}/rows.csv')"))


def test_duckdb_database_outside_the_allowed_folders_is_refused(tmp_path) -> None:
    with pytest.raises(ConnectorError, match="outside"):
        DuckDbSource({"path": "/var/lib/other.duckdb"}, allowed_directories=(str(tmp_path),))


@pytest.mark.parametrize("statement", [
    "DELETE FROM people",
    "CREATE TABLE x AS SELECT 1",
    "COPY people TO '/tmp/retl-should-not-exist.csv'",
    "SELECT 1; DROP TABLE people",
])
def test_duckdb_query_that_writes_fails_and_changes_nothing(duck_file: str, statement: str) -> None:
    import duckdb

    source = DuckDbSource({"path": duck_file})
    with pytest.raises(ConnectorError) as failure:
        _all(source.stream(statement))
    assert "SELECT" in failure.value.message
    with duckdb.connect(duck_file, read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM people").fetchone()[0] == 25


def test_duckdb_statement_timeout_interrupts_a_slow_query() -> None:
    source = DuckDbSource({}, statement_timeout_s=0.2)
    with pytest.raises(ConnectorError) as failure:
        _all(source.stream("SELECT count(*) FROM range(10000000000) a"))
    assert failure.value.code == "TIMEOUT"


def test_duckdb_source_syncs_end_to_end(driver, workspace_id, duck_file: str, sink) -> None:
    from tests.engine.conftest import make_sync

    setup = make_sync(workspace_id, {"path": duck_file}, sink.url, source_connector="duckdb",
                      query="SELECT id, email, 'User ' || id AS name FROM people")
    run = driver.run(setup)
    assert run.status == "succeeded", run.error
    assert len(sink.store) == 25
    assert sink.store["5"] == {"external_id": 5, "email": "user5@example.com", "full_name": "User 5"}


def test_postgres_source_reads_with_its_own_read_only_transaction(warehouse: Warehouse) -> None:
    source = PostgresSource({"url": warehouse.url})
    rows = _all(source.stream("SELECT current_setting('transaction_read_only')"))
    assert rows == [("on",)]
    with psycopg.connect(warehouse.url) as conn:
        assert conn.execute("SHOW transaction_read_only").fetchone()[0] == "off"


@pytest.mark.parametrize("read", ["columns", "stream", "stream_key_hashes", "stream_key_hash_copy"])
def test_postgres_query_cannot_smuggle_a_second_statement(warehouse: Warehouse, read: str) -> None:
    warehouse.execute("CREATE TABLE warehouse.accounts (id int)")
    smuggled = "SELECT 1 AS id) AS q LIMIT 0; COMMIT; DROP TABLE warehouse.accounts; SELECT * FROM (SELECT 1 AS id"
    source = PostgresSource({"url": warehouse.url})
    calls = {
        "columns": lambda: source.columns(smuggled),
        "stream": lambda: _all(source.stream(smuggled)),
        "stream_key_hashes": lambda: _all(source.stream_key_hashes(smuggled, "id", ["id"])),
        "stream_key_hash_copy": lambda: _all(source.stream_key_hash_copy(smuggled, "id", ["id"])),
    }
    with pytest.raises(ConnectorError):
        calls[read]()
    with psycopg.connect(warehouse.url) as conn:
        assert conn.execute("SELECT to_regclass('warehouse.accounts')").fetchone()[0] is not None


def test_a_malformed_postgres_url_never_echoes_the_password() -> None:
    with pytest.raises(ConnectorError) as failure:
        PostgresSource({"url": "postgresql://u:pass word@127.0.0.1:5432/db?bogus option=1"}).test()
    assert "pass word" not in str(failure.value)


@pytest.mark.parametrize("read", ["stream", "stream_key_hash_copy"])
def test_closing_a_postgres_source_ends_a_stream_stopped_early(warehouse: Warehouse, read: str) -> None:
    warehouse.insert(50)
    source = PostgresSource({"url": warehouse.url})
    query = "SELECT * FROM warehouse.people"
    stream = (source.stream(query, chunk_size=10) if read == "stream"
              else source.stream_key_hash_copy(query, "id", ["name"], 10))
    next(stream)  # a reader that stops here, as a run that failed mid-read does
    source.close()
    with psycopg.connect(warehouse.url) as conn:
        open_reads = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'retl-source'"
            " AND datname = current_database()"
        ).fetchone()[0]
    assert open_reads == 0
    warehouse.execute("DROP TABLE warehouse.people")  # no lock is left behind


@pytest.mark.parametrize("key_sql", [
    "i", "i::BIGINT * 10000000000", "'k' || i", "md5(i::VARCHAR)::UUID",
    "DATE '2025-01-01' + i::INTEGER",  # no key type of its own: compared as text
    "i / 4",  # DOUBLE: as text too
])
def test_duckdb_rows_for_keys_are_those_keys_whatever_the_key_type(tmp_path, key_sql: str) -> None:
    import duckdb

    path = str(tmp_path / "keys.duckdb")
    with duckdb.connect(path) as conn:
        conn.execute(f"CREATE TABLE t AS SELECT {key_sql} AS id, i AS n FROM range(1, 41) r(i)")
        keys = [row[0] for row in conn.execute("SELECT CAST(id AS VARCHAR) FROM t WHERE n IN (3, 17, 40)").fetchall()]
    source = DuckDbSource({"path": path})
    rows = _all(source.stream_rows_for_keys("SELECT id, n FROM t", "id", ["n"], [*keys, "no such key"]))
    assert sorted(rows, key=lambda row: row[1]) == [(keys[0], 3), (keys[1], 17), (keys[2], 40)]
