"""What is particular to the generic HTTP destination, synced from a Postgres table through the
engine against the fake receiver: JSON values and headers on the wire, what a delete carries,
fields declared in the config, and inserts without a key. What every destination does (modes,
batch limits, retries, refusals, credentials, secrets) is in tests/contract."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.e2e.conftest import (
    discovered_fields,
    discovered_objects,
    make_sync,
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


def test_rows_go_as_json_typed_values_with_the_operation_and_key_field_headers(
    driver: EngineDriver, account: Any, people: Warehouse, receiver: FakeHttpSink
) -> None:
    seed(people, 3)
    run = driver.run(_sync(account, people, receiver))
    assert run.status == "succeeded", run.error
    assert receiver.store["2"] == {
        "external_id": "2", "email": "user2@example.com", "full_name": "User 2", "score": 3.0,
        "active": True, "last_seen_at": "2025-03-27T17:02:00Z", "born_on": "1990-01-03",
    }
    assert receiver.store["3"]["active"] is False
    assert {(b.method, b.path, b.key_field) for b in receiver.received} == {
        ("POST", "/people", "external_id"),
    }


def test_delete_sends_only_the_key_of_each_record(
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


def test_discovery_answers_the_fields_the_config_declares_in_their_order_and_types(
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
