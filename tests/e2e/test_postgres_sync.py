"""What is particular to the Postgres destination, synced from a Postgres table through the
engine: typed columns over several batches of a large first run. What every destination does
(modes, refusals, credentials, secrets, discovery) is in tests/contract."""

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
    make_sync,
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
