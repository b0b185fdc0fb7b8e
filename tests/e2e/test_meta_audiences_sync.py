"""Syncs from a Postgres table to a Meta customer file custom audience through the engine,
against the fake Marketing API: who is in the audience after each run, what each request
carried, what the API shows a user, and that no raw email or name ever left the worker."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from connectors import pii
from tests.e2e.conftest import (
    destination_status,
    discovered_fields,
    discovered_objects,
    dlq_entries,
    make_sync,
    run_with_faults_on_writes,
    seed,
)
from tests.engine.conftest import EngineDriver, SyncSetup, Warehouse
from tests.fakes.meta import FakeMeta, throttled

AUDIENCE = "23850000000000042"
# The sync is keyed on the customer id (sent in clear as EXTERN_ID), so retl's records, the
# DLQ and the removals of mirror name people by it, never by an email.
MAPPINGS = [
    {"source": "id", "destination": "EXTERN_ID", "key": True},
    {"source": "email", "destination": "EMAIL"},
    {"source": "name", "destination": "FN"},
    {"source": "device", "destination": "MADID"},
]


@pytest.fixture
def meta() -> Iterator[FakeMeta]:
    with FakeMeta(token="system-user-token", ad_account="1234") as fake:
        fake.add_audience(AUDIENCE, "High value customers")
        yield fake


@pytest.fixture
def customers(people: Warehouse) -> Warehouse:
    people.execute("ALTER TABLE warehouse.people ADD COLUMN device text")
    return people


def _seed(table: Warehouse, count: int) -> None:
    seed(table, count)
    table.execute("UPDATE warehouse.people"
                  " SET device = 'aece52e7-03ee-455a-b3c4-' || lpad(id::text, 12, '0')")


def _sync(account: Any, table: Warehouse, meta: FakeMeta, *, mode: str = "upsert",
          token: str = "system-user-token") -> SyncSetup:
    config = {"accessToken": token, "adAccountId": "1234", "baseUrl": meta.url,
              "rateLimitPerSecond": 1000}
    return make_sync(account, table, "meta_audiences", config, object_name=AUDIENCE,
                     mappings=MAPPINGS, mode=mode)


def _raw_values(count: int) -> list[str]:
    return [f"user{i}@example.com" for i in range(1, count + 1)] + ["User "]


def _assert_no_raw_pii(meta: FakeMeta, *texts: str, count: int) -> None:
    sent = [f"{r.path}?{r.query} {r.body.decode()}" for r in meta.requests]
    for value in _raw_values(count):
        for text in [*sent, *texts]:
            assert value.lower() not in text.lower(), f"{value!r} left the worker"


def test_upsert_adds_everyone_hashed_and_mirror_removes_who_left(
    driver: EngineDriver, account: Any, customers: Warehouse, meta: FakeMeta,
    client: FlaskClient, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    _seed(customers, 5)
    setup = _sync(account, customers, meta, mode="mirror")
    run = driver.run(setup)
    assert run.status == "succeeded", run.error
    assert (run.rows_added, run.rows_written, run.rows_failed) == (5, 5, 0)
    assert meta.members(AUDIENCE, "EXTERN_ID") == {"1", "2", "3", "4", "5"}
    assert meta.members(AUDIENCE, "EMAIL") == {
        pii.sha256_hex(f"user{i}@example.com") for i in range(1, 6)
    }
    assert meta.members(AUDIENCE, "FN") == {pii.sha256_hex("user")}  # "User 3": letters only

    customers.execute("DELETE FROM warehouse.people WHERE id IN (4, 5)")
    run = driver.run(setup)
    assert run.status == "succeeded" and run.rows_removed == 2
    assert meta.members(AUDIENCE, "EXTERN_ID") == {"1", "2", "3"}
    method, audience, payload = meta.uploads[-1]
    assert (method, audience) == ("DELETE", AUDIENCE)
    assert payload == {"schema": ["EXTERN_ID"], "data": [["4"], ["5"]]} or payload == {
        "schema": ["EXTERN_ID"], "data": [["5"], ["4"]]}
    _assert_no_raw_pii(meta, caplog.text, count=5)
    assert destination_status(client, account.key, setup)["status"] == "connected"


def test_throttling_is_retried_until_everyone_is_added(
    driver: EngineDriver, account: Any, customers: Warehouse, meta: FakeMeta,
    client: FlaskClient,
) -> None:
    _seed(customers, 4)
    setup = _sync(account, customers, meta)
    body, headers = throttled(minutes=1)
    run = run_with_faults_on_writes(driver, setup, meta, 400, body, headers, 2)
    assert run.status == "succeeded" and run.rows_written == 4
    assert meta.members(AUDIENCE, "EXTERN_ID") == {"1", "2", "3", "4"}
    assert len([r for r in meta.requests if r.path.endswith("/users")]) == 3
    assert dlq_entries(client, account.key, setup) == {}


def test_rows_meta_finds_invalid_land_in_the_dlq_without_their_values(
    driver: EngineDriver, account: Any, customers: Warehouse, meta: FakeMeta,
    client: FlaskClient, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    _seed(customers, 5)
    customers.execute("UPDATE warehouse.people SET device = 'bad-device-' || id"
                      " WHERE id IN (2, 4)")
    customers.execute("UPDATE warehouse.people SET email = 'no-at-sign-' || id WHERE id = 5")
    setup = _sync(account, customers, meta)
    run = driver.run(setup)
    assert run.status == "succeeded"
    assert (run.rows_written, run.rows_failed) == (2, 3)
    assert meta.members(AUDIENCE, "EXTERN_ID") == {"1", "3"}
    entries = dlq_entries(client, account.key, setup)
    assert sorted(entries) == ["2", "4", "5"]
    assert entries["2"]["error_code"] == "DESTINATION_VALIDATION"
    assert entries["2"]["message"] == (
        "Meta counted this row among the invalid entries: Invalid MADID format"
    )
    assert entries["5"]["error_code"] == "MAPPING"
    assert entries["5"]["message"] == "field 'EMAIL': EMAIL: an email address needs an @"
    dlq_text = json.dumps(entries)
    assert "bad-device" not in dlq_text and "no-at-sign" not in dlq_text
    _assert_no_raw_pii(meta, caplog.text, dlq_text, count=4)


def test_a_rejected_token_fails_the_run_and_marks_the_destination(
    driver: EngineDriver, account: Any, customers: Warehouse, meta: FakeMeta,
    client: FlaskClient,
) -> None:
    _seed(customers, 3)
    setup = _sync(account, customers, meta, token="expired-token")
    run = driver.run(setup)
    assert run.status == "failed"
    assert "Meta rejected the access token" in (run.error or "")
    assert "code 190" in (run.error or "")
    assert meta.audiences[AUDIENCE].members == []
    assert destination_status(client, account.key, setup)["status"] == "auth_failed"


def test_a_flagged_audience_fails_the_run_with_metas_reason(
    driver: EngineDriver, account: Any, customers: Warehouse, meta: FakeMeta,
) -> None:
    _seed(customers, 2)
    meta.audiences[AUDIENCE].flagged = True
    run = driver.run(_sync(account, customers, meta))
    assert run.status == "failed"
    assert "integrity restrictions are resolved in Audience Manager" in (run.error or "")


def test_discovery_shows_the_audiences_and_identifier_keys(
    account: Any, customers: Warehouse, meta: FakeMeta, client: FlaskClient,
) -> None:
    setup = _sync(account, customers, meta)
    objects = discovered_objects(client, account.key, setup)
    assert objects[AUDIENCE]["label"] == "High value customers"
    fields = discovered_fields(client, account.key, setup, AUDIENCE)
    assert {"EMAIL", "PHONE", "FN", "LN", "EXTERN_ID", "MADID"} <= set(fields)
