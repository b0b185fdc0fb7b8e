"""The HubSpot destination against a fake HubSpot CRM v3 API on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from connectors.destinations.base import DestinationField, RateLimit, Record, RecordResult
from connectors.destinations.hubspot import HubSpotDestination
from connectors.errors import AuthError, ConnectorError, RetryableError
from connectors.registry import destination_class
from tests.fakes.hubspot import FakeHubSpot


@pytest.fixture
def fake() -> Iterator[FakeHubSpot]:
    with FakeHubSpot() as server:
        yield server


@pytest.fixture
def hubspot(fake: FakeHubSpot) -> Iterator[HubSpotDestination]:
    destination = HubSpotDestination({"accessToken": fake.token, "baseUrl": fake.url})
    yield destination
    destination.close()


def contact(email: str, **fields: Any) -> Record:
    return Record(email, {"email": email, **fields})


def sent_inputs(fake: FakeHubSpot, operation: str) -> list[dict[str, Any]]:
    return fake.batch_requests(operation)[-1].json()["inputs"]


# --- registration and config ---------------------------------------------------------------


def test_registered_with_limits_and_secret_token() -> None:
    assert destination_class("hubspot") is HubSpotDestination
    assert HubSpotDestination.secret_fields() == ("accessToken",)
    assert HubSpotDestination.supported_modes == {"upsert", "insert", "update", "delete", "mirror"}
    assert HubSpotDestination.batch_size == 100
    assert HubSpotDestination.rate_limit == RateLimit(100, 10.0)
    assert HubSpotDestination.max_concurrency == 5
    defaults = {f.name: f.default for f in HubSpotDestination.config_fields}
    assert defaults["baseUrl"] == "https://api.hubapi.com"


def test_batch_size_never_exceeds_hubspots_limit() -> None:
    assert HubSpotDestination({"accessToken": "t"}).batch_size_for("upsert", 10_000) == 100
    assert (
        HubSpotDestination({"accessToken": "t", "batchSize": 500}).batch_size_for("upsert", 10_000)
        == 100
    )
    assert (
        HubSpotDestination({"accessToken": "t", "batchSize": 20}).batch_size_for("delete", 10_000)
        == 20
    )


def test_one_session_per_instance(hubspot: HubSpotDestination) -> None:
    hubspot.test()
    first = hubspot._session
    hubspot.list_objects()
    assert hubspot._session is first
    hubspot.close()
    assert hubspot._session is None


# --- discovery -----------------------------------------------------------------------------


def test_list_objects_has_standard_and_custom_objects(hubspot: HubSpotDestination) -> None:
    objects = {o.api_name: o for o in hubspot.list_objects()}
    for name in ("contacts", "companies", "deals", "tickets", "products", "line_items"):
        assert name in objects
    assert objects["contacts"].label == "Contacts"
    assert objects["contacts"].supports_upsert
    assert not objects["line_items"].supports_upsert
    assert objects["2-7001"].label == "Cars"


def test_list_objects_without_schema_scope_keeps_standard_objects(
    fake: FakeHubSpot, hubspot: HubSpotDestination
) -> None:
    fake.fail_next(
        403, {"status": "error", "message": "missing scopes", "category": "MISSING_SCOPES"}
    )
    names = [o.api_name for o in hubspot.list_objects()]
    assert "contacts" in names and "2-7001" not in names


def test_list_fields_maps_types_keys_and_read_only(hubspot: HubSpotDestination) -> None:
    fields = {f.name: f for f in hubspot.list_fields("contacts")}
    assert fields["email"].external_id and fields["email"].data_type == "string"
    assert fields["customer_id"].external_id  # hasUniqueValue
    assert fields["hs_object_id"].external_id and not fields["hs_object_id"].updateable
    assert not fields["firstname"].external_id and fields["firstname"].updateable
    assert fields["lifetime_value"].data_type == "number"
    assert fields["renewal_date"].data_type == "date"
    assert fields["last_purchase_at"].data_type == "datetime"
    assert fields["is_vip"].data_type == "boolean"
    assert fields["lifecyclestage"].data_type == "string"
    assert fields["createdate"].label == "Create Date"

    companies = {f.name: f for f in hubspot.list_fields("companies")}
    assert companies["domain"].external_id
    assert not companies["name"].external_id
    cars = {f.name: f for f in hubspot.list_fields("2-7001")}
    assert cars["vin"].external_id and cars["year"].data_type == "number"


def test_list_fields_of_unknown_object(hubspot: HubSpotDestination) -> None:
    with pytest.raises(ConnectorError, match="Unable to infer object type"):
        hubspot.list_fields("spaceships")


# --- writes --------------------------------------------------------------------------------


def test_upsert_creates_and_updates_by_email(
    fake: FakeHubSpot, hubspot: HubSpotDestination
) -> None:
    existing = fake.seed(
        "contacts", {"email": "ann@example.com", "firstname": "Ann", "lastname": "Old"}
    )
    results = hubspot.write_batch(
        "contacts",
        "upsert",
        "email",
        [
            # HubSpot matches emails whatever their case and stores them lower-cased.
            contact("Ann@Example.com", lastname="Lee"),
            contact("bob@example.com", firstname="Bob", lifecyclestage="lead"),
        ],
    )
    assert [r.ok for r in results] == [True, True]
    assert results[0].external_id == existing
    bob = fake.find("contacts", "email", "bob@example.com")
    assert bob is not None and results[1].external_id == bob["hs_object_id"]
    assert bob["firstname"] == "Bob" and bob["lifecyclestage"] == "lead"
    ann = fake.get("contacts", existing)
    assert ann is not None and ann["lastname"] == "Lee" and ann["firstname"] == "Ann"
    assert len(fake.objects("contacts")) == 2

    inputs = sent_inputs(fake, "upsert")
    assert inputs[0]["id"] == "Ann@Example.com" and inputs[0]["idProperty"] == "email"
    assert inputs[1]["properties"]["lifecyclestage"] == "lead"
    assert [i["objectWriteTraceId"] for i in inputs] == ["0", "1"]


def test_upsert_by_unique_property_on_a_custom_object(
    fake: FakeHubSpot, hubspot: HubSpotDestination
) -> None:
    records = [Record("VIN-1", {"vin": "VIN-1", "model": "Roadster", "year": 2021})]
    results = hubspot.write_batch("2-7001", "upsert", "vin", records)
    assert results[0].ok
    car = fake.find("cars", "vin", "VIN-1")
    assert car is not None and car["model"] == "Roadster" and car["year"] == "2021"
    assert results[0].external_id == car["hs_object_id"]


def test_upsert_by_record_id_updates_existing_records(
    fake: FakeHubSpot, hubspot: HubSpotDestination
) -> None:
    existing = fake.seed("contacts", {"email": "ann@example.com"})
    results = hubspot.write_batch(
        "contacts",
        "upsert",
        "hs_object_id",
        [
            Record(existing, {"hs_object_id": existing, "firstname": "Ann"}),
            Record("999999", {"hs_object_id": "999999", "firstname": "Nobody"}),
        ],
    )
    assert results[0].ok and results[0].external_id == existing
    assert results[1].code == "NOT_FOUND"
    assert fake.get("contacts", existing)["firstname"] == "Ann"
    sent = sent_inputs(fake, "update")[0]
    assert "idProperty" not in sent and sent["id"] == existing
    # HubSpot's record id addresses the record; it is never sent as a property.
    assert sent["properties"] == {"firstname": "Ann"}


def test_insert_creates_records_and_reports_their_ids(
    fake: FakeHubSpot, hubspot: HubSpotDestination
) -> None:
    results = hubspot.write_batch(
        "companies",
        "insert",
        "domain",
        [
            Record("acme.example", {"domain": "acme.example", "name": "Acme"}),
            Record(
                "globex.example",
                {"domain": "globex.example", "name": "Globex", "numberofemployees": 250},
            ),
        ],
    )
    assert all(r.ok for r in results)
    acme = fake.find("companies", "domain", "acme.example")
    globex = fake.find("companies", "domain", "globex.example")
    assert acme is not None and globex is not None
    assert [r.external_id for r in results] == [acme["hs_object_id"], globex["hs_object_id"]]
    assert globex["numberofemployees"] == "250"
    assert "idProperty" not in sent_inputs(fake, "create")[0]


def test_insert_pairs_results_by_position_when_the_key_is_not_sent(
    fake: FakeHubSpot, hubspot: HubSpotDestination
) -> None:
    records = [Record("row-1", {"dealname": "First"}), Record("row-2", {"dealname": "Second"})]
    results = hubspot.write_batch("deals", "insert", "external_row", records)
    first = fake.find("deals", "dealname", "First")
    second = fake.find("deals", "dealname", "Second")
    assert [r.external_id for r in results] == [first["hs_object_id"], second["hs_object_id"]]


def test_insert_reports_the_input_hubspot_refused(
    fake: FakeHubSpot, hubspot: HubSpotDestination
) -> None:
    existing = fake.seed("contacts", {"email": "ann@example.com"})
    results = hubspot.write_batch(
        "contacts",
        "insert",
        "email",
        [contact("ann@example.com", firstname="Dup"), contact("cy@example.com", firstname="Cy")],
    )
    assert results[0].code == "DESTINATION_VALIDATION"
    assert f"Contact already exists. Existing ID: {existing}" in results[0].message
    assert (
        results[1].ok
        and results[1].external_id
        == fake.find("contacts", "email", "cy@example.com")["hs_object_id"]
    )
    assert fake.get("contacts", existing).get("firstname") in (None, "")


def test_update_by_email_and_not_found(fake: FakeHubSpot, hubspot: HubSpotDestination) -> None:
    existing = fake.seed("contacts", {"email": "ann@example.com", "firstname": "Ann"})
    results = hubspot.write_batch(
        "contacts",
        "update",
        "email",
        [
            contact("ann@example.com", firstname="Annie"),
            contact("ghost@example.com", firstname="Boo"),
        ],
    )
    assert results[0] == RecordResult.success(external_id=existing)
    assert results[1].code == "NOT_FOUND" and not results[1].retryable
    assert "Could not get some CONTACT objects" in results[1].message
    assert fake.get("contacts", existing)["firstname"] == "Annie"
    assert fake.find("contacts", "email", "ghost@example.com") is None
    assert sent_inputs(fake, "update")[0]["idProperty"] == "email"


def test_update_with_a_key_that_is_not_unique_fails_the_call(hubspot: HubSpotDestination) -> None:
    with pytest.raises(ConnectorError, match="non-unique") as raised:
        hubspot.write_batch("contacts", "update", "firstname", [Record("Ann", {"lastname": "Lee"})])
    assert not isinstance(raised.value, RetryableError)


def test_delete_by_email_resolves_ids_then_archives(
    fake: FakeHubSpot, hubspot: HubSpotDestination
) -> None:
    ann = fake.seed("contacts", {"email": "ann@example.com"})
    bob = fake.seed("contacts", {"email": "bob@example.com"})
    results = hubspot.write_batch(
        "contacts",
        "delete",
        "email",
        [
            Record("ANN@example.com", {"email": "ANN@example.com"}),
            Record("gone@example.com", {"email": "gone@example.com"}),
        ],
    )
    assert [r.ok for r in results] == [True, True]
    assert results[0].external_id == ann
    assert fake.get("contacts", ann) is None
    assert fake.get("contacts", bob) is not None
    read = fake.batch_requests("read")[-1].json()
    assert read["idProperty"] == "email"
    assert sent_inputs(fake, "archive") == [{"id": ann}]


def test_delete_by_record_id_archives_directly(
    fake: FakeHubSpot, hubspot: HubSpotDestination
) -> None:
    ann = fake.seed("contacts", {"email": "ann@example.com"})
    results = hubspot.write_batch(
        "contacts", "delete", "hs_object_id", [Record(ann, {}), Record("424242", {})]
    )
    assert all(r.ok for r in results)
    assert fake.get("contacts", ann) is None
    assert fake.batch_requests("read") == []


def test_delete_of_unknown_keys_only_makes_no_archive_call(
    fake: FakeHubSpot, hubspot: HubSpotDestination
) -> None:
    results = hubspot.write_batch("contacts", "delete", "email", [Record("nobody@example.com", {})])
    assert results == [RecordResult.success()]
    assert fake.batch_requests("archive") == []


def test_empty_batch_makes_no_call(fake: FakeHubSpot, hubspot: HubSpotDestination) -> None:
    assert hubspot.write_batch("contacts", "upsert", "email", []) == []
    assert fake.requests == []


def test_none_clears_a_property(fake: FakeHubSpot, hubspot: HubSpotDestination) -> None:
    existing = fake.seed("contacts", {"email": "ann@example.com", "firstname": "Ann"})
    hubspot.write_batch("contacts", "update", "email", [contact("ann@example.com", firstname=None)])
    assert sent_inputs(fake, "update")[0]["properties"]["firstname"] == ""
    assert fake.get("contacts", existing)["firstname"] == ""


# --- batch size ----------------------------------------------------------------------------


def test_fake_rejects_more_than_100_inputs_like_hubspot(fake: FakeHubSpot) -> None:
    answer = requests.post(
        f"{fake.url}/crm/v3/objects/contacts/batch/upsert",
        json={
            "inputs": [
                {"id": f"p{i}@example.com", "idProperty": "email", "properties": {}}
                for i in range(101)
            ]
        },
        headers={"Authorization": f"Bearer {fake.token}"},
        timeout=10,
    )
    assert answer.status_code == 400
    assert answer.json()["category"] == "VALIDATION_ERROR"
    assert "maximum number of inputs supported in a batch is 100" in answer.json()["message"]
    assert fake.objects("contacts") == []


def test_a_full_batch_of_100_is_accepted(fake: FakeHubSpot, hubspot: HubSpotDestination) -> None:
    records = [contact(f"p{i}@example.com") for i in range(hubspot.batch_size_for("upsert", 250))]
    results = hubspot.write_batch("contacts", "upsert", "email", records)
    assert len(results) == 100 and all(r.ok for r in results)
    assert len(fake.objects("contacts")) == 100


def test_oversize_batch_is_refused_before_sending(
    fake: FakeHubSpot, hubspot: HubSpotDestination
) -> None:
    with pytest.raises(ConnectorError, match="at most 100"):
        hubspot.write_batch(
            "contacts", "upsert", "email", [contact(f"p{i}@example.com") for i in range(101)]
        )
    assert fake.requests == []


def test_hubspots_batch_size_answer_fails_the_call(
    fake: FakeHubSpot, hubspot: HubSpotDestination
) -> None:
    fake.fail_next(
        400,
        {
            "status": "error",
            "message": "The maximum number of inputs supported in a batch is 100. Please reduce the number of items and try again",
            "category": "VALIDATION_ERROR",
        },
    )
    with pytest.raises(ConnectorError, match="maximum number of inputs"):
        hubspot.write_batch("contacts", "upsert", "email", [contact("a@example.com")])


# --- per-record failures -------------------------------------------------------------------


def test_invalid_value_rejects_the_whole_batch_and_names_the_culprit(
    fake: FakeHubSpot, hubspot: HubSpotDestination
) -> None:
    records = [
        contact("ann@example.com", lifetime_value=120.5),
        contact("bob@example.com", lifetime_value="lots"),
        contact("cy@example.com", lifetime_value=3),
    ]
    results = hubspot.write_batch("contacts", "upsert", "email", records)
    assert results[1].code == "DESTINATION_VALIDATION" and not results[1].retryable
    assert (
        "lifetime_value" in results[1].message
        and "lots was not a valid number" in results[1].message
    )
    # HubSpot wrote nothing; the others were only caught in the same batch.
    for bystander in (results[0], results[2]):
        assert bystander.code == "DESTINATION_VALIDATION" and bystander.retryable
        assert "another record" in bystander.message
    assert fake.objects("contacts") == []


def test_unknown_property_fails_every_record_with_hubspots_message(
    fake: FakeHubSpot, hubspot: HubSpotDestination
) -> None:
    records = [contact("ann@example.com", shoe_size=42), contact("bob@example.com", shoe_size=44)]
    results = hubspot.write_batch("contacts", "upsert", "email", records)
    for result in results:
        assert result.code == "DESTINATION_VALIDATION" and not result.retryable
        assert 'shoe_size: Property "shoe_size" does not exist' in result.message
    assert fake.objects("contacts") == []


def test_invalid_option_and_email(hubspot: HubSpotDestination) -> None:
    results = hubspot.write_batch(
        "contacts",
        "insert",
        "email",
        [
            contact("ann@example.com", lifecyclestage="royalty"),
            contact("not-an-email"),
            contact("ok@example.com"),
        ],
    )
    assert (
        results[0].code == "DESTINATION_VALIDATION"
        and "royalty was not one of the allowed options" in results[0].message
    )
    assert (
        results[1].code == "DESTINATION_VALIDATION"
        and "not-an-email is invalid" in results[1].message
    )
    assert results[2].ok


def test_rejected_key_gets_a_207_error_and_the_rest_is_written(
    fake: FakeHubSpot, hubspot: HubSpotDestination
) -> None:
    fake.reject("bob@example.com", "Contact is on the blocklist")
    results = hubspot.write_batch(
        "contacts",
        "upsert",
        "email",
        [contact("ann@example.com"), contact("bob@example.com"), contact("cy@example.com")],
    )
    assert results[0].ok and results[2].ok
    assert results[1].code == "DESTINATION_VALIDATION"
    assert "Contact is on the blocklist" in results[1].message
    assert fake.find("contacts", "email", "bob@example.com") is None
    assert fake.find("contacts", "email", "cy@example.com") is not None


def test_error_without_a_record_applies_to_records_without_result(
    fake: FakeHubSpot, hubspot: HubSpotDestination
) -> None:
    fake.fail_next(
        207,
        {
            "status": "COMPLETE",
            "results": [{"id": "501", "properties": {"email": "ann@example.com"}}],
            "numErrors": 1,
            "errors": [
                {
                    "status": "error",
                    "category": "INTERNAL_ERROR",
                    "message": "Something went wrong",
                    "context": {},
                }
            ],
        },
    )
    results = hubspot.write_batch(
        "contacts", "upsert", "email", [contact("ann@example.com"), contact("bob@example.com")]
    )
    assert results[0] == RecordResult.success(external_id="501")
    assert results[1].code == "UNKNOWN" and "Something went wrong" in results[1].message


def test_record_missing_from_the_answer_is_not_reported_written(
    fake: FakeHubSpot, hubspot: HubSpotDestination
) -> None:
    fake.fail_next(
        200,
        {
            "status": "COMPLETE",
            "results": [{"id": "7", "properties": {"email": "ann@example.com"}}],
        },
    )
    results = hubspot.write_batch(
        "contacts", "update", "email", [contact("ann@example.com"), contact("bob@example.com")]
    )
    assert results[0].ok
    assert not results[1].ok and results[1].code == "UNKNOWN"


def test_rate_limited_record_in_a_207_is_retryable(
    fake: FakeHubSpot, hubspot: HubSpotDestination
) -> None:
    fake.fail_next(
        207,
        {
            "status": "COMPLETE",
            "results": [],
            "errors": [
                {
                    "status": "error",
                    "category": "RATE_LIMITS",
                    "message": "slow down",
                    "context": {"objectWriteTraceId": ["0"]},
                }
            ],
        },
    )
    [result] = hubspot.write_batch("contacts", "upsert", "email", [contact("ann@example.com")])
    assert result.code == "RATE_LIMIT" and result.retryable


# --- whole-call failures -------------------------------------------------------------------


def test_429_with_retry_after(fake: FakeHubSpot, hubspot: HubSpotDestination) -> None:
    fake.fail_next(
        429,
        {
            "status": "error",
            "message": "You have reached your ten_secondly_rolling limit.",
            "errorType": "RATE_LIMIT",
            "policyName": "TEN_SECONDLY_ROLLING",
        },
        headers={"Retry-After": "7"},
    )
    with pytest.raises(RetryableError) as raised:
        hubspot.write_batch("contacts", "upsert", "email", [contact("ann@example.com")])
    assert raised.value.code == "RATE_LIMIT" and raised.value.retry_after == 7
    assert "TEN_SECONDLY_ROLLING" in raised.value.message


def test_429_from_the_ten_secondly_window_waits_one_interval(
    fake: FakeHubSpot, hubspot: HubSpotDestination
) -> None:
    fake.ten_secondly_limit = 1
    hubspot.test()
    with pytest.raises(RetryableError) as raised:
        hubspot.write_batch("contacts", "upsert", "email", [contact("ann@example.com")])
    assert raised.value.code == "RATE_LIMIT" and raised.value.retry_after == 10.0
    assert hubspot.rate_limit_remaining == 0
    fake.reset_window()
    assert hubspot.write_batch("contacts", "upsert", "email", [contact("ann@example.com")])[0].ok


def test_429_daily_limit_waits_long(fake: FakeHubSpot, hubspot: HubSpotDestination) -> None:
    fake.daily_limit = 0
    with pytest.raises(RetryableError) as raised:
        hubspot.write_batch("contacts", "upsert", "email", [contact("ann@example.com")])
    assert raised.value.code == "RATE_LIMIT" and raised.value.retry_after == 3600
    assert "DAILY" in raised.value.message
    assert hubspot.daily_limit_remaining == 0


def test_rate_limit_headers_are_kept(fake: FakeHubSpot, hubspot: HubSpotDestination) -> None:
    assert hubspot.rate_limit_remaining is None
    hubspot.test()
    hubspot.write_batch("contacts", "upsert", "email", [contact("ann@example.com")])
    assert hubspot.rate_limit_remaining == 98
    assert hubspot.daily_limit_remaining == 249_998


@pytest.mark.parametrize("status", [500, 502, 503, 504, 524])
def test_server_errors_are_retryable(
    fake: FakeHubSpot, hubspot: HubSpotDestination, status: int
) -> None:
    fake.fail_next(
        status,
        "<html>upstream trouble</html>",
        headers={"Content-Type": "text/html", "Retry-After": "3"},
    )
    with pytest.raises(RetryableError) as raised:
        hubspot.write_batch("contacts", "upsert", "email", [contact("ann@example.com")])
    assert raised.value.code == "UNKNOWN" and raised.value.retry_after == 3
    assert str(status) in raised.value.message


def test_locked_is_retryable_after_two_seconds(
    fake: FakeHubSpot, hubspot: HubSpotDestination
) -> None:
    fake.fail_next(423, {"status": "error", "message": "Locked", "category": "LOCKED"})
    with pytest.raises(RetryableError) as raised:
        hubspot.write_batch("companies", "upsert", "domain", [Record("a.example", {"name": "A"})])
    assert raised.value.retry_after == 2


def test_unreachable_host_is_retryable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    destination = HubSpotDestination({"accessToken": "t", "baseUrl": f"http://127.0.0.1:{port}"})
    with pytest.raises(RetryableError) as raised:
        destination.write_batch("contacts", "upsert", "email", [contact("ann@example.com")])
    assert raised.value.code == "UNKNOWN"


def test_timeout_is_retryable_with_timeout_code(
    hubspot: HubSpotDestination, monkeypatch: pytest.MonkeyPatch
) -> None:
    def too_slow(*args: Any, **kwargs: Any) -> None:
        raise requests.ReadTimeout("read timed out")

    monkeypatch.setattr(hubspot._session_for_requests(), "request", too_slow)
    with pytest.raises(RetryableError) as raised:
        hubspot.write_batch("contacts", "upsert", "email", [contact("ann@example.com")])
    assert raised.value.code == "TIMEOUT"


def test_timeout_config(fake: FakeHubSpot) -> None:
    assert HubSpotDestination({"accessToken": "t"})._timeout == (10.0, 60.0)
    assert HubSpotDestination({"accessToken": "t", "timeoutSeconds": 5})._timeout == (5.0, 5.0)
    assert HubSpotDestination({"accessToken": "t", "timeoutSeconds": 120})._timeout == (10.0, 120.0)


def test_bad_token_is_an_auth_error(fake: FakeHubSpot) -> None:
    destination = HubSpotDestination({"accessToken": "wrong", "baseUrl": fake.url})
    with pytest.raises(AuthError, match="fix the accessToken") as raised:
        destination.test()
    assert "INVALID_AUTHENTICATION" in raised.value.message
    with pytest.raises(AuthError):
        destination.write_batch("contacts", "upsert", "email", [contact("ann@example.com")])
    assert fake.objects("contacts") == []


def test_missing_scopes_is_an_auth_error(fake: FakeHubSpot, hubspot: HubSpotDestination) -> None:
    fake.fail_next(
        403,
        {
            "status": "error",
            "message": "This app hasn't been granted all required scopes to make this call.",
            "category": "MISSING_SCOPES",
        },
    )
    with pytest.raises(AuthError, match="MISSING_SCOPES"):
        hubspot.write_batch("deals", "upsert", "hs_object_id", [Record("1", {"dealname": "x"})])


def test_test_succeeds_with_a_good_token(fake: FakeHubSpot, hubspot: HubSpotDestination) -> None:
    hubspot.test()
    assert fake.requests[-1].path == "/crm/v3/objects/contacts"
    assert fake.requests[-1].query == {"limit": ["1"]}
    assert fake.requests[-1].headers["authorization"] == f"Bearer {fake.token}"


def test_other_4xx_is_a_connector_error_with_hubspots_message(
    fake: FakeHubSpot, hubspot: HubSpotDestination
) -> None:
    fake.fail_next(
        409, {"status": "error", "message": "Conflict on the whole batch", "category": "CONFLICT"}
    )
    with pytest.raises(ConnectorError, match="Conflict on the whole batch") as raised:
        hubspot.write_batch("contacts", "upsert", "email", [contact("ann@example.com")])
    assert not isinstance(raised.value, RetryableError | AuthError)


def test_unknown_object_fails_the_call(hubspot: HubSpotDestination) -> None:
    with pytest.raises(ConnectorError, match="Unable to infer object type from: spaceships"):
        hubspot.write_batch("spaceships", "upsert", "email", [contact("ann@example.com")])


@pytest.mark.parametrize(
    "body",
    ["<html>not json</html>", {"unexpected": True}, ["a", "list"], ""],
    ids=["html", "object", "list", "empty"],
)
def test_unexpected_body_does_not_crash(
    fake: FakeHubSpot, hubspot: HubSpotDestination, body: Any
) -> None:
    fake.fail_next(200, body)
    results = hubspot.write_batch(
        "contacts", "upsert", "email", [contact("ann@example.com"), contact("bob@example.com")]
    )
    assert [r.code for r in results] == ["UNKNOWN", "UNKNOWN"]
    if body == "<html>not json</html>":
        assert "not json" in results[0].message


def test_unexpected_error_body_does_not_crash(
    fake: FakeHubSpot, hubspot: HubSpotDestination
) -> None:
    fake.fail_next(400, "Bad Request")
    with pytest.raises(ConnectorError, match="Bad Request"):
        hubspot.write_batch("contacts", "upsert", "email", [contact("ann@example.com")])
    fake.fail_next(
        400,
        {
            "status": "error",
            "category": "VALIDATION_ERROR",
            "message": "Property values were not valid: [oops",
        },
    )
    results = hubspot.write_batch("contacts", "upsert", "email", [contact("ann@example.com")])
    assert results[0].code == "DESTINATION_VALIDATION" and "[oops" in results[0].message
    fake.fail_next(207, {"status": "COMPLETE", "results": "nope", "errors": ["just text"]})
    results = hubspot.write_batch("contacts", "upsert", "email", [contact("ann@example.com")])
    assert results[0].code == "UNKNOWN" and "just text" in results[0].message


# --- wire formats --------------------------------------------------------------------------


def field_of(data_type: str) -> DestinationField:
    return DestinationField(name="x", label="X", data_type=data_type)


def test_format_value_dates_datetimes_booleans_numbers(hubspot: HubSpotDestination) -> None:
    assert hubspot.format_value(dt.date(2015, 5, 1), field_of("date")) == "1430438400000"
    moment = dt.datetime(2025, 3, 27, 17, 0, 0, 250_000, tzinfo=dt.UTC)
    assert hubspot.format_value(moment, field_of("datetime")) == "2025-03-27T17:00:00.250Z"
    paris = dt.timezone(dt.timedelta(hours=2))
    assert (
        hubspot.format_value(dt.datetime(2025, 3, 27, 19, 0, tzinfo=paris), field_of("datetime"))
        == "2025-03-27T17:00:00.000Z"
    )
    assert hubspot.format_value(True, field_of("boolean")) == "true"
    assert hubspot.format_value(False, field_of("boolean")) == "false"
    assert (
        hubspot.format_value(1.4210854715202004e-14, field_of("number"))
        == "0.000000000000014210854715202004"
    )
    assert hubspot.format_value(1e21, field_of("number")) == "1000000000000000000000"
    assert hubspot.format_value(decimal.Decimal("12.50"), field_of("number")) == "12.5"
    assert hubspot.format_value(42, field_of("number")) == "42"
    assert hubspot.format_value("text", field_of("string")) == "text"
    assert hubspot.format_value(None, field_of("date")) is None


def test_formatted_values_are_accepted_and_stored(
    fake: FakeHubSpot, hubspot: HubSpotDestination
) -> None:
    fields = {f.name: f for f in hubspot.list_fields("contacts")}
    values = {
        "email": "ann@example.com",
        "renewal_date": dt.date(2026, 1, 31),
        "last_purchase_at": dt.datetime(2025, 3, 27, 17, 0, tzinfo=dt.UTC),
        "is_vip": True,
        "lifetime_value": 1e-7,
    }
    wire = {name: hubspot.format_value(value, fields[name]) for name, value in values.items()}
    [result] = hubspot.write_batch("contacts", "upsert", "email", [Record("ann@example.com", wire)])
    assert result.ok
    stored = fake.find("contacts", "email", "ann@example.com")
    assert stored["renewal_date"] == "2026-01-31"
    assert stored["last_purchase_at"] == "2025-03-27T17:00:00.000Z"
    assert stored["is_vip"] == "true"
    assert stored["lifetime_value"] == "0.0000001"


def test_fake_refuses_a_date_that_is_not_midnight_utc(
    fake: FakeHubSpot, hubspot: HubSpotDestination
) -> None:
    [result] = hubspot.write_batch(
        "contacts", "upsert", "email", [contact("ann@example.com", renewal_date="1430438400001")]
    )
    assert result.code == "DESTINATION_VALIDATION" and "not midnight" in result.message


def test_request_bodies_are_json_with_string_keys(
    fake: FakeHubSpot, hubspot: HubSpotDestination
) -> None:
    hubspot.write_batch(
        "contacts", "upsert", "email", [contact("ann@example.com", firstname="Ann")]
    )
    request = fake.batch_requests("upsert")[-1]
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.body) == {
        "inputs": [
            {
                "id": "ann@example.com",
                "idProperty": "email",
                "properties": {"email": "ann@example.com", "firstname": "Ann"},
                "objectWriteTraceId": "0",
            }
        ]
    }
