"""The Postgres destination against a real Postgres: each test gets its own schema."""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import sql

from connectors.destinations.base import DestinationField, RateLimit, Record, RecordResult
from connectors.destinations.postgres import PostgresDestination
from connectors.errors import AuthError, ConnectorError, RetryableError
from connectors.registry import destination_class

DATABASE_URL = os.environ.get("RETL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def admin() -> Iterator[psycopg.Connection[Any]]:
    try:
        conn = psycopg.connect(DATABASE_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no Postgres at {DATABASE_URL}: {exc}")
    with conn:
        yield conn


@pytest.fixture
def schema(admin: psycopg.Connection[Any]) -> Iterator[str]:
    name = f"retl_dest_{uuid.uuid4().hex[:12]}"
    admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    admin.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(name)))
    admin.execute(
        '''
        CREATE TABLE people (
            id integer PRIMARY KEY,
            email text UNIQUE,
            name varchar(20) NOT NULL,
            age smallint CHECK (age >= 0),
            score numeric(6, 2),
            ratio double precision,
            active boolean DEFAULT true,
            born date,
            seen_at timestamp,
            seen_tz timestamptz,
            profile jsonb,
            tags json,
            created_at timestamptz NOT NULL DEFAULT now(),
            name_upper text GENERATED ALWAYS AS (upper(name)) STORED
        );
        CREATE TABLE pairs (a text, b text, note text, UNIQUE (a, b));
        CREATE TABLE "Odd ""Table""" ("key col" text PRIMARY KEY, "Value" bigint);
        CREATE VIEW people_view AS SELECT id FROM people;
        '''
    )
    admin.execute("SET search_path TO public")
    try:
        yield name
    finally:
        admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def destination(schema: str) -> Iterator[PostgresDestination]:
    connector = PostgresDestination({"url": DATABASE_URL, "schema": schema})
    yield connector
    connector.close()


def rows(admin: psycopg.Connection[Any], schema: str, query: str) -> list[tuple[Any, ...]]:
    admin.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
    try:
        return admin.execute(query).fetchall()
    finally:
        admin.execute("SET search_path TO public")


def person(i: int, **fields: Any) -> Record:
    return Record(str(i), {"id": i, "name": f"p{i}", **fields})


def test_registered() -> None:
    assert destination_class("postgres") is PostgresDestination
    assert PostgresDestination.secret_fields() == ("url",)
    assert PostgresDestination.supported_modes == {"upsert", "insert", "update", "delete", "mirror"}
    assert (PostgresDestination.batch_size, PostgresDestination.max_concurrency) == (1000, 4)
    assert PostgresDestination.rate_limit == RateLimit(100, 1.0)
    with pytest.raises(ConnectorError):
        PostgresDestination({})


def test_discovery(destination: PostgresDestination) -> None:
    destination.test()
    objects = {o.api_name: o for o in destination.list_objects()}
    assert set(objects) == {"people", "pairs", 'Odd "Table"'}  # the view is not writable
    assert objects["people"].supports_upsert and not objects["pairs"].supports_upsert
    fields = {f.name: f for f in destination.list_fields("people")}
    assert {name: f.data_type for name, f in fields.items()} == {
        "id": "integer",
        "email": "string",
        "name": "string",
        "age": "integer",
        "score": "number",
        "ratio": "number",
        "active": "boolean",
        "born": "date",
        "seen_at": "datetime",
        "seen_tz": "datetime",
        "profile": "json",
        "tags": "json",
        "created_at": "datetime",
        "name_upper": "string",
    }
    assert {name for name, f in fields.items() if f.external_id} == {"id", "email"}
    assert {name for name, f in fields.items() if f.required} == {"id", "name"}
    assert not fields["name_upper"].updateable
    pairs = destination.list_fields("pairs")
    assert not any(f.external_id for f in pairs)  # only unique together, not alone
    with pytest.raises(ConnectorError, match="does not exist"):
        destination.list_fields("nope")


def test_upsert_inserts_and_updates(
    destination: PostgresDestination, admin: psycopg.Connection[Any], schema: str
) -> None:
    first = [
        person(
            1,
            age=30,
            score=Decimal("12.50"),
            ratio=0.25,
            active=False,
            born=dt.date(1990, 5, 17),
            seen_at=dt.datetime(2025, 3, 27, 17, 0, 5, tzinfo=dt.UTC),
            seen_tz=dt.datetime(2025, 3, 27, 17, 0, 5, tzinfo=dt.UTC),
            profile={"plan": "pro", "seats": [1, 2]},
            tags=["a", "b"],
        ),
        person(2),
    ]
    assert destination.write_batch("people", "upsert", "id", first) == [RecordResult.success()] * 2
    second = [person(2, name="renamed", age=41), person(3)]
    assert destination.write_batch("people", "upsert", "id", second) == [RecordResult.success()] * 2
    got = rows(
        admin,
        schema,
        "SELECT id, name, age, score, ratio, active, born, seen_at, seen_tz, profile, tags, "
        "name_upper FROM people ORDER BY id",
    )
    assert got[0] == (
        1,
        "p1",
        30,
        Decimal("12.50"),
        0.25,
        False,
        dt.date(1990, 5, 17),
        dt.datetime(2025, 3, 27, 17, 0, 5),  # stored as the UTC wall time
        dt.datetime(2025, 3, 27, 17, 0, 5, tzinfo=dt.UTC),
        {"plan": "pro", "seats": [1, 2]},
        ["a", "b"],
        "P1",
    )
    assert got[1][:3] == (2, "renamed", 41)
    assert got[2][:2] == (3, "p3")


def test_upsert_on_another_unique_column_and_key_only(
    destination: PostgresDestination, admin: psycopg.Connection[Any], schema: str
) -> None:
    destination.write_batch(
        "people", "upsert", "email", [Record("a@x.io", {"email": "a@x.io", "id": 1, "name": "A"})]
    )
    # Postgres checks NOT NULL before ON CONFLICT: an upsert must carry every required column.
    (missing_id,) = destination.write_batch(
        "people", "upsert", "email", [Record("a@x.io", {"email": "a@x.io", "name": "B"})]
    )
    assert missing_id.code == "DESTINATION_VALIDATION" and '"id"' in (missing_id.message or "")
    destination.write_batch(
        "people", "upsert", "email", [Record("a@x.io", {"email": "a@x.io", "id": 1, "name": "B"})]
    )
    assert rows(admin, schema, "SELECT id, email, name FROM people") == [(1, "a@x.io", "B")]
    results = destination.write_batch('Odd "Table"', "upsert", "key col", [Record("k", {})])
    assert results == [RecordResult.success()]
    destination.write_batch('Odd "Table"', "upsert", "key col", [Record("k", {"Value": 7})])
    assert rows(admin, schema, 'SELECT * FROM "Odd ""Table"""') == [("k", 7)]


def test_upsert_needs_a_unique_key(destination: PostgresDestination) -> None:
    with pytest.raises(ConnectorError, match="unique index"):
        destination.write_batch("pairs", "upsert", "a", [Record("x", {"a": "x", "b": "y"})])
    with pytest.raises(ConnectorError, match="do not exist"):
        destination.write_batch("people", "upsert", "id", [person(1, nickname="x")])
    with pytest.raises(ConnectorError, match="generated"):
        destination.write_batch("people", "upsert", "id", [person(1, name_upper="X")])
    with pytest.raises(ConnectorError):
        destination.write_batch("missing", "upsert", "id", [person(1)])


def test_unique_index_added_later_is_seen(
    destination: PostgresDestination, admin: psycopg.Connection[Any], schema: str
) -> None:
    destination.list_fields("pairs")
    admin.execute(
        sql.SQL("CREATE UNIQUE INDEX ON {} (note)").format(sql.Identifier(schema, "pairs"))
    )
    results = destination.write_batch(
        "pairs", "upsert", "note", [Record("n", {"note": "n", "a": "1"})]
    )
    assert results == [RecordResult.success()]


def test_insert_reports_existing_keys(
    destination: PostgresDestination, admin: psycopg.Connection[Any], schema: str
) -> None:
    destination.write_batch("people", "insert", "id", [person(1)])
    results = destination.write_batch(
        "people", "insert", "id", [person(1, name="dup"), person(2), person(2)]
    )
    assert results[0] == RecordResult.failure(
        "DESTINATION_VALIDATION", "a row with this key already exists"
    )
    assert results[1].ok and not results[2].ok
    assert rows(admin, schema, "SELECT id, name FROM people ORDER BY id") == [(1, "p1"), (2, "p2")]
    # Without a unique index there is nothing to conflict with.
    pairs = [Record("x", {"a": "x", "b": "1"}), Record("x", {"a": "x", "b": "2"})]
    assert destination.write_batch("pairs", "insert", "a", pairs) == [RecordResult.success()] * 2


def test_update_reports_missing_keys(
    destination: PostgresDestination, admin: psycopg.Connection[Any], schema: str
) -> None:
    destination.write_batch("people", "insert", "id", [person(1), person(2)])
    results = destination.write_batch(
        "people",
        "update",
        "id",
        [Record("2", {"id": 2, "age": 9}), Record("7", {"id": 7, "age": 1})],
    )
    assert results == [
        RecordResult.success(),
        RecordResult.failure("NOT_FOUND", "no row with this key"),
    ]
    assert rows(admin, schema, "SELECT id, age FROM people ORDER BY id") == [(1, None), (2, 9)]
    results = destination.write_batch(
        "people", "update", "id", [Record("1", {"id": 1}), Record("8", {"id": 8})]
    )
    assert [r.ok for r in results] == [True, False]


def test_delete(
    destination: PostgresDestination, admin: psycopg.Connection[Any], schema: str
) -> None:
    destination.write_batch("people", "insert", "id", [person(1), person(2), person(3)])
    results = destination.write_batch(
        "people", "delete", "id", [Record("1", {"id": 1}), Record("3", {}), Record("99", {})]
    )
    assert results == [RecordResult.success()] * 3
    assert rows(admin, schema, "SELECT id FROM people") == [(2,)]
    results = destination.write_batch(
        "people", "delete", "id", [Record("2", {}), Record("abc", {})]
    )
    assert results[0].ok
    assert results[1].code == "DESTINATION_VALIDATION" and "integer" in (results[1].message or "")
    assert rows(admin, schema, "SELECT id FROM people") == []


def test_refused_rows_do_not_fail_the_batch(
    destination: PostgresDestination, admin: psycopg.Connection[Any], schema: str
) -> None:
    batch = [
        person(1),
        Record("2", {"id": 2, "name": None}),
        person(3, age=-1),
        person(4, name="x" * 25),
        person(5),
    ]
    results = destination.write_batch("people", "upsert", "id", batch)
    assert results[0].ok and results[4].ok
    assert results[1].code == "DESTINATION_VALIDATION"
    assert 'null value in column "name"' in (results[1].message or "")
    assert "check constraint" in (results[2].message or "")
    assert "value too long" in (results[3].message or "")
    assert rows(admin, schema, "SELECT id FROM people ORDER BY id") == [(1,), (5,)]


def test_bad_login_is_an_auth_error(schema: str) -> None:
    url = DATABASE_URL.replace("postgresql://", "postgresql://no_such_role_retl:pw@", 1)
    if "@" in DATABASE_URL.split("://", 1)[1]:
        head, tail = DATABASE_URL.split("://", 1)
        url = f"{head}://no_such_role_retl:pw@{tail.split('@', 1)[1]}"
    broken = PostgresDestination({"url": url, "schema": schema})
    with pytest.raises(AuthError, match="fix the user and password"):
        broken.test()
    with pytest.raises(AuthError):
        broken.write_batch("people", "upsert", "id", [person(1)])


def test_unreachable_server_is_retryable(schema: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    broken = PostgresDestination({"url": f"postgresql://postgres@127.0.0.1:{port}/test"})
    with pytest.raises(RetryableError):
        broken.write_batch("people", "upsert", "id", [person(1)])


def test_lost_connection_is_retryable_then_reopened(
    destination: PostgresDestination, admin: psycopg.Connection[Any], schema: str
) -> None:
    destination.write_batch("people", "upsert", "id", [person(1)])
    pid = destination._connection().info.backend_pid
    admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(RetryableError):
        destination.write_batch("people", "upsert", "id", [person(2)])
    assert destination.write_batch("people", "upsert", "id", [person(2)]) == [
        RecordResult.success()
    ]
    assert rows(admin, schema, "SELECT count(*) FROM people") == [(2,)]


def test_lock_wait_past_timeout_is_retryable(schema: str, admin: psycopg.Connection[Any]) -> None:
    connector = PostgresDestination({"url": DATABASE_URL, "schema": schema, "timeoutSeconds": 0.2})
    connector.write_batch("people", "upsert", "id", [person(1)])
    with psycopg.connect(DATABASE_URL) as locker:
        locker.execute(
            sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(sql.Identifier(schema, "people"))
        )
        with pytest.raises(RetryableError) as caught:
            connector.write_batch("people", "upsert", "id", [person(1, age=5)])
    assert caught.value.code == "TIMEOUT"
    connector.close()


def test_concurrent_calls_share_the_connection_safely(
    destination: PostgresDestination, admin: psycopg.Connection[Any], schema: str
) -> None:
    def write(start: int) -> None:
        destination.write_batch(
            "people", "upsert", "id", [person(i) for i in range(start, start + 50)]
        )

    threads = [threading.Thread(target=write, args=(n * 50,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert rows(admin, schema, "SELECT count(*) FROM people") == [(200,)]


def test_format_value_keeps_native_types(destination: PostgresDestination) -> None:
    moment = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert destination.format_value(moment, DestinationField("t", "t", "datetime")) is moment
    day = dt.date(2025, 1, 2)
    assert destination.format_value(day, DestinationField("d", "d", "date")) is day
    assert destination.format_value(True, DestinationField("b", "b", "boolean")) is True


def test_insert_without_a_key_field_adds_every_record(
    destination: PostgresDestination, admin: psycopg.Connection[Any], schema: str
) -> None:
    records = [Record("h1", {"a": "x", "note": "first"}), Record("h2", {"a": "x", "note": "again"})]
    assert destination.write_batch("pairs", "insert", "", records) == [RecordResult.success()] * 2
    assert rows(admin, schema, "SELECT a, note FROM pairs ORDER BY note") == [("x", "again"), ("x", "first")]


def test_a_malformed_url_never_echoes_the_password() -> None:
    connector = PostgresDestination({"url": "postgresql://u:pass word@127.0.0.1:5432/db"})
    with pytest.raises(ConnectorError) as failure:
        connector.test()
    assert "pass word" not in str(failure.value)
