"""What is particular to HubSpot, synced from a Postgres table through the engine against the
fake CRM API: the wire values of each property type. What every destination does (modes, batch
limits, retries, refusals, credentials, secrets, discovery) is in tests/contract."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import (
    make_sync,
    seed,
)
from tests.engine.conftest import EngineDriver, SyncSetup, Warehouse
from tests.fakes.hubspot import FakeHubSpot

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


def _sync(account: Any, people: Warehouse, hubspot: FakeHubSpot) -> SyncSetup:
    config = {"accessToken": hubspot.token, "baseUrl": hubspot.url, "rateLimitPerSecond": 1000}
    return make_sync(account, people, "hubspot", config, object_name="contacts",
                     mappings=MAPPINGS)


def _contacts(hubspot: FakeHubSpot) -> dict[str, dict[str, str]]:
    return {c["customer_id"]: c for c in hubspot.objects("contacts")}


def _inputs(hubspot: FakeHubSpot, operation: str) -> list[list[dict[str, Any]]]:
    return [r.json()["inputs"] for r in hubspot.batch_requests(operation)]


def test_rows_are_upserted_with_hubspot_wire_values(
    driver: EngineDriver, account: Any, people: Warehouse, hubspot: FakeHubSpot
) -> None:
    seed(people, 7)
    run = driver.run(_sync(account, people, hubspot))
    assert run.status == "succeeded", run.error
    second = _contacts(hubspot)["2"]
    assert {k: second[k] for k in ("email", "firstname", "lifetime_value", "is_vip",
                                   "last_purchase_at", "renewal_date")} == {
        "email": "user2@example.com", "firstname": "User 2", "lifetime_value": "3",
        "is_vip": "true", "last_purchase_at": "2025-03-27T17:02:00.000Z",
        "renewal_date": "1990-01-03",
    }
    wire = next(i for b in _inputs(hubspot, "upsert") for i in b if i["id"] == "7")
    assert wire["idProperty"] == "customer_id"
    assert wire["properties"] == {
        "customer_id": "7", "email": "user7@example.com", "firstname": "User 7",
        "lifetime_value": "10.5", "is_vip": "false", "last_purchase_at": "2025-03-27T17:07:00.000Z",
        "renewal_date": "631756800000",  # 1990-01-08 at midnight UTC, in epoch milliseconds
    }
