"""The Meta custom audiences destination against a fake Marketing API on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import pytest

from connectors import pii
from connectors.casting import CastError
from connectors.destinations.base import Record
from connectors.destinations.meta_audiences import MetaAudiencesDestination
from connectors.errors import AuthError, ConnectorError, RetryableError, UnsupportedMode
from connectors.registry import destination_class
from tests.fakes.meta import FakeMeta, graph_error, throttled
from worker.mapping import RecordBuilder, plan_for

AUDIENCE = "23850000000000001"
JANE = pii.sha256_hex("jane@example.com")


@pytest.fixture
def meta() -> Iterator[FakeMeta]:
    with FakeMeta(token="system-user-token", ad_account="1234") as fake:
        fake.add_audience(AUDIENCE, "High value customers")
        yield fake


def make(fake: FakeMeta, **config: Any) -> MetaAudiencesDestination:
    return MetaAudiencesDestination({
        "accessToken": "system-user-token", "adAccountId": "1234", "baseUrl": fake.url,
        **config,
    })


def person(key: str, **fields: Any) -> Record:
    return Record(key, fields)


def _payloads(fake: FakeMeta) -> list[tuple[str, dict[str, Any]]]:
    sent = []
    for request in fake.requests:
        if request.path.endswith("/users"):
            form = parse_qs(request.body.decode())
            sent.append((request.method, json.loads(form["payload"][0])))
    return sent


def test_registered_and_declared() -> None:
    assert destination_class("meta_audiences") is MetaAudiencesDestination
    assert MetaAudiencesDestination.secret_fields() == ("accessToken",)
    assert MetaAudiencesDestination.supported_modes == {"upsert", "delete", "mirror"}
    assert MetaAudiencesDestination.batch_size == 10_000
    with pytest.raises(ConnectorError, match="accessToken"):
        MetaAudiencesDestination({"adAccountId": "1"})


def test_discovery_lists_customer_file_audiences_across_pages_and_the_schema_keys(
    meta: FakeMeta,
) -> None:
    for i in range(2, 260):
        meta.add_audience(f"2385{i:013d}", f"Audience {i}")
    meta.add_audience("999", "Lookalike", subtype="LOOKALIKE")
    meta.add_audience("998", "Blocked", flagged=True)
    destination = make(meta)
    destination.test()
    objects = {o.api_name: o for o in destination.list_objects()}
    assert len(objects) == 260  # every customer file audience, lookalikes left out
    assert objects[AUDIENCE].label == "High value customers"
    assert not objects["998"].writable and "flagged" in objects["998"].label
    fields = {f.name: f for f in destination.list_fields(AUDIENCE)}
    assert {"EMAIL", "PHONE", "FN", "LN", "CT", "ST", "ZIP", "COUNTRY", "DOBY", "GEN",
            "EXTERN_ID", "MADID"} <= set(fields)
    assert fields["EMAIL"].external_id and not fields["FN"].external_id


def test_upsert_adds_hashed_rows_with_one_schema_for_the_batch(meta: FakeMeta) -> None:
    destination = make(meta)
    records = [
        person("1", EMAIL=" Jane@Example.com", FN="Jane", EXTERN_ID="1"),
        person("2", EMAIL=pii.sha256_hex("bob@example.com"), PHONE="+1 (616) 954-7888",
               EXTERN_ID="2"),
    ]
    results = destination.write_batch(AUDIENCE, "upsert", "EXTERN_ID", records)
    assert all(r.ok for r in results)
    ((method, payload),) = _payloads(meta)
    assert method == "POST"
    assert payload["schema"] == ["EMAIL", "PHONE", "FN", "EXTERN_ID"]
    assert payload["data"] == [
        [JANE, "", pii.sha256_hex("jane"), "1"],
        [pii.sha256_hex("bob@example.com"), pii.sha256_hex("16169547888"), "", "2"],
    ]
    assert meta.members(AUDIENCE, "EMAIL") == {JANE, pii.sha256_hex("bob@example.com")}
    assert "jane@example.com" not in meta.requests[-1].body.decode().lower()


def test_format_value_hashes_what_the_planner_maps_and_refuses_what_cannot_be_normalized(
    meta: FakeMeta,
) -> None:
    destination = make(meta)
    fields = {f.name: f for f in destination.list_fields(AUDIENCE)}
    assert destination.format_value("Jane@Example.com", fields["EMAIL"]) == JANE
    assert destination.format_value("x-1", fields["EXTERN_ID"]) == "x-1"
    with pytest.raises(CastError, match="GEN"):
        destination.format_value("unknown", fields["GEN"])


def test_delete_removes_people_with_the_same_payload(meta: FakeMeta) -> None:
    destination = make(meta)
    destination.write_batch(AUDIENCE, "upsert", "EMAIL", [
        person(str(i), EMAIL=f"p{i}@example.com") for i in range(3)
    ])
    results = destination.write_batch(AUDIENCE, "delete", "EMAIL",
                                      [person("p1", EMAIL="p1@example.com")])
    assert results[0].ok
    assert _payloads(meta)[-1] == ("DELETE", {"schema": ["EMAIL"],
                                              "data": [[pii.sha256_hex("p1@example.com")]]})
    assert meta.members(AUDIENCE, "EMAIL") == {
        pii.sha256_hex("p0@example.com"), pii.sha256_hex("p2@example.com"),
    }
    with pytest.raises(UnsupportedMode):
        destination.write_batch(AUDIENCE, "update", "EMAIL", [])


def test_more_than_10000_records_go_in_requests_of_10000_rows(meta: FakeMeta) -> None:
    destination = make(meta, batchSize=25_000)
    records = [person(str(i), EXTERN_ID=f"id-{i}") for i in range(25_000)]
    results = destination.write_batch(AUDIENCE, "upsert", "EXTERN_ID", records)
    assert len(results) == 25_000 and all(r.ok for r in results)
    assert [len(p["data"]) for _, p in _payloads(meta)] == [10_000, 10_000, 5_000]
    assert len(meta.audiences[AUDIENCE].members) == 25_000


def test_the_fake_refuses_more_than_10000_rows_and_raw_emails_as_meta_does(
    meta: FakeMeta,
) -> None:
    destination = make(meta)
    too_many = json.dumps({"schema": ["EXTERN_ID"], "data": [[str(i)] for i in range(10_001)]})
    with pytest.raises(ConnectorError, match="at most 10000"):
        destination._call("POST", f"/{AUDIENCE}/users", form={"payload": too_many})
    raw = json.dumps({"schema": ["EMAIL"], "data": [["jane@example.com"]]})
    with pytest.raises(ConnectorError, match="hashed with SHA-256"):
        destination._call("POST", f"/{AUDIENCE}/users", form={"payload": raw})
    assert meta.audiences[AUDIENCE].members == []


def test_rows_meta_counts_invalid_fail_and_the_others_are_received(meta: FakeMeta) -> None:
    destination = make(meta)
    results = destination.write_batch(AUDIENCE, "upsert", "EXTERN_ID", [
        person("1", EXTERN_ID="1", MADID="not-an-advertising-id"),
        person("2", EXTERN_ID="2", MADID="aece52e7-03ee-455a-b3c4-e57283966239"),
        person("3", EXTERN_ID="3", GEN="robot"),
        person("4"),
    ])
    assert [r.ok for r in results] == [False, True, False, False]
    assert results[0].code == "DESTINATION_VALIDATION"
    assert results[0].message == "Meta counted this row among the invalid entries: Invalid MADID format"
    assert (results[2].code, results[2].message) == ("MAPPING", "GEN: a gender must be m, f, male or female")
    assert results[3].message == "the record has no identifier"
    assert "robot" not in json.dumps([r.message for r in results])
    assert meta.members(AUDIENCE, "EXTERN_ID") == {"2"}


def test_throttling_is_retryable_after_the_wait_meta_advises(meta: FakeMeta) -> None:
    destination = make(meta)
    body, headers = throttled(minutes=2)
    meta.fail_next(400, body, headers)
    with pytest.raises(RetryableError) as caught:
        destination.write_batch(AUDIENCE, "upsert", "EMAIL", [person("1", EMAIL="a@b.co")])
    assert caught.value.code == "RATE_LIMIT" and caught.value.retry_after == 120.0
    meta.fail_next(400, graph_error("(#17) User request limit reached", 17),
                   {"Retry-After": "3"})
    with pytest.raises(RetryableError) as caught:
        destination.write_batch(AUDIENCE, "upsert", "EMAIL", [person("1", EMAIL="a@b.co")])
    assert caught.value.retry_after == 3.0
    meta.fail_next(500, graph_error("An unexpected error has occurred.", 2, "OAuthException"))
    with pytest.raises(RetryableError):
        destination.write_batch(AUDIENCE, "upsert", "EMAIL", [person("1", EMAIL="a@b.co")])


def test_an_invalid_token_is_an_auth_error(meta: FakeMeta) -> None:
    destination = make(meta, accessToken="expired")
    with pytest.raises(AuthError, match="code 190"):
        destination.test()
    with pytest.raises(AuthError):
        destination.write_batch(AUDIENCE, "upsert", "EMAIL", [person("1", EMAIL="a@b.co")])
    assert all("expired" not in str(r.body) for r in meta.requests)  # the token is a header


def test_a_missing_or_flagged_audience_is_a_clear_error_for_the_run(meta: FakeMeta) -> None:
    destination = make(meta)
    with pytest.raises(ConnectorError) as caught:
        destination.write_batch("404404", "upsert", "EMAIL", [person("1", EMAIL="a@b.co")])
    assert caught.value.code == "NOT_FOUND"
    assert "audience 404404 was not found in ad account act_1234" in caught.value.message
    meta.add_audience("471", "Flagged", flagged=True)
    with pytest.raises(ConnectorError) as caught:
        destination.write_batch("471", "upsert", "EMAIL", [person("1", EMAIL="a@b.co")])
    assert not isinstance(caught.value, RetryableError | AuthError)
    assert "integrity restrictions" in caught.value.message
    assert "subcode 1713230" in caught.value.message


def test_the_record_the_planner_maps_already_holds_the_hashes(meta: FakeMeta) -> None:
    """What a batch stores and a preview shows is the mapped record: hashed, never raw."""
    destination = make(meta)
    mappings = [{"source": "id", "destination": "EXTERN_ID", "key": True},
                {"source": "email", "destination": "EMAIL"},
                {"source": "phone", "destination": "PHONE"}]
    plan = plan_for(mappings, ["id", "email", "phone"], object_name=AUDIENCE, mode="mirror")
    fields = {f.name: f for f in destination.list_fields(AUDIENCE)}
    record = RecordBuilder(plan, destination, fields).build(
        ("7", 7, "Jane@Example.com", "+1 616 954 7888")
    )
    assert record == {"EXTERN_ID": "7", "EMAIL": JANE, "PHONE": pii.sha256_hex("16169547888")}
