"""The Google Ads Customer Match destination against a fake Google Ads API on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from connectors import pii
from connectors.destinations.base import Record
from connectors.destinations.google_ads_customer_match import GoogleAdsCustomerMatchDestination
from connectors.errors import AuthError, ConnectorError, RetryableError, UnsupportedMode
from connectors.registry import destination_class
from tests.fakes.google_ads import FakeGoogleAds, ads_error, quota_exhausted
from worker.mapping import RecordBuilder, RecordMappingError, plan_for

CUSTOMER = "1234567890"
LIST = f"customers/{CUSTOMER}/userLists/555"
JANE = pii.sha256_hex("jane@example.com")


@pytest.fixture
def google() -> Iterator[FakeGoogleAds]:
    with FakeGoogleAds(customer_id=CUSTOMER, job_polls=1) as fake:
        fake.add_user_list("555", "High value customers")
        yield fake


def make(fake: FakeGoogleAds, **config: Any) -> GoogleAdsCustomerMatchDestination:
    return GoogleAdsCustomerMatchDestination({
        "customerId": "123-456-7890", "developerToken": "dev-token", "clientId": "client-id",
        "clientSecret": "client-secret", "refreshToken": "refresh-token",
        "baseUrl": fake.url, "tokenUrl": fake.token_url, "jobWaitSeconds": 30, **config,
    })


def person(key: str, **fields: Any) -> Record:
    return Record(key, fields)


def _calls(fake: FakeGoogleAds, suffix: str) -> list[Any]:
    return [r for r in fake.requests if r.path.endswith(suffix)]


def test_registered_and_declared() -> None:
    assert destination_class("google_ads_customer_match") is GoogleAdsCustomerMatchDestination
    assert GoogleAdsCustomerMatchDestination.secret_fields() == (
        "developerToken", "clientSecret", "refreshToken",
    )
    assert GoogleAdsCustomerMatchDestination.supported_modes == {"upsert", "delete", "mirror"}
    assert GoogleAdsCustomerMatchDestination.max_concurrency == 1
    with pytest.raises(ConnectorError, match="refreshToken"):
        GoogleAdsCustomerMatchDestination({"customerId": "1", "developerToken": "d",
                                           "clientId": "c", "clientSecret": "s"})
    with pytest.raises(ConnectorError, match="consentAdUserData"):
        GoogleAdsCustomerMatchDestination({"customerId": "1", "developerToken": "d",
                                           "clientId": "c", "clientSecret": "s",
                                           "refreshToken": "r", "consentAdUserData": "YES"})


def test_discovery_lists_crm_based_user_lists_and_the_identifier_fields(
    google: FakeGoogleAds,
) -> None:
    google.add_user_list("556", "Read only", read_only=True, upload_key_type="CRM_ID")
    destination = make(google)
    destination.test()
    objects = {o.api_name: o for o in destination.list_objects()}
    assert objects[LIST].label == "High value customers (CONTACT_INFO)"
    assert not objects[f"customers/{CUSTOMER}/userLists/556"].writable
    fields = {f.name: f for f in destination.list_fields(LIST)}
    assert set(fields) == {
        "hashedEmail", "hashedPhoneNumber", "addressInfo.hashedFirstName",
        "addressInfo.hashedLastName", "addressInfo.countryCode", "addressInfo.postalCode",
        "mobileId", "thirdPartyUserId",
    }
    assert fields["hashedEmail"].external_id
    search = _calls(google, "googleAds:search")[0]
    assert search.path == f"/v21/customers/{CUSTOMER}/googleAds:search"
    assert search.headers["developer-token"] == "dev-token"
    assert search.headers["authorization"].startswith("Bearer ya29.")
    assert "login-customer-id" not in search.headers
    assert len(google.tokens_issued) == 1  # the access token is kept while it is valid


def test_upsert_runs_one_job_with_hashed_identifiers_and_follows_it_to_success(
    google: FakeGoogleAds,
) -> None:
    destination = make(google, consentAdUserData="GRANTED", consentAdPersonalization="denied")
    records = [
        person("1", hashedEmail=" Jane@Example.com", hashedPhoneNumber="+1 212 565 0000"),
        person("2", **{"addressInfo.hashedFirstName": "John", "addressInfo.hashedLastName":
                       "Doe", "addressInfo.countryCode": "us",
                       "addressInfo.postalCode": "10011"}),
    ]
    results = destination.write_batch(LIST, "upsert", "hashedEmail", records)
    assert all(r.ok for r in results)
    (job,) = google.jobs.values()
    assert job.status == "SUCCESS"
    assert job.consent == {"adUserData": "GRANTED", "adPersonalization": "DENIED"}
    assert job.operations == [
        {"create": {"userIdentifiers": [{"hashedEmail": JANE},
                                        {"hashedPhoneNumber": pii.sha256_hex("+12125650000")}]}},
        {"create": {"userIdentifiers": [{"addressInfo": {
            "hashedFirstName": pii.sha256_hex("john"), "hashedLastName": pii.sha256_hex("doe"),
            "countryCode": "US", "postalCode": "10011"}}]}},
    ]
    assert google.members(LIST, "hashedEmail") == {JANE}
    add = _calls(google, ":addOperations")[0]
    assert add.json()["enablePartialFailure"] is True
    assert b"jane@example.com" not in add.body.lower()


def test_delete_removes_people_in_a_job_of_remove_operations(google: FakeGoogleAds) -> None:
    destination = make(google)
    destination.write_batch(LIST, "upsert", "hashedEmail", [
        person(str(i), hashedEmail=f"p{i}@example.com") for i in range(3)
    ])
    results = destination.write_batch(LIST, "delete", "hashedEmail",
                                      [person("p1", hashedEmail="p1@example.com")])
    assert results[0].ok
    assert google.members(LIST, "hashedEmail") == {
        pii.sha256_hex("p0@example.com"), pii.sha256_hex("p2@example.com"),
    }
    last_job = list(google.jobs.values())[-1]
    assert [next(iter(op)) for op in last_job.operations] == ["remove"]
    with pytest.raises(UnsupportedMode):
        destination.write_batch(LIST, "insert", "hashedEmail", [])


def test_operations_go_in_requests_within_the_documented_limit(google: FakeGoogleAds) -> None:
    destination = make(google, batchSize=25_000)
    records = [person(str(i), hashedEmail=f"user{i}@example.com") for i in range(25_000)]
    results = destination.write_batch(LIST, "upsert", "hashedEmail", records)
    assert all(r.ok for r in results)
    assert [len(r.json()["operations"]) for r in _calls(google, ":addOperations")] == [
        10_000, 10_000, 5_000,
    ]
    assert len(google.jobs) == 1 and len(google.user_lists[LIST].members) == 25_000


def test_partial_failures_are_mapped_to_their_records(google: FakeGoogleAds) -> None:
    destination = make(google)
    records = [
        person("1", hashedEmail="a@example.com"),
        person("2", hashedEmail="b@example.com", mobileId="AECE52E7-03EE-455A-B3C4-E57283966239"),
        person("3", hashedPhoneNumber="212 565 0000"),  # no country code: refused by retl
        person("4", **{"addressInfo.hashedFirstName": "Jane"}),
        person("5", hashedEmail="c@example.com"),
    ]
    results = destination.write_batch(LIST, "upsert", "hashedEmail", records)
    assert [r.ok for r in results] == [True, False, False, False, True]
    assert (results[1].code, results[1].message) == (
        "DESTINATION_VALIDATION",
        "INCOMPATIBLE_UPLOAD_KEY_TYPE: Upload data is not compatible with the upload key type"
        " of the list.",
    )
    assert results[2].code == "MAPPING" and "country code" in (results[2].message or "")
    assert "address needs" in (results[3].message or "")
    assert google.members(LIST, "hashedEmail") == {
        pii.sha256_hex("a@example.com"), pii.sha256_hex("c@example.com"),
    }


def test_the_fake_refuses_a_raw_email_as_google_does(google: FakeGoogleAds) -> None:
    destination = make(google)
    created = destination._call(f"customers/{CUSTOMER}/offlineUserDataJobs:create", {
        "job": {"type": "CUSTOMER_MATCH_USER_LIST",
                "customerMatchUserListMetadata": {"userList": LIST}}})
    with pytest.raises(ConnectorError, match="INVALID_SHA256_FORMAT"):
        destination._call(f"{created['resourceName']}:addOperations", {
            "operations": [{"create": {"userIdentifiers": [{"hashedEmail": "jane@example.com"}]}}]
        })


def test_a_job_still_running_is_retried_later_and_the_retry_follows_the_same_job(
    google: FakeGoogleAds,
) -> None:
    google.job_polls = 3
    destination = make(google, jobWaitSeconds=0, jobRetrySeconds=7)
    records = [person("1", hashedEmail="a@example.com")]
    with pytest.raises(RetryableError) as caught:
        destination.write_batch(LIST, "upsert", "hashedEmail", records)
    assert caught.value.retry_after == 7.0 and caught.value.code == "TIMEOUT"
    assert "is still RUNNING" in caught.value.message
    for _ in range(2):
        with pytest.raises(RetryableError):
            destination.write_batch(LIST, "upsert", "hashedEmail", records)
    assert destination.write_batch(LIST, "upsert", "hashedEmail", records)[0].ok
    assert len(google.jobs) == 1 and len(_calls(google, ":run")) == 1
    assert google.members(LIST, "hashedEmail") == {pii.sha256_hex("a@example.com")}


def test_a_failed_job_fails_the_batch_with_googles_reason(google: FakeGoogleAds) -> None:
    google.fail_jobs_with = "PROCESSING_ERROR"
    destination = make(google)
    with pytest.raises(ConnectorError, match="failed: PROCESSING_ERROR") as caught:
        destination.write_batch(LIST, "upsert", "hashedEmail", [person("1", hashedEmail="a@b.co")])
    assert not isinstance(caught.value, RetryableError)


def test_quota_exhaustion_is_retryable_after_googles_advised_delay(google: FakeGoogleAds) -> None:
    destination = make(google)
    destination.test()
    google.fail_next(429, quota_exhausted(retry_seconds=4))
    with pytest.raises(RetryableError) as caught:
        destination.write_batch(LIST, "upsert", "hashedEmail", [person("1", hashedEmail="a@b.co")])
    assert caught.value.code == "RATE_LIMIT" and caught.value.retry_after == 4.0
    google.fail_next(503, ads_error(503, "UNAVAILABLE", "internalError", "TRANSIENT_ERROR",
                                    "The service is currently unavailable."))
    with pytest.raises(RetryableError):
        destination.write_batch(LIST, "upsert", "hashedEmail", [person("1", hashedEmail="a@b.co")])


def test_credentials_google_refuses_are_auth_errors(google: FakeGoogleAds) -> None:
    with pytest.raises(AuthError, match="invalid_grant"):
        make(google, refreshToken="revoked").test()
    with pytest.raises(AuthError, match="invalid_client"):
        make(google, clientSecret="wrong").test()
    with pytest.raises(AuthError, match="DEVELOPER_TOKEN_INVALID"):
        make(google, developerToken="wrong").test()
    with pytest.raises(AuthError, match="USER_PERMISSION_DENIED"):
        make(google, loginCustomerId="111-111-1111").test()


def test_an_expired_access_token_is_renewed_once(google: FakeGoogleAds) -> None:
    destination = make(google)
    destination.test()
    google.revoke_tokens()
    destination.test()
    assert len(google.tokens_issued) == 2


def test_a_list_reached_through_a_manager_needs_login_customer_id(
    google: FakeGoogleAds,
) -> None:
    google.add_user_list("777", "Managed", needs_manager=True)
    managed = f"customers/{CUSTOMER}/userLists/777"
    with pytest.raises(ConnectorError) as caught:
        make(google).write_batch(managed, "upsert", "hashedEmail",
                                 [person("1", hashedEmail="a@b.co")])
    assert caught.value.code == "NOT_FOUND" and "INVALID_USER_LIST_ID" in caught.value.message
    destination = make(google, loginCustomerId="999-999-9999")
    assert destination.write_batch(managed, "upsert", "hashedEmail",
                                   [person("1", hashedEmail="a@b.co")])[0].ok
    assert _calls(google, ":addOperations")[-1].headers["login-customer-id"] == "9999999999"
    with pytest.raises(ConnectorError, match="not a user list of customer"):
        destination.write_batch("customers/1/userLists/2", "upsert", "hashedEmail", [])


def test_the_record_the_planner_maps_already_holds_the_hashes(google: FakeGoogleAds) -> None:
    """What a batch stores and a preview shows is the mapped record: hashed, never raw."""
    destination = make(google)
    mappings = [{"source": "email", "destination": "hashedEmail", "key": True},
                {"source": "phone", "destination": "hashedPhoneNumber"}]
    plan = plan_for(mappings, ["email", "phone"], object_name=LIST, mode="upsert")
    fields = {f.name: f for f in destination.list_fields(LIST)}
    builder = RecordBuilder(plan, destination, fields)
    assert builder.build(("k", "Jane@Example.com", "+1 212 565 0000")) == {
        "hashedEmail": JANE, "hashedPhoneNumber": pii.sha256_hex("+12125650000"),
    }
    with pytest.raises(RecordMappingError, match="country code") as caught:
        builder.build(("k", "jane@example.com", "212 565 0000"))
    assert "565" not in str(caught.value)
