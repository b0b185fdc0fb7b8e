"""Syncs from a Postgres table to the generic HTTP destination through the engine, against the
fake receiver: what it holds after each run, what each request carried, and what the API shows
a user (run counts, DLQ entries, the destination's status, discovery)."""

from __future__ import annotations

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
from tests.fakes.http_sink import FakeHttpSink

TOKEN = "Bearer receiver-token"
RECEIVER_LIMIT = 50  # the receiver answers 413 to a larger request
FIELDS = [
    {"name": "external_id", "type": "string", "externalId": True},
    {"name": "email", "type": "string"},
    {"name": "full_name", "type": "string", "required": True},
    {"name": "score", "type": "number"},
    {"name": "active", "type": "boolean"},
    {"name": "last_seen_at", "type": "timestamptz"},
    {"name": "born_on", "type": "date"},
]
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
def receiver() -> Iterator[FakeHttpSink]:
    with FakeHttpSink(required_headers={"Authorization": TOKEN},
                      max_batch=RECEIVER_LIMIT) as fake:
        yield fake


def _sync(account: Any, people: Warehouse, receiver: FakeHttpSink, *, mode: str = "upsert",
          token: str = TOKEN, mappings: list[dict[str, Any]] | None = None) -> SyncSetup:
    config = {
        "url": f"{receiver.url}/people", "headers": {"Authorization": token},
        "batchSize": RECEIVER_LIMIT, "format": "json_object", "resultsPath": "results",
        "fields": FIELDS, "objectName": "people", "rateLimitPerSecond": 1000,
    }
    return make_sync(account, people, "http", config, object_name="people",
                     mappings=mappings or MAPPINGS, mode=mode)


def _sent_keys(receiver: FakeHttpSink, operation: str = "upsert") -> list[str]:
    return sorted((r["external_id"] for b in receiver.received if b.operation == operation
                   for r in b.records), key=int)


def test_first_run_posts_every_row_with_json_typed_values_in_batches_of_the_configured_size(
    driver: EngineDriver, account: Any, people: Warehouse, receiver: FakeHttpSink,
    client: FlaskClient,
) -> None:
    seed(people, 120)
    setup = _sync(account, people, receiver)
    run = driver.run(setup)
    assert run.status == "succeeded", run.error
    assert (run.rows_read, run.rows_added, run.rows_written, run.rows_failed) == (120, 120, 120, 0)
    assert len(receiver.store) == 120
    assert receiver.store["2"] == {
        "external_id": "2", "email": "user2@example.com", "full_name": "User 2", "score": 3.0,
        "active": True, "last_seen_at": "2025-03-27T17:02:00Z", "born_on": "1990-01-03",
    }
    assert receiver.store["3"]["active"] is False
    assert sorted(len(b.records) for b in receiver.received) == [20, 50, 50]
    assert {(b.method, b.path, b.key_field) for b in receiver.received} == {
        ("POST", "/people", "external_id"),
    }
    assert destination_status(client, account.key, setup)["status"] == "connected"


def test_second_run_sends_only_the_changed_rows(
    driver: EngineDriver, account: Any, people: Warehouse, receiver: FakeHttpSink
) -> None:
    seed(people, 6)
    setup = _sync(account, people, receiver)
    driver.run(setup)
    receiver.received.clear()
    people.execute("UPDATE warehouse.people SET born_on = date '2000-02-29' WHERE id IN (1, 4)")
    run = driver.run(setup)
    assert run.status == "succeeded"
    assert (run.rows_changed, run.rows_unchanged, run.rows_written) == (2, 4, 2)
    assert _sent_keys(receiver) == ["1", "4"]
    assert receiver.store["4"]["born_on"] == "2000-02-29"


def test_insert_sends_only_rows_new_to_the_source(
    driver: EngineDriver, account: Any, people: Warehouse, receiver: FakeHttpSink
) -> None:
    seed(people, 3)
    setup = _sync(account, people, receiver, mode="insert")
    driver.run(setup)
    people.execute("UPDATE warehouse.people SET name = 'Changed' WHERE id = 1")
    seed(people, 2, start=4)
    receiver.received.clear()
    run = driver.run(setup)
    assert run.status == "succeeded" and run.rows_written == 2
    assert _sent_keys(receiver, "insert") == ["4", "5"]
    assert receiver.store["1"]["full_name"] == "User 1"


def test_update_of_a_missing_record_lands_in_the_dlq_with_the_receiver_message(
    driver: EngineDriver, account: Any, people: Warehouse, receiver: FakeHttpSink,
    client: FlaskClient,
) -> None:
    for key in ("1", "2"):
        receiver.store[key] = {"external_id": key, "full_name": "Old"}
    seed(people, 3)
    setup = _sync(account, people, receiver, mode="update")
    run = driver.run(setup)
    assert run.status == "succeeded"
    assert (run.rows_written, run.rows_failed) == (2, 1)
    assert receiver.store["2"]["full_name"] == "User 2" and "3" not in receiver.store
    entries = dlq_entries(client, account.key, setup)
    assert list(entries) == ["3"]
    assert entries["3"]["message"] == "external_id 3 not found"


def test_update_of_a_missing_record_is_not_found_in_the_dlq(
    driver: EngineDriver, account: Any, people: Warehouse, receiver: FakeHttpSink,
    client: FlaskClient,
) -> None:
    seed(people, 1)
    setup = _sync(account, people, receiver, mode="update")
    driver.run(setup)
    assert dlq_entries(client, account.key, setup)["1"]["error_code"] == "NOT_FOUND"


def test_delete_removes_the_records_of_the_result(
    driver: EngineDriver, account: Any, people: Warehouse, receiver: FakeHttpSink
) -> None:
    for key in ("1", "2", "3", "9"):
        receiver.store[key] = {"external_id": key}
    seed(people, 3)
    run = driver.run(_sync(account, people, receiver, mode="delete"))
    assert run.status == "succeeded" and run.rows_written == 3
    assert sorted(receiver.store) == ["9"]
    sent = sorted((r for b in receiver.received for r in b.records), key=lambda r: r["external_id"])
    assert sent == [{"external_id": "1"}, {"external_id": "2"}, {"external_id": "3"}]


def test_mirror_deletes_records_whose_rows_left_the_source(
    driver: EngineDriver, account: Any, people: Warehouse, receiver: FakeHttpSink
) -> None:
    seed(people, 5)
    setup = _sync(account, people, receiver, mode="mirror")
    driver.run(setup)
    receiver.received.clear()
    people.execute("DELETE FROM warehouse.people WHERE id IN (2, 5)")
    people.execute("UPDATE warehouse.people SET score = 0.25 WHERE id = 3")
    run = driver.run(setup)
    assert run.status == "succeeded"
    assert (run.rows_removed, run.rows_changed) == (2, 1)
    assert _sent_keys(receiver, "delete") == ["2", "5"] and _sent_keys(receiver) == ["3"]
    assert sorted(receiver.store, key=int) == ["1", "3", "4"]
    assert receiver.store["3"]["score"] == 0.25



def test_429_with_retry_after_is_retried_until_the_records_are_written(
    driver: EngineDriver, account: Any, people: Warehouse, receiver: FakeHttpSink,
    client: FlaskClient,
) -> None:
    seed(people, 5)
    setup = _sync(account, people, receiver)
    run = run_with_faults_on_writes(
        driver, setup, receiver, 429, {"error": "HTTP 429"}, {"Retry-After": "2"}, 2
    )
    assert run.status == "succeeded" and run.rows_written == 5
    assert len(receiver.store) == 5 and len(receiver.requests) == 3
    assert dlq_entries(client, account.key, setup) == {}


def test_a_storm_of_5xx_is_retried_until_the_records_are_written(
    driver: EngineDriver, account: Any, people: Warehouse, receiver: FakeHttpSink,
    client: FlaskClient,
) -> None:
    seed(people, 5)
    setup = _sync(account, people, receiver)
    run = run_with_faults_on_writes(driver, setup, receiver, 503, {"error": "HTTP 503"}, None, 4)
    assert run.status == "succeeded" and run.rows_written == 5
    assert len(receiver.store) == 5
    assert dlq_entries(client, account.key, setup) == {}


def test_rejected_records_land_in_the_dlq_with_the_receiver_message_and_resolve_once_accepted(
    driver: EngineDriver, account: Any, people: Warehouse, receiver: FakeHttpSink,
    client: FlaskClient,
) -> None:
    receiver.reject_keys({"2", "4"}, "email domain is blocked")
    seed(people, 5)
    setup = _sync(account, people, receiver)
    run = driver.run(setup)
    assert run.status == "succeeded"
    assert (run.rows_written, run.rows_failed) == (3, 2)
    assert sorted(receiver.store, key=int) == ["1", "3", "5"]
    entries = dlq_entries(client, account.key, setup)
    assert sorted(entries) == ["2", "4"]
    assert {(e["error_code"], e["message"]) for e in entries.values()} == {
        ("DESTINATION_VALIDATION", "email domain is blocked"),
    }

    receiver.clear_rejections()
    receiver.received.clear()
    run = driver.run(setup)
    assert run.status == "succeeded" and run.rows_written == 2
    assert _sent_keys(receiver) == ["2", "4"]
    assert dlq_entries(client, account.key, setup) == {}
    assert resolutions(client, account.key, setup) == {"2": "auto_resolved", "4": "auto_resolved"}


def test_a_refused_token_fails_the_run_and_marks_the_destination(
    driver: EngineDriver, account: Any, people: Warehouse, receiver: FakeHttpSink,
    client: FlaskClient,
) -> None:
    seed(people, 3)
    setup = _sync(account, people, receiver, token="Bearer stale")
    run = driver.run(setup)
    assert run.status == "failed"
    assert "fix the headers in the destination's config" in (run.error or "")
    assert receiver.store == {}
    assert destination_status(client, account.key, setup)["status"] == "auth_failed"


def test_discovery_answers_the_endpoint_object_and_its_declared_fields(
    account: Any, people: Warehouse, receiver: FakeHttpSink, client: FlaskClient
) -> None:
    setup = _sync(account, people, receiver)
    assert list(discovered_objects(client, account.key, setup)) == ["people"]
    fields = discovered_fields(client, account.key, setup, "people")
    assert list(fields) == [f["name"] for f in FIELDS]
    assert fields["external_id"]["external_id"] is True
    assert fields["full_name"]["required"] is True
    assert {name: fields[name]["data_type"] for name in (
        "score", "active", "last_seen_at", "born_on",
    )} == {"score": "number", "active": "boolean", "last_seen_at": "datetime", "born_on": "date"}


def test_insert_without_a_key_mapping_sends_every_row_once(
    driver: EngineDriver, account: Any, people: Warehouse, receiver: FakeHttpSink
) -> None:
    seed(people, 3)
    mappings = [{"source": "email", "destination": "email"}, {"source": "name", "destination": "full_name"}]
    setup = _sync(account, people, receiver, mode="insert", mappings=mappings)
    run = driver.run(setup)
    assert run.status == "succeeded", run.error
    assert run.rows_written == 3
    assert sorted(r["email"] for r in receiver.store.values()) == [
        "user1@example.com", "user2@example.com", "user3@example.com"
    ]
    assert all("x-retl-key-field" not in batch.headers for batch in receiver.received)
    assert driver.run(setup).rows_written == 0  # unchanged rows are not inserted again
