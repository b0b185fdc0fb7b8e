"""Fixtures and helpers for the API tests: destinations pointed at a fake HTTP receiver, a
source, syncs made through the API, and runs and DLQ entries written straight into Postgres
(the engine that creates them in production is not needed to test how the API shows them)."""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from flask.testing import FlaskClient
from psycopg.types.json import Jsonb

from shared import ids
from tests.conftest import bearer
from tests.fakes.http_sink import FakeHttpSink

API = "/api/reverse-etl"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
SOURCE_PASSWORD = "pw-Do-Not-Leak-7Q"
SINK_TOKEN = "Bearer sink-token-Do-Not-Leak-3Z"


@pytest.fixture(scope="session")
def sink() -> Iterator[FakeHttpSink]:
    """One receiver for the session (stopping one takes half a second); tests that read what a
    receiver got start their own."""
    with FakeHttpSink() as fake:
        yield fake


@pytest.fixture
def unused_port() -> int:
    """A local TCP port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def source_url(reader_url: str) -> str:
    """The test database as a source (as a role that can only read), with a password in the
    URL that must never be shown."""
    return re.sub(r"^postgresql://([^:@/]+)@", rf"postgresql://\1:{SOURCE_PASSWORD}@", reader_url)


def create_destination(
    client: FlaskClient, key: str, url: str, *, name: str = "Receiver", **config: Any
) -> dict[str, Any]:
    body = {"name": name, "connector": "http", "config": {"url": url, **config}}
    response = client.post(f"{API}/destinations", json=body, headers=bearer(key))
    assert response.status_code == 201, response.get_json()
    return response.get_json()["data"]


def create_source(client: FlaskClient, key: str, url: str, *, name: str = "Warehouse") -> dict[str, Any]:
    body = {"name": name, "connector": "postgres", "config": {"url": url}}
    response = client.post(f"{API}/sources", json=body, headers=bearer(key))
    assert response.status_code == 201, response.get_json()
    return response.get_json()["data"]


def sync_body(destination_id: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "accounts_to_receiver",
        "sourceQuery": "SELECT account_id, name FROM accounts",
        "destinationId": destination_id,
        "objectName": "records",
        "fieldMappings": [
            {"source": "account_id", "destination": "External_Id__c", "key": True},
            {"source": "name", "destination": "Name"},
        ],
        "syncMode": "upsert",
        "schedule": {"type": "cron", "expression": "15 */4 * * *", "timezone": "UTC"},
    }
    body.update(overrides)
    return body


def create_sync(client: FlaskClient, key: str, destination_id: str, **overrides: Any) -> dict[str, Any]:
    response = client.post(f"{API}/syncs", json=sync_body(destination_id, **overrides), headers=bearer(key))
    assert response.status_code == 201, response.get_json()
    return response.get_json()["data"]


@pytest.fixture
def destination(client: FlaskClient, api_key: str, sink: FakeHttpSink) -> dict[str, Any]:
    return create_destination(client, api_key, sink.url, headers={"Authorization": SINK_TOKEN})


@pytest.fixture
def source(client: FlaskClient, api_key: str, source_url: str) -> dict[str, Any]:
    return create_source(client, api_key, source_url)


@pytest.fixture
def sync(client: FlaskClient, api_key: str, destination: dict, source: dict) -> dict[str, Any]:
    return create_sync(client, api_key, destination["id"])


def assert_error(response: Any, status: int, pointer: str | None = None) -> dict[str, Any]:
    """The response is the documented error envelope with `status`; returns its first error.

    With `pointer`, some error of the answer names that JSON pointer."""
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True)[:500])
    document = response.get_json()
    assert isinstance(document, dict) and set(document) == {"errors"}, document
    assert document["errors"], document
    for error in document["errors"]:
        assert error["status"] == str(status)
        assert error["code"] and error["title"] and error["detail"]
    if pointer is not None:
        pointers = [e.get("source", {}).get("pointer") for e in document["errors"]]
        assert pointer in pointers, (pointer, document["errors"])
    return document["errors"][0]


def assert_resource(item: dict[str, Any], kind: str, prefix: str | None = None) -> dict[str, Any]:
    """`item` is `{id, type, attributes}` of `kind`, snake_case attributes, Z timestamps.

    `prefix` None: the item has no id; "": any id; else an id of that prefix and a ULID."""
    expected = {"id", "type", "attributes"} if prefix is not None else {"type", "attributes"}
    assert set(item) == expected, set(item)
    assert item["type"] == kind
    if prefix == "":
        assert isinstance(item["id"], str) and item["id"]
    elif prefix is not None:
        assert re.fullmatch(rf"{prefix}_[0-9a-z]{{26}}", item["id"]), item["id"]
    for name, value in item["attributes"].items():
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name
        if name.endswith("_at") and value is not None:
            assert TIMESTAMP.match(value), (name, value)
    return item["attributes"]


def workspace_of(database_url: str, sync_id: str) -> str:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT workspace_id FROM syncs WHERE id = %s", (sync_id,)).fetchone()[0]


def insert_run(database_url: str, sync_id: str, *, status: str = "failed", trigger: str = "manual") -> str:
    """A run row as the engine leaves it (finished runs by default, so triggers are not merged)."""
    run_id = ids.new_id(ids.RUN)
    finished = None if status in ("queued", "running") else dt.datetime.now(dt.UTC)
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO runs (id, workspace_id, sync_id, status, trigger, rows_read, rows_written,"
            " rows_failed, started_at, finished_at) SELECT %s, workspace_id, id, %s, %s, 10, 8, 2,"
            " now(), %s FROM syncs WHERE id = %s",
            (run_id, status, trigger, finished, sync_id),
        )
    return run_id


def insert_dlq_entry(
    database_url: str, sync_id: str, run_id: str, *, key: str, error_code: str = "DESTINATION_VALIDATION",
    resolved: bool = False, first_seen_at: dt.datetime | None = None,
) -> str:
    """A dead-letter entry for the record whose key mapping value is `key`."""
    entry_id = ids.new_id(ids.DLQ_ENTRY)
    seen = first_seen_at or dt.datetime.now(dt.UTC)
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO dlq_entries (id, workspace_id, sync_id, run_id, record_key, record_keys,"
            " error_code, message, attempts, first_seen_at, last_seen_at, resolved, resolved_at,"
            " resolution) SELECT %s, workspace_id, id, %s, %s, %s, %s, %s, 5, %s, %s, %s,"
            " CASE WHEN %s THEN now() END, CASE WHEN %s THEN 'skipped' END FROM syncs WHERE id = %s",
            (entry_id, run_id, key, Jsonb({"External_Id__c": key}), error_code,
             f"{error_code}: bad value for record {key}", seen, seen, resolved, resolved, resolved,
             sync_id),
        )
    return entry_id


def run_rows(database_url: str, sync_id: str) -> list[dict[str, Any]]:
    with psycopg.connect(database_url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute("SELECT * FROM runs WHERE sync_id = %s ORDER BY id", (sync_id,))
        return cur.fetchall()


def as_json(response: Any) -> str:
    return json.dumps(response.get_json())
