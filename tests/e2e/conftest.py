"""Fixtures for end-to-end syncs: a Postgres warehouse table with typed columns as the source, a
destination connector pointed at its fake vendor API, syncs created through the services and
run by the engine in this process (tests.engine.conftest's EngineDriver), and the API reads a
user makes afterwards: the DLQ, the destination's status and discovery."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from shared.services import connections, syncs
from shared.services.auth import create_api_key
from tests.conftest import bearer
from tests.engine.conftest import (  # noqa: F401 - driver and warehouse are fixtures used here
    EngineDriver,
    SyncSetup,
    Warehouse,
    driver,
    get_run,
    warehouse,
)
from tests.fakes.base import FakeServer
from worker import executor
from worker import runs as engine

API = "/api/reverse-etl"

# Retries as the engine makes them, without the waits: a Retry-After is honoured up to 10 ms.
FAST_RETRIES = executor.RetryPolicy(
    attempts=5, initial_wait_s=0.001, max_wait_s=0.005, max_retry_after_s=0.01
)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine writes batches with FAST_RETRIES instead of its production back-off."""
    monkeypatch.setattr(
        engine, "write_with_retries",
        functools.partial(executor.write_with_retries, policy=FAST_RETRIES),
    )


@pytest.fixture
def account() -> Any:
    """An API key and its workspace: syncs are created in it, the API is read with its key."""
    return create_api_key("e2e")


@pytest.fixture
def people(warehouse: Warehouse) -> Iterator[Warehouse]:  # noqa: F811 - the fixture
    """warehouse.people with typed columns besides id, email, name and score (numeric)."""
    warehouse.execute(
        "ALTER TABLE warehouse.people ADD COLUMN active boolean,"
        " ADD COLUMN last_seen_at timestamptz, ADD COLUMN born_on date"
    )
    yield warehouse


def seed(table: Warehouse, count: int, start: int = 1) -> None:
    """Rows start..start+count-1: `user<i>@example.com`, `User <i>`, score i*1.5, active when i
    is even, last seen at 2025-03-27 17:00 UTC plus i minutes, born on 1990-01-01 plus i days."""
    table.insert(count, start)
    table.execute(
        "UPDATE warehouse.people SET active = id %% 2 = 0,"
        " last_seen_at = timestamptz '2025-03-27 17:00:00+00' + id * interval '1 minute',"
        " born_on = date '1990-01-01' + id"
        " WHERE id BETWEEN %s AND %s",
        (start, start + count - 1),
    )


def make_sync(
    account: Any, table: Warehouse, connector: str, config: dict[str, Any], *,
    object_name: str, mappings: list[dict[str, Any]], mode: str = "upsert",
    query: str = "SELECT * FROM warehouse.people",
) -> SyncSetup:
    """A postgres source on the warehouse, a `connector` destination and a sync between them."""
    source = connections.create(account.workspace_id, "source", "warehouse", "postgres",
                                {"url": table.url})
    destination = connections.create(account.workspace_id, "destination", connector, connector,
                                     config)
    sync = syncs.create(account.workspace_id, {
        "name": f"people to {connector}", "sourceId": source.record.id,
        "destinationId": destination.record.id, "objectName": object_name,
        "sourceQuery": query, "fieldMappings": mappings, "syncMode": mode,
    })
    return SyncSetup(account.workspace_id, sync.id, source.record.id, destination.record.id)


def _get(client: FlaskClient, key: str, path: str) -> Any:
    response = client.get(f"{API}{path}", headers=bearer(key))
    assert response.status_code == 200, response.get_json()
    return response.get_json()["data"]


def dlq_entries(
    client: FlaskClient, key: str, setup: SyncSetup, *, resolved: bool = False
) -> dict[str, dict[str, Any]]:
    """The sync's DLQ entries through the API, by record key: their attributes."""
    data = _get(client, key, f"/dlq?sync_id={setup.sync_id}&resolved={str(resolved).lower()}"
                             "&limit=100")
    entries = {}
    for item in data:
        attributes = item["attributes"]
        (value,) = attributes["record_keys"].values()
        entries[str(value)] = attributes
    return entries


def destination_status(client: FlaskClient, key: str, setup: SyncSetup) -> dict[str, Any]:
    """The destination's attributes as GET /destinations lists them."""
    for item in _get(client, key, "/destinations?limit=100"):
        if item["id"] == setup.destination_id:
            return item["attributes"]
    raise AssertionError(f"destination {setup.destination_id} is not listed")


def discovered_objects(client: FlaskClient, key: str, setup: SyncSetup) -> dict[str, Any]:
    data = _get(client, key, f"/objects?destination_id={setup.destination_id}")
    return {item["id"]: item["attributes"] for item in data}


def discovered_fields(
    client: FlaskClient, key: str, setup: SyncSetup, object_name: str
) -> dict[str, Any]:
    data = _get(client, key,
                f"/fields?destination_id={setup.destination_id}&object_name={object_name}")
    return {item["id"]: item["attributes"] for item in data}


def run_with_faults_on_writes(
    engine_driver: EngineDriver, setup: SyncSetup, fake: FakeServer, status: int, body: Any,
    headers: dict[str, str] | None, times: int,
) -> Any:
    """Plan the run, then script the faults, so that they hit the writes, not discovery."""
    run_id = engine_driver.trigger(setup)
    assert engine_driver.engine.execute_run(run_id) is None
    fake.fail_next(status, body, headers, times=times)
    engine_driver.drain()
    return get_run(run_id)


def resolutions(client: FlaskClient, key: str, setup: SyncSetup) -> dict[str, str]:
    """Record key → resolution of the sync's resolved DLQ entries."""
    resolved = dlq_entries(client, key, setup, resolved=True)
    return {record_key: entry["resolution"] for record_key, entry in resolved.items()}


def assert_never_left(fake: FakeServer, values: list[str], *texts: str) -> None:
    """None of `values` (raw personal data) is in any request the fake received, nor in `texts`
    (logs, DLQ entries), in any letter case."""
    sent = [f"{r.path}?{r.query} {r.body.decode()}" for r in fake.requests]
    for value in values:
        for text in [*sent, *texts]:
            assert value.lower() not in text.lower(), f"{value!r} left the worker"
