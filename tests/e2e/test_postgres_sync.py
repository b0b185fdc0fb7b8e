"""What is particular to the Postgres destination, synced from a Postgres table through the
engine: typed columns over several batches of a large first run. What every destination does
(modes, refusals, credentials, secrets, discovery) is in tests/contract."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.contract.harnesses import CrmSchema, PostgresHarness
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
def crm(warehouse_url: str) -> Iterator[CrmSchema]:
    """Schema crm: the contacts table the syncs write (the contract suite's, with typed columns
    and a log of every write)."""
    with PostgresHarness().running(warehouse_url) as schema:
        yield schema


def _sync(account: Any, people: Warehouse) -> SyncSetup:
    config = {"url": people.admin_url, "schema": "crm", "rateLimitPerSecond": 1000}
    return make_sync(account, people, "postgres", config, object_name="contacts",
                     mappings=MAPPINGS)


def _contacts(crm: CrmSchema) -> dict[int, tuple]:
    rows = crm.execute(
        "SELECT external_id, email, full_name, score, active, last_seen_at, born_on"
        " FROM crm.contacts"
    )
    return {row[0]: row[1:] for row in rows}


def test_first_run_writes_every_row_with_typed_columns(
    driver: EngineDriver, account: Any, people: Warehouse, crm: CrmSchema,
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
