"""What is particular to Iterable, synced from a Postgres table through the engine against the
fake Iterable API: typed user fields on the wire, events through trackBulk, and deletes of users
the project does not hold. What every destination does (modes, batch limits, retries, refusals,
credentials, secrets, discovery) is in tests/contract."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import (
    make_sync,
    seed,
)
from tests.engine.conftest import EngineDriver, SyncSetup, Warehouse
from tests.fakes.iterable import FakeIterable

SCHEMA = {"score": "double", "vip": "boolean", "lastSeen": "date", "bornOn": "date"}
MAPPINGS = [
    {"source": "id", "destination": "userId", "key": True},
    {"source": "email", "destination": "email"},
    {"source": "name", "destination": "firstName"},
    {"source": "score", "destination": "score"},
    {"source": "active", "destination": "vip"},
    {"source": "last_seen_at", "destination": "lastSeen"},
    {"source": "born_on", "destination": "bornOn"},
]


@pytest.fixture
def iterable() -> Iterator[FakeIterable]:
    with FakeIterable(api_key="server-key", user_fields=SCHEMA) as fake:
        yield fake


def _sync(account: Any, people: Warehouse, iterable: FakeIterable, *, mode: str = "upsert",
          object_name: str = "users", mappings: list[dict[str, Any]] = MAPPINGS) -> SyncSetup:
    config = {"apiKey": "server-key", "baseUrl": iterable.url, "rateLimitPerSecond": 1000}
    return make_sync(account, people, "iterable", config, object_name=object_name,
                     mappings=mappings, mode=mode)


def _users(iterable: FakeIterable) -> dict[str, dict[str, Any]]:
    return {u["userId"]: u for u in iterable.users.values()}


def _bulk_updates(iterable: FakeIterable) -> list[list[dict[str, Any]]]:
    return [r.json()["users"] for r in iterable.requests
            if (r.method, r.path) == ("POST", "/api/users/bulkUpdate")]


def test_users_are_updated_with_iterable_typed_values(
    driver: EngineDriver, account: Any, people: Warehouse, iterable: FakeIterable
) -> None:
    seed(people, 7)
    run = driver.run(_sync(account, people, iterable))
    assert run.status == "succeeded", run.error
    users = _users(iterable)
    assert users["2"]["email"] == "user2@example.com"
    assert users["2"]["dataFields"] == {
        "firstName": "User 2", "score": 3.0, "vip": True,
        "lastSeen": "2025-03-27 17:02:00 +00:00", "bornOn": "1990-01-03 00:00:00 +00:00",
    }
    assert users["3"]["dataFields"]["vip"] is False
    wire = next(u for b in _bulk_updates(iterable) for u in b if u["userId"] == "7")
    assert wire["preferUserId"] is True
    assert wire["dataFields"]["lastSeen"] == "2025-03-27 17:07:00 +00:00"
    assert wire["dataFields"]["score"] == 10.5


def test_events_are_inserted_with_trackbulk_once_each(
    driver: EngineDriver, account: Any, people: Warehouse, iterable: FakeIterable
) -> None:
    seed(people, 3)
    mappings = [
        {"source": "id", "destination": "id", "key": True},
        {"source": "email", "destination": "email"},
        {"static": "signed_up", "destination": "eventName"},
        {"source": "last_seen_at", "destination": "createdAt"},
        {"source": "score", "destination": "score"},
    ]
    setup = _sync(account, people, iterable, mode="insert", object_name="events",
                  mappings=mappings)
    run = driver.run(setup)
    assert run.status == "succeeded" and run.rows_written == 3
    event = iterable.events["2"]
    assert (event["eventName"], event["email"]) == ("signed_up", "user2@example.com")
    assert event["createdAt"] == 1743094920  # 2025-03-27 17:02:00 UTC
    # score is no declared event field: the Postgres numeric still goes as a JSON number
    assert event["dataFields"] == {"score": 3.0}
    assert isinstance(event["dataFields"]["score"], float)
    seed(people, 1, start=4)
    run = driver.run(setup)
    assert run.rows_written == 1 and sorted(iterable.events) == ["1", "2", "3", "4"]


def test_deleting_a_user_iterable_does_not_hold_counts_as_done(
    driver: EngineDriver, account: Any, people: Warehouse, iterable: FakeIterable
) -> None:
    for key in ("1", "2", "9"):
        iterable.add_user(f"old{key}@example.com", user_id=key)
    seed(people, 3)  # user 3 is not in the project: deleting it is already done
    setup = _sync(account, people, iterable, mode="delete")
    run = driver.run(setup)
    assert run.status == "succeeded" and (run.rows_written, run.rows_failed) == (3, 0)
    assert sorted(_users(iterable)) == ["9"]
