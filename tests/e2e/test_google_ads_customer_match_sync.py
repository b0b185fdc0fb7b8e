"""Syncs from a Postgres table to a Google Ads Customer Match list through the engine, against
the fake Google Ads API: who is in the list after each run, the jobs each run made, what the
API shows a user, and that no raw email, name or phone ever left the worker."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from connectors import pii
from tests.e2e.conftest import (
    destination_status,
    dlq_entries,
    make_sync,
    run_with_faults_on_writes,
    seed,
)
from tests.engine.conftest import EngineDriver, SyncSetup, Warehouse
from tests.fakes.google_ads import FakeGoogleAds, quota_exhausted

CUSTOMER = "1234567890"
LIST = f"customers/{CUSTOMER}/userLists/555"
# The key is the email hashed in the warehouse (Customer Match's normalization: trimmed and
# lower-cased), so retl's records, the DLQ and mirror's removals hold a hash, never an email;
# retl sends a 64-hex value as it is.
QUERY = (
    "SELECT id, encode(sha256(convert_to(lower(trim(email)), 'UTF8')), 'hex') AS email_sha256,"
    " name, phone, crm_id FROM warehouse.people"
)
MAPPINGS = [
    {"source": "email_sha256", "destination": "hashedEmail", "key": True},
    {"source": "phone", "destination": "hashedPhoneNumber"},
    {"source": "crm_id", "destination": "thirdPartyUserId"},
]


@pytest.fixture
def google() -> Iterator[FakeGoogleAds]:
    with FakeGoogleAds(customer_id=CUSTOMER, job_polls=1) as fake:
        fake.add_user_list("555", "Lapsed buyers")
        yield fake


@pytest.fixture
def customers(people: Warehouse) -> Warehouse:
    people.execute("ALTER TABLE warehouse.people ADD COLUMN phone text, ADD COLUMN crm_id text")
    return people


def _seed(table: Warehouse, count: int) -> None:
    seed(table, count)
    table.execute("UPDATE warehouse.people SET phone = '+1 (212) 555-' || lpad(id::text, 4, '0')")


def _email(i: int) -> str:
    return pii.sha256_hex(f"user{i}@example.com")


def _sync(account: Any, table: Warehouse, google: FakeGoogleAds, *, mode: str = "upsert",
          **config: Any) -> SyncSetup:
    settings = {
        "customerId": CUSTOMER, "developerToken": "dev-token", "clientId": "client-id",
        "clientSecret": "client-secret", "refreshToken": "refresh-token",
        "baseUrl": google.url, "tokenUrl": google.token_url, "rateLimitPerSecond": 1000,
        "consentAdUserData": "GRANTED", "consentAdPersonalization": "GRANTED", **config,
    }
    return make_sync(account, table, "google_ads_customer_match", settings, object_name=LIST,
                     mappings=MAPPINGS, mode=mode, query=QUERY)


def _assert_no_raw_pii(google: FakeGoogleAds, *texts: str, count: int) -> None:
    raw = [f"user{i}@example.com" for i in range(1, count + 1)]
    raw += [f"555-{i:04d}" for i in range(1, count + 1)] + ["User "]
    sent = [f"{r.path}?{r.query} {r.body.decode()}" for r in google.requests]
    for value in raw:
        for text in [*sent, *texts]:
            assert value.lower() not in text.lower(), f"{value!r} left the worker"


def test_upsert_then_mirror_removal_each_run_as_one_followed_job(
    driver: EngineDriver, account: Any, customers: Warehouse, google: FakeGoogleAds,
    client: FlaskClient, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    _seed(customers, 5)
    setup = _sync(account, customers, google, mode="mirror")
    run = driver.run(setup)
    assert run.status == "succeeded", run.error
    assert (run.rows_added, run.rows_written, run.rows_failed) == (5, 5, 0)
    assert google.members(LIST, "hashedEmail") == {_email(i) for i in range(1, 6)}
    assert pii.sha256_hex("+12125550003") in google.members(LIST, "hashedPhoneNumber")
    (job,) = google.jobs.values()
    assert job.status == "SUCCESS"
    assert job.consent == {"adUserData": "GRANTED", "adPersonalization": "GRANTED"}

    customers.execute("DELETE FROM warehouse.people WHERE id IN (4, 5)")
    run = driver.run(setup)
    assert run.status == "succeeded" and run.rows_removed == 2
    assert google.members(LIST, "hashedEmail") == {_email(i) for i in range(1, 4)}
    removal = list(google.jobs.values())[-1]
    assert removal.status == "SUCCESS"
    assert sorted(op["remove"]["userIdentifiers"][0]["hashedEmail"]
                  for op in removal.operations) == sorted([_email(4), _email(5)])
    _assert_no_raw_pii(google, caplog.text, count=5)
    assert destination_status(client, account.key, setup)["status"] == "connected"


def test_a_job_that_runs_long_is_followed_across_retries_without_uploading_twice(
    driver: EngineDriver, account: Any, customers: Warehouse, google: FakeGoogleAds,
) -> None:
    google.job_polls = 3
    _seed(customers, 3)
    setup = _sync(account, customers, google, jobWaitSeconds=0, jobRetrySeconds=1)
    run = driver.run(setup)
    assert run.status == "succeeded", run.error
    assert run.rows_written == 3
    assert len(google.jobs) == 1
    assert len([r for r in google.requests if r.path.endswith(":addOperations")]) == 1
    assert google.members(LIST, "hashedEmail") == {_email(i) for i in range(1, 4)}


def test_quota_exhaustion_is_retried_until_everyone_is_added(
    driver: EngineDriver, account: Any, customers: Warehouse, google: FakeGoogleAds,
    client: FlaskClient,
) -> None:
    _seed(customers, 4)
    setup = _sync(account, customers, google)
    run = run_with_faults_on_writes(driver, setup, google, 429, quota_exhausted(1), None, 2)
    assert run.status == "succeeded" and run.rows_written == 4
    assert google.members(LIST, "hashedEmail") == {_email(i) for i in range(1, 5)}
    assert dlq_entries(client, account.key, setup) == {}


def test_operations_google_refuses_land_in_the_dlq_by_record(
    driver: EngineDriver, account: Any, customers: Warehouse, google: FakeGoogleAds,
    client: FlaskClient, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    _seed(customers, 5)
    # A CRM id on a contact-info list: Google refuses those operations, and only those.
    customers.execute("UPDATE warehouse.people SET crm_id = 'crm-' || id WHERE id IN (2, 4)")
    customers.execute("UPDATE warehouse.people SET phone = '212 555 0005' WHERE id = 5")
    setup = _sync(account, customers, google)
    run = driver.run(setup)
    assert run.status == "succeeded"
    assert (run.rows_written, run.rows_failed) == (2, 3)
    assert google.members(LIST, "hashedEmail") == {_email(1), _email(3)}
    entries = dlq_entries(client, account.key, setup)
    assert sorted(entries) == sorted([_email(2), _email(4), _email(5)])
    assert entries[_email(2)]["error_code"] == "DESTINATION_VALIDATION"
    assert entries[_email(2)]["message"] == (
        "INCOMPATIBLE_UPLOAD_KEY_TYPE: Upload data is not compatible with the upload key type"
        " of the list."
    )
    assert entries[_email(5)]["error_code"] == "MAPPING"
    assert "country code" in entries[_email(5)]["message"]
    dlq_text = json.dumps(entries)
    assert "212 555 0005" not in dlq_text
    _assert_no_raw_pii(google, caplog.text, dlq_text, count=4)


def test_a_revoked_refresh_token_fails_the_run_and_marks_the_destination(
    driver: EngineDriver, account: Any, customers: Warehouse, google: FakeGoogleAds,
    client: FlaskClient,
) -> None:
    _seed(customers, 3)
    setup = _sync(account, customers, google, refreshToken="revoked")
    run = driver.run(setup)
    assert run.status == "failed"
    assert "invalid_grant" in (run.error or "")
    assert google.jobs == {}
    assert destination_status(client, account.key, setup)["status"] == "auth_failed"


def test_a_failed_job_fails_the_run_with_googles_reason(
    driver: EngineDriver, account: Any, customers: Warehouse, google: FakeGoogleAds,
) -> None:
    google.fail_jobs_with = "PROCESSING_ERROR"
    _seed(customers, 2)
    run = driver.run(_sync(account, customers, google))
    assert run.status == "failed"
    assert "failed: PROCESSING_ERROR" in (run.error or "")
