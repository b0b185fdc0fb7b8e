"""The Iterable destination against a fake Iterable API on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from connectors.destinations.base import DestinationField, Record, RecordResult
from connectors.destinations.iterable import IterableDestination
from connectors.errors import AuthError, ConnectorError, RetryableError, UnsupportedMode
from connectors.registry import destination_class
from tests.fakes.iterable import FakeIterable

SCHEMA = {
    "age": "long",
    "score": "double",
    "vip": "boolean",
    "lastSeen": "date",
    "address": "object",
    "address.city": "string",
    "orders": "nested",
}


@pytest.fixture
def iterable() -> Iterator[FakeIterable]:
    with FakeIterable(api_key="secret", user_fields=SCHEMA) as fake:
        yield fake


def make(fake: FakeIterable, **config: Any) -> IterableDestination:
    return IterableDestination({"apiKey": "secret", "baseUrl": fake.url, **config})


def user(email: str, **fields: Any) -> Record:
    return Record(email, {"email": email, **fields})


def test_registered_and_declared() -> None:
    assert destination_class("iterable") is IterableDestination
    assert IterableDestination.secret_fields() == ("apiKey",)
    assert IterableDestination.supported_modes == {"upsert", "insert", "delete", "mirror"}
    assert IterableDestination.batch_size == 1000
    with pytest.raises(ConnectorError):
        IterableDestination({})


def test_discovery(iterable: FakeIterable) -> None:
    destination = make(iterable, eventFields=["plan", {"name": "amount", "type": "double"}])
    objects = {o.api_name: o for o in destination.list_objects()}
    assert set(objects) == {"users", "events"}
    assert objects["events"].supports_upsert is False
    fields = {f.name: f for f in destination.list_fields("users")}
    assert fields["email"].external_id and fields["userId"].external_id
    assert {name: fields[name].data_type for name in SCHEMA} == {
        "age": "integer",
        "score": "number",
        "vip": "boolean",
        "lastSeen": "datetime",
        "address": "json",
        "address.city": "string",
        "orders": "json",
    }
    assert fields["signupDate"].data_type == "datetime"
    events = {f.name: f for f in destination.list_fields("events")}
    assert events["id"].external_id
    assert events["eventName"].required
    assert events["createdAt"].data_type == "datetime"
    assert events["amount"].data_type == "number" and events["plan"].data_type == "string"
    assert not {f.name: f for f in make(iterable, eventName="x").list_fields("events")}[
        "eventName"
    ].required
    with pytest.raises(ConnectorError):
        destination.list_fields("campaigns")


def test_upsert_users_by_email(iterable: FakeIterable) -> None:
    destination = make(iterable)
    records = [
        user("Ann@Example.com", age=31, vip=True, **{"address.city": "Oslo"}),
        user("bob@example.com", score=2.5, lastSeen="2025-03-27 17:00:00 +00:00", plan="pro"),
    ]
    results = destination.write_batch("users", "upsert", "email", records)
    assert results == [RecordResult.success()] * 2
    assert iterable.user("ann@example.com")["dataFields"] == {
        "age": 31,
        "vip": True,
        "address": {"city": "Oslo"},
    }
    assert iterable.user("bob@example.com")["dataFields"]["plan"] == "pro"
    assert iterable.user_fields["plan"] == "string"  # new field added to the schema
    (request,) = [r for r in iterable.requests if r.path == "/api/users/bulkUpdate"]
    assert request.headers["api-key"] == "secret"
    sent = json.loads(request.body)["users"][0]
    assert sent["email"] == "Ann@Example.com" and "email" not in sent["dataFields"]
    # A second upsert overwrites given fields and keeps the others.
    destination.write_batch("users", "upsert", "email", [user("ann@example.com", age=32)])
    assert iterable.user("ann@example.com")["dataFields"]["age"] == 32
    assert iterable.user("ann@example.com")["dataFields"]["vip"] is True


def test_upsert_users_by_user_id_creates_them(iterable: FakeIterable) -> None:
    destination = make(iterable)
    records = [Record("u-1", {"userId": "u-1", "age": 5}), Record("u-2", {"userId": "u-2"})]
    assert (
        destination.write_batch("users", "upsert", "userId", records)
        == [RecordResult.success()] * 2
    )
    assert iterable.user_by_id("u-1")["dataFields"] == {"age": 5}
    sent = json.loads(iterable.requests[-1].body)["users"][0]
    assert sent == {"userId": "u-1", "dataFields": {"age": 5}, "preferUserId": True}


def test_unsupported_operations(iterable: FakeIterable) -> None:
    destination = make(iterable)
    with pytest.raises(UnsupportedMode, match="update-only|only updates"):
        destination.write_batch("users", "update", "email", [user("a@x.io")])
    with pytest.raises(UnsupportedMode):
        destination.write_batch("users", "insert", "email", [user("a@x.io")])
    with pytest.raises(UnsupportedMode):
        destination.write_batch("events", "upsert", "id", [Record("1", {})])
    with pytest.raises(ConnectorError):
        destination.write_batch("users", "upsert", "phone", [user("a@x.io")])
    assert iterable.requests == []


def test_malformed_email_and_user_id_fail_per_record(iterable: FakeIterable) -> None:
    destination = make(iterable)
    results = destination.write_batch(
        "users", "upsert", "email", [user("good@x.io", age=1), user("not-an-email", age=2)]
    )
    assert results[0].ok
    assert results[1].code == "DESTINATION_VALIDATION"
    assert "malformed email" in (results[1].message or "") and "not-an-email" in results[1].message
    assert iterable.user("good@x.io") is not None and len(iterable.users) == 1
    results = destination.write_batch(
        "users", "upsert", "userId", [Record("bad id ", {"userId": "bad id "})]
    )
    assert results[0].code == "DESTINATION_VALIDATION" and "malformed userId" in results[0].message


def test_type_conflict_fails_only_offending_records(iterable: FakeIterable) -> None:
    destination = make(iterable)
    records = [
        user("a@x.io", age=1),
        user("b@x.io", age="old"),
        user("c@x.io", age=3, lastSeen="yesterday"),
        user("d@x.io", vip=False),
    ]
    results = destination.write_batch("users", "upsert", "email", records)
    assert results[0].ok and results[3].ok
    assert results[1].code == "DESTINATION_VALIDATION"
    assert "RequestFieldsTypesMismatched" in results[1].message and "age" in results[1].message
    assert results[2].code == "DESTINATION_VALIDATION" and "lastSeen" in results[2].message
    assert set(iterable.users) == {"a@x.io", "d@x.io"}
    bulk_calls = [r for r in iterable.requests if r.path == "/api/users/bulkUpdate"]
    assert len(bulk_calls) <= 3


def test_oversized_batch_is_split_under_4mb(iterable: FakeIterable) -> None:
    destination = make(iterable)
    blob = "x" * 900_000
    records = [user(f"u{i}@x.io", bio=blob) for i in range(10)]
    records.append(user("huge@x.io", bio="y" * 4_200_000))
    results = destination.write_batch("users", "upsert", "email", records)
    assert results[:10] == [RecordResult.success()] * 10
    assert results[10].code == "DESTINATION_VALIDATION" and "4 MB" in results[10].message
    assert len(iterable.users) == 10
    bodies = [r.body for r in iterable.requests if r.path == "/api/users/bulkUpdate"]
    assert len(bodies) >= 3 and all(len(b) <= 4_000_000 for b in bodies)


def test_fake_refuses_bodies_over_4mb(iterable: FakeIterable) -> None:
    body = json.dumps({"users": [{"email": "a@x.io", "dataFields": {"b": "x" * 4_200_000}}]})
    answer = requests.post(
        f"{iterable.url}/api/users/bulkUpdate", data=body, headers={"Api-Key": "secret"}, timeout=10
    )
    assert answer.status_code == 413 and answer.json()["code"] == "BatchTooLarge"
    assert iterable.users == {}


def test_delete_users_one_call_each(iterable: FakeIterable) -> None:
    iterable.add_user("a@x.io", {"age": 1})
    iterable.add_user("b+tag@x.io", {"age": 2}, user_id="u-b")
    iterable.add_user("c@x.io", {}, user_id="u/c")
    destination = make(iterable)
    results = destination.write_batch(
        "users", "delete", "email", [Record("a@x.io", {}), Record("gone@x.io", {})]
    )
    assert results == [RecordResult.success()] * 2  # already absent counts as deleted
    results = destination.write_batch(
        "users", "delete", "userId", [Record("u-b", {}), Record("u/c", {})]
    )
    assert results == [RecordResult.success()] * 2
    assert iterable.users == {}
    deletes = [r for r in iterable.requests if r.method == "DELETE"]
    assert [r.path for r in deletes] == [
        "/api/users/a@x.io",
        "/api/users/gone@x.io",
        "/api/users/byUserId/u-b",
        "/api/users/byUserId/u%2Fc",
    ]
    assert destination.batch_size_for("delete", 10_000) == 100


def test_delete_rate_limited_midway_fails_the_rest_as_retryable(iterable: FakeIterable) -> None:
    for name in "abc":
        iterable.add_user(f"{name}@x.io")
    original = iterable.handle

    def first_then_429(request: Any) -> Any:
        answer = original(request)
        iterable.fail_next(429, {"msg": "Too many requests", "code": "RateLimitExceeded"})
        return answer

    iterable.handle = first_then_429  # type: ignore[method-assign]
    results = make(iterable).write_batch(
        "users", "delete", "email", [Record(f"{n}@x.io", {}) for n in "abc"]
    )
    assert results[0].ok
    assert results[1].code == "RATE_LIMIT" and results[1].retryable
    assert results[2].retryable
    assert set(iterable.users) == {"b@x.io", "c@x.io"}


def test_track_events(iterable: FakeIterable) -> None:
    iterable.add_user("known@x.io", user_id="u-1")
    destination = make(iterable, eventName="purchase")
    records = [
        Record(
            "evt-1",
            {
                "id": "evt-1",
                "email": "known@x.io",
                "createdAt": "2025-03-27 17:00:00 +00:00",
                "amount": 12.5,
                "plan": "pro",
            },
        ),
        Record("evt-2", {"id": "evt-2", "userId": "u-1", "eventName": "signup"}),
        Record("evt-3", {"id": "evt-3", "userId": "nobody"}),
        Record("evt-4", {"id": "evt-4", "amount": 1.0}),
    ]
    results = destination.write_batch("events", "insert", "id", records)
    assert results[0].ok and results[1].ok
    assert results[2].code == "NOT_FOUND"
    assert results[3].code == "DESTINATION_VALIDATION" and "email or a userId" in results[3].message
    first = iterable.events["evt-1"]
    assert first["eventName"] == "purchase"
    assert first["createdAt"] == int(dt.datetime(2025, 3, 27, 17, tzinfo=dt.UTC).timestamp())
    assert first["dataFields"] == {"amount": 12.5, "plan": "pro"}
    assert iterable.events["evt-2"]["eventName"] == "signup"
    # Sending the same event id again updates it instead of adding another.
    destination.write_batch(
        "events", "insert", "id", [Record("evt-1", {**records[0].fields, "plan": "max"})]
    )
    assert len(iterable.events) == 2 and iterable.events["evt-1"]["dataFields"]["plan"] == "max"


def test_event_name_missing_and_disallowed() -> None:
    with FakeIterable(api_key="secret", disallowed_event_names={"spam"}) as iterable:
        destination = make(iterable)
        results = destination.write_batch(
            "events",
            "insert",
            "id",
            [
                Record("1", {"email": "a@x.io"}),
                Record("2", {"email": "a@x.io", "eventName": "spam"}),
                Record("3", {"email": "a@x.io", "eventName": "ok"}),
            ],
        )
        assert results[0].code == "DESTINATION_VALIDATION" and "eventName" in results[0].message
        assert results[1].code == "DESTINATION_VALIDATION" and "disallowed" in results[1].message
        assert results[2].ok
        assert set(iterable.events) == {"3"}


def test_event_type_conflict_per_event_name(iterable: FakeIterable) -> None:
    destination = make(iterable, eventName="purchase")
    destination.write_batch(
        "events", "insert", "id", [Record("1", {"email": "a@x.io", "amount": 5})]
    )
    results = destination.write_batch(
        "events",
        "insert",
        "id",
        [
            Record("2", {"email": "a@x.io", "amount": "five"}),
            Record("3", {"email": "a@x.io", "amount": 7}),
        ],
    )
    assert results[0].code == "DESTINATION_VALIDATION" and "amount" in results[0].message
    assert results[1].ok
    assert set(iterable.events) == {"1", "3"}


def test_rate_limit_with_retry_after(iterable: FakeIterable) -> None:
    iterable.fail_next(
        429, {"msg": "Rate limit exceeded", "code": "RateLimitExceeded"}, {"Retry-After": "2"}
    )
    with pytest.raises(RetryableError) as caught:
        make(iterable).write_batch("users", "upsert", "email", [user("a@x.io")])
    assert caught.value.code == "RATE_LIMIT" and caught.value.retry_after == 2
    assert "RateLimitExceeded" in caught.value.message
    assert iterable.users == {}


def test_server_error_is_retryable(iterable: FakeIterable) -> None:
    iterable.fail_next(503, "<html>unavailable</html>")
    with pytest.raises(RetryableError) as caught:
        make(iterable).write_batch(
            "events", "insert", "id", [Record("1", {"email": "a@x.io", "eventName": "e"})]
        )
    assert caught.value.code == "UNKNOWN" and "unavailable" in caught.value.message


def test_bad_api_key(iterable: FakeIterable) -> None:
    wrong = IterableDestination({"apiKey": "wrong", "baseUrl": iterable.url})
    with pytest.raises(AuthError, match="apiKey"):
        wrong.write_batch("users", "upsert", "email", [user("a@x.io")])
    with pytest.raises(AuthError):
        wrong.test()
    with pytest.raises(AuthError):
        wrong.list_fields("users")
    make(iterable).test()


def test_unexpected_bodies_do_not_crash(iterable: FakeIterable) -> None:
    destination = make(iterable)
    iterable.fail_next(200, "<html>maintenance</html>")
    results = destination.write_batch("users", "upsert", "email", [user("a@x.io"), user("b@x.io")])
    assert [r.code for r in results] == ["UNKNOWN", "UNKNOWN"]
    assert "maintenance" in results[0].message
    iterable.fail_next(200, {"successCount": 1, "failCount": 1})
    results = destination.write_batch("users", "upsert", "email", [user("a@x.io"), user("b@x.io")])
    assert [r.code for r in results] == ["UNKNOWN", "UNKNOWN"]
    iterable.fail_next(400, {"msg": "Invalid JSON", "code": "BadJsonBody"})
    with pytest.raises(ConnectorError, match="BadJsonBody"):
        destination.write_batch("users", "upsert", "email", [user("a@x.io")])
    iterable.fail_next(200, "not json")
    with pytest.raises(ConnectorError):
        destination.list_fields("users")


def test_format_value(iterable: FakeIterable) -> None:
    destination = make(iterable)
    moment = dt.datetime(2025, 3, 27, 19, 0, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert destination.format_value(moment, DestinationField("t", "t", "datetime")) == (
        "2025-03-27 17:00:05 +00:00"
    )
    assert destination.format_value(dt.date(2025, 3, 27), DestinationField("d", "d", "date")) == (
        "2025-03-27"
    )
    assert destination.format_value(False, DestinationField("b", "b", "boolean")) is False
    assert destination.format_value(3, DestinationField("n", "n", "integer")) == 3
