"""Syncs from a Postgres table to HubSpot contacts through the engine, against the fake CRM API:
what the account holds after each run, what each batch request carried, and what the API shows
a user (run counts, DLQ entries, the destination's status, discovery)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.e2e.conftest import (
    destination_status,
    discovered_fields,
    discovered_objects,
    dlq_entries,
    make_sync,
    resolutions,
    run_with_faults_on_writes,
    seed,
)
from tests.engine.conftest import EngineDriver, SyncSetup, Warehouse
from tests.fakes.hubspot import MAX_BATCH_INPUTS, FakeHubSpot

MAPPINGS = [
    {"source": "id", "destination": "customer_id", "key": True},
    {"source": "email", "destination": "email"},
    {"source": "name", "destination": "firstname"},
    {"source": "score", "destination": "lifetime_value"},
    {"source": "active", "destination": "is_vip"},
    {"source": "last_seen_at", "destination": "last_purchase_at"},
    {"source": "born_on", "destination": "renewal_date"},
]


@pytest.fixture
def hubspot() -> Iterator[FakeHubSpot]:
    with FakeHubSpot() as fake:
        yield fake  # type: ignore[misc]


def _sync(account: Any, people: Warehouse, hubspot: FakeHubSpot, *, mode: str = "upsert",
          token: str | None = None) -> SyncSetup:
    config = {"accessToken": token or hubspot.token, "baseUrl": hubspot.url,
              "rateLimitPerSecond": 1000}
    return make_sync(account, people, "hubspot", config, object_name="contacts",
                     mappings=MAPPINGS, mode=mode)


def _contacts(hubspot: FakeHubSpot) -> dict[str, dict[str, str]]:
    return {c["customer_id"]: c for c in hubspot.objects("contacts")}


def _inputs(hubspot: FakeHubSpot, operation: str) -> list[list[dict[str, Any]]]:
    return [r.json()["inputs"] for r in hubspot.batch_requests(operation)]


def _sent_keys(hubspot: FakeHubSpot, operation: str = "upsert") -> list[str]:
    return sorted((i["id"] for batch in _inputs(hubspot, operation) for i in batch), key=int)


def test_first_run_upserts_every_row_with_hubspot_wire_values_100_at_a_time(
    driver: EngineDriver, account: Any, people: Warehouse, hubspot: FakeHubSpot,
    client: FlaskClient,
) -> None:
    seed(people, 250)
    setup = _sync(account, people, hubspot)
    run = driver.run(setup)
    assert run.status == "succeeded", run.error
    assert (run.rows_read, run.rows_added, run.rows_written, run.rows_failed) == (250, 250, 250, 0)
    contacts = _contacts(hubspot)
    assert len(contacts) == 250
    second = contacts["2"]
    assert {k: second[k] for k in ("email", "firstname", "lifetime_value", "is_vip",
                                   "last_purchase_at", "renewal_date")} == {
        "email": "user2@example.com", "firstname": "User 2", "lifetime_value": "3",
        "is_vip": "true", "last_purchase_at": "2025-03-27T17:02:00.000Z",
        "renewal_date": "1990-01-03",
    }
    batches = _inputs(hubspot, "upsert")
    assert sorted(len(b) for b in batches) == [50, MAX_BATCH_INPUTS, MAX_BATCH_INPUTS]
    wire = next(i for b in batches for i in b if i["id"] == "7")
    assert wire["idProperty"] == "customer_id"
    assert wire["properties"] == {
        "customer_id": "7", "email": "user7@example.com", "firstname": "User 7",
        "lifetime_value": "10.5", "is_vip": "false", "last_purchase_at": "2025-03-27T17:07:00.000Z",
        "renewal_date": "631756800000",  # 1990-01-08 at midnight UTC, in epoch milliseconds
    }
    assert destination_status(client, account.key, setup)["status"] == "connected"


def test_second_run_sends_only_the_changed_rows(
    driver: EngineDriver, account: Any, people: Warehouse, hubspot: FakeHubSpot
) -> None:
    seed(people, 6)
    setup = _sync(account, people, hubspot)
    driver.run(setup)
    hubspot.requests.clear()
    people.execute("UPDATE warehouse.people SET score = 99.25 WHERE id IN (1, 6)")
    run = driver.run(setup)
    assert run.status == "succeeded"
    assert (run.rows_changed, run.rows_unchanged, run.rows_written) == (2, 4, 2)
    assert _sent_keys(hubspot) == ["1", "6"]
    contacts = _contacts(hubspot)
    assert contacts["6"]["lifetime_value"] == "99.25"
    assert contacts["5"]["lifetime_value"] == "7.5"


def test_insert_creates_only_rows_new_to_the_source(
    driver: EngineDriver, account: Any, people: Warehouse, hubspot: FakeHubSpot
) -> None:
    seed(people, 3)
    setup = _sync(account, people, hubspot, mode="insert")
    assert driver.run(setup).rows_written == 3
    people.execute("UPDATE warehouse.people SET name = 'Changed' WHERE id = 1")
    seed(people, 2, start=4)
    hubspot.requests.clear()
    run = driver.run(setup)
    assert run.status == "succeeded" and run.rows_written == 2
    created = [i["properties"]["customer_id"] for b in _inputs(hubspot, "create") for i in b]
    assert sorted(created) == ["4", "5"]
    contacts = _contacts(hubspot)
    assert sorted(contacts, key=int) == ["1", "2", "3", "4", "5"]
    assert contacts["1"]["firstname"] == "User 1"


def test_update_changes_existing_contacts_and_a_missing_one_is_not_found_in_the_dlq(
    driver: EngineDriver, account: Any, people: Warehouse, hubspot: FakeHubSpot,
    client: FlaskClient,
) -> None:
    hubspot.seed("contacts", {"customer_id": "1", "firstname": "Old"})
    hubspot.seed("contacts", {"customer_id": "2", "firstname": "Old"})
    seed(people, 3)
    setup = _sync(account, people, hubspot, mode="update")
    run = driver.run(setup)
    assert run.status == "succeeded"
    assert (run.rows_written, run.rows_failed) == (2, 1)
    contacts = _contacts(hubspot)
    assert sorted(contacts) == ["1", "2"]
    assert contacts["2"]["firstname"] == "User 2"
    entries = dlq_entries(client, account.key, setup)
    assert list(entries) == ["3"]
    assert entries["3"]["error_code"] == "NOT_FOUND"


def test_delete_archives_the_contacts_of_the_result(
    driver: EngineDriver, account: Any, people: Warehouse, hubspot: FakeHubSpot
) -> None:
    for key in ("1", "2", "3", "9"):
        hubspot.seed("contacts", {"customer_id": key})
    seed(people, 3)
    setup = _sync(account, people, hubspot, mode="delete")
    run = driver.run(setup)
    assert run.status == "succeeded" and run.rows_written == 3
    assert sorted(_contacts(hubspot)) == ["9"]
    assert all(len(b) <= MAX_BATCH_INPUTS for b in _inputs(hubspot, "archive"))


def test_mirror_archives_contacts_whose_rows_left_the_source(
    driver: EngineDriver, account: Any, people: Warehouse, hubspot: FakeHubSpot
) -> None:
    seed(people, 5)
    setup = _sync(account, people, hubspot, mode="mirror")
    driver.run(setup)
    people.execute("DELETE FROM warehouse.people WHERE id IN (1, 3)")
    people.execute("UPDATE warehouse.people SET active = true WHERE id = 5")
    run = driver.run(setup)
    assert run.status == "succeeded"
    assert (run.rows_removed, run.rows_changed) == (2, 1)
    contacts = _contacts(hubspot)
    assert sorted(contacts, key=int) == ["2", "4", "5"]
    assert contacts["5"]["is_vip"] == "true"



def test_429_with_retry_after_is_retried_until_the_contacts_are_written(
    driver: EngineDriver, account: Any, people: Warehouse, hubspot: FakeHubSpot,
    client: FlaskClient,
) -> None:
    seed(people, 5)
    setup = _sync(account, people, hubspot)
    limited = {
        "status": "error", "message": "You have reached your ten_secondly_rolling limit.",
        "errorType": "RATE_LIMIT", "correlationId": str(uuid.uuid4()),
        "policyName": "TEN_SECONDLY_ROLLING",
    }
    run = run_with_faults_on_writes(driver, setup, hubspot, 429, limited, {"Retry-After": "2"}, 2)
    assert run.status == "succeeded" and run.rows_written == 5
    assert len(_contacts(hubspot)) == 5
    assert len(hubspot.batch_requests("upsert")) == 3  # two refused, one accepted
    assert dlq_entries(client, account.key, setup) == {}


def test_a_storm_of_5xx_is_retried_until_the_contacts_are_written(
    driver: EngineDriver, account: Any, people: Warehouse, hubspot: FakeHubSpot,
    client: FlaskClient,
) -> None:
    seed(people, 5)
    setup = _sync(account, people, hubspot)
    down = {"status": "error", "message": "internal error", "category": "INTERNAL_ERROR"}
    run = run_with_faults_on_writes(driver, setup, hubspot, 502, down, None, 4)
    assert run.status == "succeeded" and run.rows_written == 5
    assert len(_contacts(hubspot)) == 5
    assert dlq_entries(client, account.key, setup) == {}


def test_rejected_records_land_in_the_dlq_with_hubspot_message_and_resolve_once_accepted(
    driver: EngineDriver, account: Any, people: Warehouse, hubspot: FakeHubSpot,
    client: FlaskClient,
) -> None:
    hubspot.reject("2", "Contact is on the blocklist")
    hubspot.reject("5", "Property values were not valid")
    seed(people, 5)
    setup = _sync(account, people, hubspot)
    run = driver.run(setup)
    assert run.status == "succeeded"
    assert (run.rows_written, run.rows_failed) == (3, 2)
    assert sorted(_contacts(hubspot), key=int) == ["1", "3", "4"]
    entries = dlq_entries(client, account.key, setup)
    assert sorted(entries) == ["2", "5"]
    assert {e["error_code"] for e in entries.values()} == {"DESTINATION_VALIDATION"}
    assert "Contact is on the blocklist" in entries["2"]["message"]
    assert "Property values were not valid" in entries["5"]["message"]

    hubspot.clear_rejections()
    hubspot.requests.clear()
    run = driver.run(setup)
    assert run.status == "succeeded" and run.rows_written == 2
    assert _sent_keys(hubspot) == ["2", "5"]
    assert len(_contacts(hubspot)) == 5
    assert dlq_entries(client, account.key, setup) == {}
    assert resolutions(client, account.key, setup) == {"2": "auto_resolved", "5": "auto_resolved"}


def test_a_rejected_access_token_fails_the_run_and_marks_the_destination(
    driver: EngineDriver, account: Any, people: Warehouse, hubspot: FakeHubSpot,
    client: FlaskClient,
) -> None:
    seed(people, 3)
    setup = _sync(account, people, hubspot, token="pat-na1-revoked")
    run = driver.run(setup)
    assert run.status == "failed"
    assert "fix the accessToken" in (run.error or "")
    assert "INVALID_AUTHENTICATION" in (run.error or "")
    assert hubspot.objects("contacts") == []
    assert destination_status(client, account.key, setup)["status"] == "auth_failed"


def test_discovery_answers_the_account_objects_and_contact_properties(
    account: Any, people: Warehouse, hubspot: FakeHubSpot, client: FlaskClient
) -> None:
    setup = _sync(account, people, hubspot)
    objects = discovered_objects(client, account.key, setup)
    assert {"contacts", "companies", "deals"} <= set(objects)
    assert objects["contacts"]["supports_upsert"] and objects["contacts"]["writable"]
    assert any(o["label"] == "Cars" for o in objects.values())
    fields = discovered_fields(client, account.key, setup, "contacts")
    assert fields["customer_id"]["external_id"] is True
    assert fields["email"]["external_id"] is True
    assert {name: fields[name]["data_type"] for name in (
        "lifetime_value", "is_vip", "last_purchase_at", "renewal_date", "firstname",
    )} == {
        "lifetime_value": "number", "is_vip": "boolean", "last_purchase_at": "datetime",
        "renewal_date": "date", "firstname": "string",
    }
    assert fields["hs_object_id"]["updateable"] is False
