"""Syncs from a Postgres table to a table of the Postgres destination through the engine: what
the destination table holds after each run, which rows each run wrote (a trigger logs every
write), and what the API shows a user (run counts, DLQ entries, status, discovery)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from flask.testing import FlaskClient

from tests.e2e.conftest import (
    destination_status,
    discovered_fields,
    discovered_objects,
    dlq_entries,
    make_sync,
    resolutions,
    seed,
)
from tests.engine.conftest import EngineDriver, SyncSetup, Warehouse

MAPPINGS = [
    {"source": "id", "destination": "external_id", "key": True},
    {"source": "email", "destination": "email"},
    {"source": "name", "destination": "full_name"},
    {"source": "score", "destination": "score"},
    {"source": "active", "destination": "active"},
    {"source": "last_seen_at", "destination": "last_seen_at"},
    {"source": "born_on", "destination": "born_on"},
]


@pytest.fixture
def crm(database_url: str) -> Iterator[psycopg.Connection]:
    """Schema crm: the contacts table the syncs write and a log of every write to it."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS crm CASCADE")
        conn.execute("""
            CREATE SCHEMA crm;
            CREATE TABLE crm.contacts (
                external_id integer PRIMARY KEY, email text UNIQUE,
                full_name varchar(20) NOT NULL,
                score numeric(6, 2) CONSTRAINT score_not_negative CHECK (score >= 0),
                active boolean, last_seen_at timestamptz, born_on date);
            CREATE TABLE crm.writes (external_id integer, operation text);
            CREATE FUNCTION crm.log_write() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO crm.writes VALUES (
                    CASE WHEN TG_OP = 'DELETE' THEN OLD.external_id ELSE NEW.external_id END,
                    TG_OP);
                RETURN NULL;
            END $$;
            CREATE TRIGGER log_write AFTER INSERT OR UPDATE OR DELETE ON crm.contacts
                FOR EACH ROW EXECUTE FUNCTION crm.log_write();
        """)
        yield conn
        conn.execute("DROP SCHEMA crm CASCADE")


def _sync(account: Any, people: Warehouse, *, mode: str = "upsert",
          url: str | None = None) -> SyncSetup:
    config = {"url": url or people.admin_url, "schema": "crm", "rateLimitPerSecond": 1000}
    return make_sync(account, people, "postgres", config, object_name="contacts",
                     mappings=MAPPINGS, mode=mode)


def _contacts(crm: psycopg.Connection) -> dict[int, tuple]:
    rows = crm.execute(
        "SELECT external_id, email, full_name, score, active, last_seen_at, born_on"
        " FROM crm.contacts"
    ).fetchall()
    return {row[0]: row[1:] for row in rows}


def _writes(crm: psycopg.Connection) -> list[tuple[int, str]]:
    return sorted(crm.execute("SELECT external_id, operation FROM crm.writes").fetchall())


def test_first_run_writes_every_row_with_typed_columns(
    driver: EngineDriver, account: Any, people: Warehouse, crm: psycopg.Connection,
    client: FlaskClient,
) -> None:
    seed(people, 2500)
    setup = _sync(account, people)
    run = driver.run(setup)
    assert run.status == "succeeded", run.error
    assert (run.rows_read, run.rows_added, run.rows_written, run.rows_failed) == (
        2500, 2500, 2500, 0,
    )
    contacts = _contacts(crm)
    assert len(contacts) == 2500
    assert contacts[2] == (
        "user2@example.com", "User 2", Decimal("3.00"), True,
        dt.datetime(2025, 3, 27, 17, 2, tzinfo=dt.UTC), dt.date(1990, 1, 3),
    )
    assert contacts[3][3] is False
    assert destination_status(client, account.key, setup)["status"] == "connected"


def test_second_run_writes_only_the_changed_rows(
    driver: EngineDriver, account: Any, people: Warehouse, crm: psycopg.Connection
) -> None:
    seed(people, 6)
    setup = _sync(account, people)
    driver.run(setup)
    crm.execute("TRUNCATE crm.writes")
    people.execute("UPDATE warehouse.people SET name = 'Renamed' WHERE id IN (2, 5)")
    run = driver.run(setup)
    assert run.status == "succeeded"
    assert (run.rows_changed, run.rows_unchanged, run.rows_written) == (2, 4, 2)
    assert _writes(crm) == [(2, "UPDATE"), (5, "UPDATE")]
    assert _contacts(crm)[5][1] == "Renamed"


def test_insert_adds_only_rows_new_to_the_source(
    driver: EngineDriver, account: Any, people: Warehouse, crm: psycopg.Connection
) -> None:
    seed(people, 3)
    setup = _sync(account, people, mode="insert")
    driver.run(setup)
    people.execute("UPDATE warehouse.people SET name = 'Changed' WHERE id = 1")
    seed(people, 2, start=4)
    crm.execute("TRUNCATE crm.writes")
    run = driver.run(setup)
    assert run.status == "succeeded" and run.rows_written == 2
    assert _writes(crm) == [(4, "INSERT"), (5, "INSERT")]
    assert _contacts(crm)[1][1] == "User 1"


def test_update_changes_existing_rows_and_a_missing_one_is_not_found_in_the_dlq(
    driver: EngineDriver, account: Any, people: Warehouse, crm: psycopg.Connection,
    client: FlaskClient,
) -> None:
    crm.execute("INSERT INTO crm.contacts (external_id, full_name) VALUES (1, 'Old'), (2, 'Old')")
    seed(people, 3)
    setup = _sync(account, people, mode="update")
    run = driver.run(setup)
    assert run.status == "succeeded"
    assert (run.rows_written, run.rows_failed) == (2, 1)
    contacts = _contacts(crm)
    assert sorted(contacts) == [1, 2] and contacts[2][1] == "User 2"
    entries = dlq_entries(client, account.key, setup)
    assert list(entries) == ["3"]
    assert (entries["3"]["error_code"], entries["3"]["message"]) == (
        "NOT_FOUND", "no row with this key",
    )


def test_delete_removes_the_rows_of_the_result(
    driver: EngineDriver, account: Any, people: Warehouse, crm: psycopg.Connection
) -> None:
    crm.execute("INSERT INTO crm.contacts (external_id, full_name)"
                " VALUES (1, 'a'), (2, 'b'), (3, 'c'), (9, 'z')")
    seed(people, 3)
    run = driver.run(_sync(account, people, mode="delete"))
    assert run.status == "succeeded" and run.rows_written == 3
    assert sorted(_contacts(crm)) == [9]


def test_mirror_deletes_rows_that_left_the_source(
    driver: EngineDriver, account: Any, people: Warehouse, crm: psycopg.Connection
) -> None:
    seed(people, 5)
    setup = _sync(account, people, mode="mirror")
    driver.run(setup)
    people.execute("DELETE FROM warehouse.people WHERE id IN (2, 3)")
    people.execute("UPDATE warehouse.people SET active = true WHERE id = 1")
    run = driver.run(setup)
    assert run.status == "succeeded"
    assert (run.rows_removed, run.rows_changed) == (2, 1)
    contacts = _contacts(crm)
    assert sorted(contacts) == [1, 4, 5] and contacts[1][3] is True


def test_rows_refused_by_a_constraint_land_in_the_dlq_and_resolve_once_accepted(
    driver: EngineDriver, account: Any, people: Warehouse, crm: psycopg.Connection,
    client: FlaskClient,
) -> None:
    seed(people, 5)
    people.execute("UPDATE warehouse.people SET score = -1 WHERE id IN (2, 4)")
    setup = _sync(account, people)
    run = driver.run(setup)
    assert run.status == "succeeded"
    assert (run.rows_written, run.rows_failed) == (3, 2)
    assert sorted(_contacts(crm)) == [1, 3, 5]
    entries = dlq_entries(client, account.key, setup)
    assert sorted(entries) == ["2", "4"]
    assert entries["2"]["error_code"] == "DESTINATION_VALIDATION"
    assert 'violates check constraint "score_not_negative"' in entries["2"]["message"]

    crm.execute("ALTER TABLE crm.contacts DROP CONSTRAINT score_not_negative")
    crm.execute("TRUNCATE crm.writes")
    run = driver.run(setup)
    assert run.status == "succeeded" and run.rows_written == 2
    assert _writes(crm) == [(2, "INSERT"), (4, "INSERT")]
    assert dlq_entries(client, account.key, setup) == {}
    assert resolutions(client, account.key, setup) == {"2": "auto_resolved", "4": "auto_resolved"}


def test_a_refused_login_fails_the_run_and_marks_the_destination(
    driver: EngineDriver, account: Any, people: Warehouse, crm: psycopg.Connection,
    client: FlaskClient,
) -> None:
    seed(people, 3)
    info = psycopg.conninfo.conninfo_to_dict(people.admin_url)
    bad_url = psycopg.conninfo.make_conninfo(**{**info, "user": "retl_no_such_role"})
    setup = _sync(account, people, url=bad_url)
    run = driver.run(setup)
    assert run.status == "failed"
    assert "fix the user and password in url" in (run.error or "")
    assert _contacts(crm) == {}
    assert destination_status(client, account.key, setup)["status"] == "auth_failed"


def test_discovery_answers_the_schema_tables_and_their_typed_columns(
    account: Any, people: Warehouse, crm: psycopg.Connection, client: FlaskClient
) -> None:
    setup = _sync(account, people)
    assert "contacts" in discovered_objects(client, account.key, setup)
    fields = discovered_fields(client, account.key, setup, "contacts")
    assert fields["external_id"]["external_id"] is True
    assert fields["email"]["external_id"] is True  # a unique index marks a key
    assert fields["full_name"]["required"] is True
    assert {name: fields[name]["data_type"] for name in (
        "external_id", "score", "active", "last_seen_at", "born_on",
    )} == {
        "external_id": "integer", "score": "number", "active": "boolean",
        "last_seen_at": "datetime", "born_on": "date",
    }
