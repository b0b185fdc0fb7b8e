"""Syncs from a Postgres table to Iterable users and events through the engine, against the fake
Iterable API: what the project holds after each run, what each bulk request carried, and what
the API shows a user (run counts, DLQ entries, the destination's status, discovery)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from shared.errors import Invalid
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
from tests.fakes.iterable import FakeIterable

BATCH_LIMIT = 1000  # users per bulkUpdate request the connector sends at most
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
          api_key: str = "server-key", object_name: str = "users",
          mappings: list[dict[str, Any]] = MAPPINGS) -> SyncSetup:
    config = {"apiKey": api_key, "baseUrl": iterable.url, "rateLimitPerSecond": 1000}
    return make_sync(account, people, "iterable", config, object_name=object_name,
                     mappings=mappings, mode=mode)


def _users(iterable: FakeIterable) -> dict[str, dict[str, Any]]:
    return {u["userId"]: u for u in iterable.users.values()}


def _bulk_updates(iterable: FakeIterable) -> list[list[dict[str, Any]]]:
    return [r.json()["users"] for r in iterable.requests
            if (r.method, r.path) == ("POST", "/api/users/bulkUpdate")]


def _sent_keys(iterable: FakeIterable) -> list[str]:
    return sorted((u["userId"] for batch in _bulk_updates(iterable) for u in batch), key=int)


def test_first_run_updates_every_user_with_iterable_typed_values_1000_at_a_time(
    driver: EngineDriver, account: Any, people: Warehouse, iterable: FakeIterable,
    client: FlaskClient,
) -> None:
    seed(people, 2100)
    setup = _sync(account, people, iterable)
    run = driver.run(setup)
    assert run.status == "succeeded", run.error
    assert (run.rows_read, run.rows_added, run.rows_written, run.rows_failed) == (
        2100, 2100, 2100, 0,
    )
    users = _users(iterable)
    assert len(users) == 2100
    assert users["2"]["email"] == "user2@example.com"
    assert users["2"]["dataFields"] == {
        "firstName": "User 2", "score": 3.0, "vip": True,
        "lastSeen": "2025-03-27 17:02:00 +00:00", "bornOn": "1990-01-03 00:00:00 +00:00",
    }
    assert users["3"]["dataFields"]["vip"] is False
    batches = _bulk_updates(iterable)
    assert sorted(len(b) for b in batches) == [100, BATCH_LIMIT, BATCH_LIMIT]
    wire = next(u for b in batches for u in b if u["userId"] == "7")
    assert wire["preferUserId"] is True
    assert wire["dataFields"]["lastSeen"] == "2025-03-27 17:07:00 +00:00"
    assert wire["dataFields"]["score"] == 10.5
    assert destination_status(client, account.key, setup)["status"] == "connected"


def test_second_run_sends_only_the_changed_rows(
    driver: EngineDriver, account: Any, people: Warehouse, iterable: FakeIterable
) -> None:
    seed(people, 6)
    setup = _sync(account, people, iterable)
    driver.run(setup)
    iterable.requests.clear()
    people.execute("UPDATE warehouse.people SET active = NOT active WHERE id IN (2, 3)")
    run = driver.run(setup)
    assert run.status == "succeeded"
    assert (run.rows_changed, run.rows_unchanged, run.rows_written) == (2, 4, 2)
    assert _sent_keys(iterable) == ["2", "3"]
    users = _users(iterable)
    assert users["2"]["dataFields"]["vip"] is False and users["3"]["dataFields"]["vip"] is True


def test_update_mode_is_refused_when_the_sync_is_created(
    account: Any, people: Warehouse, iterable: FakeIterable
) -> None:
    with pytest.raises(Invalid, match="users does not support sync mode .update.; it supports delete, mirror, upsert"):
        _sync(account, people, iterable, mode="update")


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


def test_delete_removes_the_users_of_the_result(
    driver: EngineDriver, account: Any, people: Warehouse, iterable: FakeIterable
) -> None:
    for key in ("1", "2", "9"):
        iterable.add_user(f"old{key}@example.com", user_id=key)
    seed(people, 3)  # user 3 is not in the project: deleting it is already done
    setup = _sync(account, people, iterable, mode="delete")
    run = driver.run(setup)
    assert run.status == "succeeded" and (run.rows_written, run.rows_failed) == (3, 0)
    assert sorted(_users(iterable)) == ["9"]


def test_mirror_deletes_users_whose_rows_left_the_source(
    driver: EngineDriver, account: Any, people: Warehouse, iterable: FakeIterable
) -> None:
    seed(people, 5)
    setup = _sync(account, people, iterable, mode="mirror")
    driver.run(setup)
    people.execute("DELETE FROM warehouse.people WHERE id IN (4, 5)")
    people.execute("UPDATE warehouse.people SET name = 'Kept' WHERE id = 1")
    run = driver.run(setup)
    assert run.status == "succeeded"
    assert (run.rows_removed, run.rows_changed) == (2, 1)
    users = _users(iterable)
    assert sorted(users, key=int) == ["1", "2", "3"]
    assert users["1"]["dataFields"]["firstName"] == "Kept"



def test_429_with_retry_after_is_retried_until_the_users_are_written(
    driver: EngineDriver, account: Any, people: Warehouse, iterable: FakeIterable,
    client: FlaskClient,
) -> None:
    seed(people, 5)
    setup = _sync(account, people, iterable)
    limited = {"msg": "Rate limit exceeded", "code": "RateLimitExceeded", "params": None}
    run = run_with_faults_on_writes(driver, setup, iterable, 429, limited,
                                     {"Retry-After": "2"}, 2)
    assert run.status == "succeeded" and run.rows_written == 5
    assert len(_users(iterable)) == 5
    assert len(_bulk_updates(iterable)) == 3  # two refused, one accepted
    assert dlq_entries(client, account.key, setup) == {}


def test_a_storm_of_5xx_is_retried_until_the_users_are_written(
    driver: EngineDriver, account: Any, people: Warehouse, iterable: FakeIterable,
    client: FlaskClient,
) -> None:
    seed(people, 5)
    setup = _sync(account, people, iterable)
    down = {"msg": "Internal server error", "code": "GenericError", "params": None}
    run = run_with_faults_on_writes(driver, setup, iterable, 503, down, None, 4)
    assert run.status == "succeeded" and run.rows_written == 5
    assert len(_users(iterable)) == 5
    assert dlq_entries(client, account.key, setup) == {}


def test_malformed_emails_land_in_the_dlq_and_resolve_once_the_rows_are_fixed(
    driver: EngineDriver, account: Any, people: Warehouse, iterable: FakeIterable,
    client: FlaskClient,
) -> None:
    seed(people, 5)
    people.execute("UPDATE warehouse.people SET email = 'user' || id || '@' WHERE id IN (2, 4)")
    setup = _sync(account, people, iterable)
    run = driver.run(setup)
    assert run.status == "succeeded"
    assert (run.rows_written, run.rows_failed) == (3, 2)
    assert sorted(_users(iterable), key=int) == ["1", "3", "5"]
    entries = dlq_entries(client, account.key, setup)
    assert sorted(entries) == ["2", "4"]
    assert entries["2"]["error_code"] == "DESTINATION_VALIDATION"
    assert entries["2"]["message"] == "malformed email address (Iterable invalidEmails: 2)"

    people.execute("UPDATE warehouse.people SET email = 'fixed' || id || '@example.com'"
                   " WHERE id IN (2, 4)")
    iterable.requests.clear()
    run = driver.run(setup)
    assert run.status == "succeeded" and run.rows_written == 2
    assert _sent_keys(iterable) == ["2", "4"]
    assert _users(iterable)["4"]["email"] == "fixed4@example.com"
    assert dlq_entries(client, account.key, setup) == {}
    assert resolutions(client, account.key, setup) == {"2": "auto_resolved", "4": "auto_resolved"}


def test_a_rejected_api_key_fails_the_run_and_marks_the_destination(
    driver: EngineDriver, account: Any, people: Warehouse, iterable: FakeIterable,
    client: FlaskClient,
) -> None:
    seed(people, 3)
    setup = _sync(account, people, iterable, api_key="revoked-key")
    run = driver.run(setup)
    assert run.status == "failed"
    assert "fix apiKey in the destination's config" in (run.error or "")
    assert "BadApiKey" in (run.error or "")
    assert iterable.users == {}
    assert destination_status(client, account.key, setup)["status"] == "auth_failed"


def test_discovery_answers_users_and_events_and_the_project_user_fields(
    account: Any, people: Warehouse, iterable: FakeIterable, client: FlaskClient
) -> None:
    setup = _sync(account, people, iterable)
    objects = discovered_objects(client, account.key, setup)
    assert set(objects) == {"users", "events"}
    assert objects["users"]["supports_upsert"] and not objects["events"]["supports_upsert"]
    fields = discovered_fields(client, account.key, setup, "users")
    assert fields["email"]["external_id"] and fields["userId"]["external_id"]
    assert {name: fields[name]["data_type"] for name in SCHEMA} == {
        "score": "number", "vip": "boolean", "lastSeen": "datetime", "bornOn": "datetime",
    }
