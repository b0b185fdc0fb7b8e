"""The generic HTTP destination against a fake receiver on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from connectors.destinations.base import DestinationField, RateLimit, Record, RecordResult
from connectors.destinations.http import HttpDestination
from connectors.errors import AuthError, ConnectorError, RetryableError
from connectors.http_support import retry_after_seconds
from connectors.registry import destination_class
from tests.fakes.http_sink import FakeHttpSink


@pytest.fixture
def sink() -> Iterator[FakeHttpSink]:
    with FakeHttpSink() as fake:
        yield fake


def make(url: str, **config: Any) -> HttpDestination:
    return HttpDestination({"url": url, **config})


def people(*ids: int) -> list[Record]:
    return [Record(str(i), {"id": i, "name": f"person {i}"}) for i in ids]


def test_registered() -> None:
    assert destination_class("http") is HttpDestination
    assert HttpDestination.secret_fields() == ("headers",)
    assert HttpDestination.supported_modes == {"upsert", "insert", "update", "delete", "mirror"}
    assert HttpDestination.rate_limit == RateLimit(1000, 1.0)
    assert HttpDestination.max_concurrency == 8


def test_discovery_from_declared_fields() -> None:
    destination = make(
        "http://127.0.0.1:1/x",
        objectName="people",
        fields=[
            "nickname",
            {"name": "id", "type": "int", "externalId": True, "required": True},
            {"name": "born", "type": "date"},
            {"name": "seen_at", "type": "timestamp"},
            {"name": "score", "type": "double"},
            {"name": "tags", "type": "object"},
        ],
    )
    assert [o.api_name for o in destination.list_objects()] == ["people"]
    fields = {f.name: f for f in destination.list_fields("people")}
    assert {name: f.data_type for name, f in fields.items()} == {
        "nickname": "string",
        "id": "integer",
        "born": "date",
        "seen_at": "datetime",
        "score": "number",
        "tags": "json",
    }
    assert fields["id"].external_id and fields["id"].required
    with pytest.raises(ConnectorError):
        destination.list_fields("other")


def test_discovery_without_fields_and_bad_type() -> None:
    assert make("http://127.0.0.1:1/x").list_fields("records") == []
    bad = make("http://127.0.0.1:1/x", fields=[{"name": "a", "type": "blob"}])
    with pytest.raises(ConnectorError, match="blob"):
        bad.list_fields("records")


def test_config_validation() -> None:
    with pytest.raises(ConnectorError):
        HttpDestination({})
    with pytest.raises(ConnectorError):
        make("http://127.0.0.1:1/x", method="GET")
    with pytest.raises(ConnectorError):
        make("http://127.0.0.1:1/x", format="xml")


def test_upsert_json_array_with_headers_and_idempotency_key(sink: FakeHttpSink) -> None:
    destination = make(f"{sink.url}/in", headers={"Authorization": "Bearer s3cret"})
    results = destination.write_batch("records", "upsert", "id", people(1, 2, 3))
    assert results == [RecordResult.success()] * 3
    assert sink.store == {str(i): {"id": i, "name": f"person {i}"} for i in (1, 2, 3)}
    (batch,) = sink.received
    assert batch.method == "POST" and batch.path == "/in"
    assert batch.operation == "upsert" and batch.key_field == "id"
    assert batch.headers["authorization"] == "Bearer s3cret"
    assert batch.headers["content-type"] == "application/json"
    body = sink.requests[-1].body
    assert json.loads(body) == [r.fields for r in people(1, 2, 3)]
    expected = hashlib.sha256(b"upsert\nid\n" + body).hexdigest()
    assert batch.idempotency_key == expected


def test_each_operation_applied(sink: FakeHttpSink) -> None:
    destination = make(sink.url, method="PUT", resultsPath="results")
    destination.write_batch("records", "insert", "id", people(1, 2))
    assert destination.write_batch("records", "insert", "id", people(2, 3)) == [
        RecordResult.failure("DESTINATION_VALIDATION", "id 2 already exists"),
        RecordResult.success(),
    ]
    update = [Record("1", {"id": 1, "name": "renamed"}), Record("9", {"id": 9, "name": "x"})]
    results = destination.write_batch("records", "update", "id", update)
    assert results[0].ok
    assert results[1] == RecordResult.failure("NOT_FOUND", "id 9 not found")
    assert destination.write_batch("records", "delete", "id", [Record("2", {"id": 2})])[0].ok
    assert sink.store == {"1": {"id": 1, "name": "renamed"}, "3": {"id": 3, "name": "person 3"}}
    assert [b.operation for b in sink.received] == ["insert", "insert", "update", "delete"]
    assert {b.method for b in sink.received} == {"PUT"}


def test_delete_record_without_fields_sends_key(sink: FakeHttpSink) -> None:
    destination = make(sink.url)
    destination.write_batch("records", "upsert", "email", [Record("a@x.io", {"email": "a@x.io"})])
    destination.write_batch("records", "delete", "email", [Record("a@x.io", {})])
    assert sink.received[-1].records == [{"email": "a@x.io"}]
    assert sink.store == {}


def test_json_object_and_ndjson_formats() -> None:
    with FakeHttpSink(records_key="items") as sink:
        destination = make(sink.url, format="json_object", recordsKey="items", method="PATCH")
        destination.write_batch("records", "upsert", "id", people(1))
        assert json.loads(sink.requests[-1].body) == {"items": [{"id": 1, "name": "person 1"}]}
        assert sink.store["1"]["name"] == "person 1"
    with FakeHttpSink() as sink:
        destination = make(sink.url, format="ndjson")
        destination.write_batch("records", "upsert", "id", people(1, 2))
        request = sink.requests[-1]
        assert request.headers["content-type"] == "application/x-ndjson"
        assert request.body.decode().splitlines() == [
            '{"id":1,"name":"person 1"}',
            '{"id":2,"name":"person 2"}',
        ]
        assert set(sink.store) == {"1", "2"}


def test_per_record_results_from_results_path() -> None:
    with FakeHttpSink(results_path="data.results") as sink:
        sink.reject_keys({"2"}, "name is too short")
        destination = make(sink.url, resultsPath="data.results")
        results = destination.write_batch("records", "upsert", "id", people(1, 2, 3))
        assert results == [
            RecordResult.success(),
            RecordResult.failure("DESTINATION_VALIDATION", "name is too short"),
            RecordResult.success(),
        ]
        assert set(sink.store) == {"1", "3"}


def test_results_synonyms_ids_and_odd_entries(sink: FakeHttpSink) -> None:
    destination = make(sink.url, resultsPath="results")
    sink.fail_next(
        200,
        {
            "results": [
                {"success": True, "id": 77},
                {"success": False, "message": {"field": "name", "why": "empty"}},
                "???",
            ]
        },
    )
    results = destination.write_batch("records", "upsert", "id", people(1, 2, 3, 4))
    assert results[0] == RecordResult.success("77")
    assert results[1].code == "DESTINATION_VALIDATION" and "empty" in (results[1].message or "")
    assert results[2].code == "UNKNOWN"
    assert results[3].code == "UNKNOWN" and "3 results for 4 records" in (results[3].message or "")


def test_unexpected_body_with_results_path_does_not_crash(sink: FakeHttpSink) -> None:
    destination = make(sink.url, resultsPath="results")
    sink.fail_next(200, "<html>ok</html>")
    results = destination.write_batch("records", "upsert", "id", people(1, 2))
    assert [r.code for r in results] == ["UNKNOWN", "UNKNOWN"]
    assert "<html>ok</html>" in (results[0].message or "")
    sink.fail_next(200, {"results": {"not": "a list"}})
    assert destination.write_batch("records", "upsert", "id", people(1))[0].code == "UNKNOWN"


def test_2xx_without_results_path_accepts_any_body(sink: FakeHttpSink) -> None:
    destination = make(sink.url)
    sink.fail_next(202, b"\x00\xff not json")
    assert (
        destination.write_batch("records", "upsert", "id", people(1, 2))
        == [RecordResult.success()] * 2
    )


def test_4xx_refuses_every_record_with_truncated_text() -> None:
    with FakeHttpSink(results_path=None) as sink:
        sink.reject_keys({"2"}, "name must be unique")
        destination = make(sink.url)
        results = destination.write_batch("records", "upsert", "id", people(1, 2))
        assert [r.code for r in results] == ["DESTINATION_VALIDATION"] * 2
        assert "HTTP 422" in (results[0].message or "")
        assert "name must be unique" in (results[0].message or "")
        assert sink.store == {}
        sink.fail_next(400, "x" * 5000)
        (result,) = destination.write_batch("records", "upsert", "id", people(1))
        assert result.message == "HTTP 400: " + "x" * 1000


def test_batch_over_receiver_limit_is_refused_and_batch_size_capped() -> None:
    with FakeHttpSink(max_batch=2) as sink:
        destination = make(sink.url, batchSize=2)
        assert destination.batch_size_for("upsert", 10) == 2
        results = destination.write_batch("records", "upsert", "id", people(1, 2, 3))
        assert all(
            r.code == "DESTINATION_VALIDATION" and "413" in (r.message or "") for r in results
        )
        assert (
            destination.write_batch("records", "upsert", "id", people(1, 2))
            == [RecordResult.success()] * 2
        )
    assert make("http://127.0.0.1:1/x").batch_size_for("upsert", 10) == 100
    assert make("http://127.0.0.1:1/x", batchSize=50_000).batch_size_for("upsert", 10) == 10_000


def test_429_with_retry_after_seconds(sink: FakeHttpSink) -> None:
    sink.fail_next(429, {"error": "slow down"}, {"Retry-After": "7"})
    with pytest.raises(RetryableError) as caught:
        make(sink.url).write_batch("records", "upsert", "id", people(1))
    assert caught.value.code == "RATE_LIMIT"
    assert caught.value.retry_after == 7
    assert sink.store == {}


def test_retry_after_http_date() -> None:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120)
    seconds = retry_after_seconds(email.utils.format_datetime(later, usegmt=True))
    assert seconds is not None and 100 < seconds <= 120
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_retryable(sink: FakeHttpSink, status: int) -> None:
    sink.fail_next(status, "upstream down", {"Retry-After": "3"})
    with pytest.raises(RetryableError) as caught:
        make(sink.url).write_batch("records", "upsert", "id", people(1))
    assert caught.value.code == "UNKNOWN"
    assert caught.value.retry_after == 3
    assert "upstream down" in caught.value.message


def test_connection_refused_is_retryable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RetryableError):
        make(f"http://127.0.0.1:{port}/").write_batch("records", "upsert", "id", people(1))


def test_timeout_is_retryable_with_timeout_code() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        destination = make(url, timeoutSeconds=0.2)
        with pytest.raises(RetryableError) as caught:
            destination.write_batch("records", "upsert", "id", people(1))
    assert caught.value.code == "TIMEOUT"


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failure(status: int) -> None:
    with FakeHttpSink(required_headers={"Authorization": "Bearer right"}) as sink:
        wrong = make(sink.url, headers={"Authorization": "Bearer wrong"})
        if status == 403:
            sink.fail_next(403, "forbidden")
        with pytest.raises(AuthError, match="credentials"):
            wrong.write_batch("records", "upsert", "id", people(1))
        right = make(sink.url, headers={"Authorization": "Bearer right"})
        assert right.write_batch("records", "upsert", "id", people(1))[0].ok


def test_redirect_is_not_followed(sink: FakeHttpSink) -> None:
    sink.fail_next(302, "", {"Location": "http://127.0.0.1:1/elsewhere"})
    with pytest.raises(ConnectorError, match="final URL"):
        make(sink.url).write_batch("records", "upsert", "id", people(1))


def test_connection_test() -> None:
    with FakeHttpSink(required_headers={"Authorization": "Bearer right"}) as sink:
        make(sink.url).test()  # OPTIONS answers without credentials on this receiver
        assert sink.requests[-1].method == "OPTIONS"
        assert sink.store == {} and sink.received == []
        sink.fail_next(401, "no")
        with pytest.raises(AuthError):
            make(sink.url).test()
        sink.fail_next(404, "no such path")
        make(sink.url).test()
    with pytest.raises(ConnectorError):
        make(sink.url).test()  # the server is gone


def test_format_value() -> None:
    destination = make("http://127.0.0.1:1/x")
    moment = dt.datetime(2025, 3, 27, 17, 0, 5, 123000, tzinfo=dt.UTC)
    assert destination.format_value(moment, DestinationField("t", "t", "datetime")) == (
        "2025-03-27T17:00:05.123000Z"
    )
    assert destination.format_value(dt.date(2025, 3, 27), DestinationField("d", "d", "date")) == (
        "2025-03-27"
    )
    assert destination.format_value(True, DestinationField("b", "b", "boolean")) is True
    assert destination.format_value({"a": 1}, DestinationField("j", "j", "json")) == {"a": 1}


def test_session_reused_and_closed(sink: FakeHttpSink) -> None:
    destination = make(sink.url)
    destination.write_batch("records", "upsert", "id", people(1))
    session = destination.session
    destination.write_batch("records", "upsert", "id", people(2))
    assert destination.session is session
    destination.close()
    assert destination._session is None
    assert destination.write_batch("records", "upsert", "id", []) == []


def test_idempotent_receiver_drops_retried_batch() -> None:
    with FakeHttpSink(replay_idempotent=True) as sink:
        destination = make(sink.url)
        destination.write_batch("records", "insert", "id", people(1))
        assert destination.write_batch("records", "insert", "id", people(1)) == [
            RecordResult.success()
        ]
        assert sink.replayed == 1 and len(sink.received) == 1


def test_a_result_may_carry_a_known_code_and_retryable(sink):
    destination = make(sink.url, resultsPath="results")
    answer = {"results": [
        {"ok": False, "error": "locked", "code": "RATE_LIMIT", "retryable": True},
        {"ok": False, "error": "odd", "code": "SOMETHING_ELSE"},
        {"ok": False, "error": "odder", "code": ["NOT_FOUND"]},
    ]}
    sink.fail_next(200, answer)
    results = destination.write_batch("records", "upsert", "id", people(1, 3, 4))
    assert results == [
        RecordResult.failure("RATE_LIMIT", "locked", retryable=True),
        RecordResult.failure("DESTINATION_VALIDATION", "odd"),
        RecordResult.failure("DESTINATION_VALIDATION", "odder"),
    ]


def test_values_without_a_json_type_go_out_in_their_usual_json_form(sink):
    import datetime as dt
    import decimal

    destination = make(sink.url)
    moment = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    fields = {"id": 1, "at": moment, "day": dt.date(2025, 1, 2), "score": decimal.Decimal("1.50"),
              "count": decimal.Decimal("3")}
    destination.write_batch("records", "upsert", "id", [Record("1", fields)])
    assert sink.received[-1].records == [
        {"id": 1, "at": "2025-01-02T01:04:05Z", "day": "2025-01-02", "score": 1.5, "count": 3}
    ]


def test_dates_and_decimals_of_every_kind_have_one_json_form(sink):
    import datetime as dt
    import decimal
    import uuid
    import zoneinfo

    destination = make(sink.url)
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    fields = {
        "id": 1,
        "utc": dt.datetime(2025, 1, 2, 3, 4, 5, 600, tzinfo=dt.UTC),
        "etc_utc": dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=zoneinfo.ZoneInfo("Etc/UTC")),
        "summer": dt.datetime(2025, 7, 1, 12, 0, tzinfo=berlin),
        "winter": dt.datetime(2025, 1, 1, 0, 30, tzinfo=berlin),
        "naive": dt.datetime(2025, 1, 2, 3, 4, 5),
        "day": dt.date(2025, 1, 2),
        "whole": decimal.Decimal("1250.00"),
        "negative": decimal.Decimal("-0.125"),
        "big": decimal.Decimal("12345678901234567890"),
        "tag": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    }
    destination.write_batch("records", "upsert", "id", [Record("1", fields)])
    assert sink.received[-1].records == [{
        "id": 1,
        "utc": "2025-01-02T03:04:05.000600Z",
        "etc_utc": "2025-01-02T03:04:05Z",
        "summer": "2025-07-01T10:00:00Z",
        "winter": "2024-12-31T23:30:00Z",
        "naive": "2025-01-02T03:04:05",
        "day": "2025-01-02",
        "whole": 1250,
        "negative": -0.125,
        "big": 12345678901234567890,
        "tag": "12345678-1234-5678-1234-567812345678",
    }]
