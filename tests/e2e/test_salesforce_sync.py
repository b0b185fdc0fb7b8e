"""Syncs from a Postgres table to Salesforce through the engine, against the fake org: what the
org holds after each run, what each request carried, and what the API shows a user (run
counts, DLQ entries, the destination's status, discovery)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

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
from tests.fakes.salesforce import COLLECTION_LIMIT, FakeSalesforce

UPSERT_PATH = "/services/data/v62.0/composite/sobjects/Account/External_Id__c"

MAPPINGS = [
    {"source": "id", "destination": "External_Id__c", "key": True},
    {"source": "name", "destination": "Name"},
    {"source": "score", "destination": "AnnualRevenue"},
    {"source": "active", "destination": "Active__c"},
    {"source": "last_seen_at", "destination": "Last_Activity__c"},
    {"source": "born_on", "destination": "Founded__c"},
]


@pytest.fixture
def org() -> Iterator[FakeSalesforce]:
    with FakeSalesforce() as fake:
        yield fake  # type: ignore[misc]


def _sync(account: Any, people: Warehouse, org: FakeSalesforce, *, mode: str = "upsert",
          **config: Any) -> SyncSetup:
    settings = {"instanceUrl": org.url, "accessToken": org.access_token,
                "rateLimitPerSecond": 1000, **config}
    return make_sync(account, people, "salesforce", settings, object_name="Account",
                     mappings=MAPPINGS, mode=mode)


def _accounts(org: FakeSalesforce) -> dict[str, dict[str, Any]]:
    return {a["External_Id__c"]: a for a in org.records("Account")}


def _sent(org: FakeSalesforce, method: str = "PATCH", path: str = UPSERT_PATH) -> list[list[dict]]:
    """The records of each write request, in order."""
    return [r.json()["records"] for r in org.requests if r.method == method and r.path == path]


def _sent_keys(org: FakeSalesforce) -> list[str]:
    return sorted((r["External_Id__c"] for batch in _sent(org) for r in batch), key=int)


def test_first_run_upserts_every_row_with_salesforce_typed_values_200_at_a_time(
    driver: EngineDriver, account: Any, people: Warehouse, org: FakeSalesforce,
    client: FlaskClient,
) -> None:
    seed(people, 450)
    setup = _sync(account, people, org)
    run = driver.run(setup)
    assert run.status == "succeeded", run.error
    assert (run.rows_read, run.rows_added, run.rows_written, run.rows_failed) == (450, 450, 450, 0)
    accounts = _accounts(org)
    assert len(accounts) == 450
    assert {k: accounts["2"][k] for k in ("Name", "AnnualRevenue", "Active__c",
                                          "Last_Activity__c", "Founded__c")} == {
        "Name": "User 2", "AnnualRevenue": 3.0, "Active__c": True,
        "Last_Activity__c": "2025-03-27T17:02:00.000Z", "Founded__c": "1990-01-03",
    }
    assert accounts["3"]["Active__c"] is False and accounts["3"]["AnnualRevenue"] == 4.5
    batches = _sent(org)
    assert sorted(len(b) for b in batches) == [50, COLLECTION_LIMIT, COLLECTION_LIMIT]
    wire = next(r for b in batches for r in b if r["External_Id__c"] == "7")
    assert wire == {
        "attributes": {"type": "Account"}, "External_Id__c": "7", "Name": "User 7",
        "AnnualRevenue": 10.5, "Active__c": False,
        "Last_Activity__c": "2025-03-27T17:07:00.000Z", "Founded__c": "1990-01-08",
    }
    assert destination_status(client, account.key, setup)["status"] == "connected"


def test_second_run_sends_only_the_changed_rows(
    driver: EngineDriver, account: Any, people: Warehouse, org: FakeSalesforce
) -> None:
    seed(people, 6)
    setup = _sync(account, people, org)
    driver.run(setup)
    org.requests.clear()
    people.execute("UPDATE warehouse.people SET name = 'Renamed', active = true WHERE id IN (3, 5)")
    run = driver.run(setup)
    assert run.status == "succeeded"
    assert (run.rows_changed, run.rows_unchanged, run.rows_written) == (2, 4, 2)
    assert _sent_keys(org) == ["3", "5"]
    accounts = _accounts(org)
    assert accounts["5"]["Name"] == "Renamed" and accounts["5"]["Active__c"] is True
    assert accounts["4"]["Name"] == "User 4" and len(accounts) == 6


def test_insert_creates_only_rows_new_to_the_source(
    driver: EngineDriver, account: Any, people: Warehouse, org: FakeSalesforce
) -> None:
    seed(people, 3)
    setup = _sync(account, people, org, mode="insert")
    assert driver.run(setup).rows_written == 3
    people.execute("UPDATE warehouse.people SET name = 'Changed' WHERE id = 1")
    seed(people, 2, start=4)
    org.requests.clear()
    run = driver.run(setup)
    assert run.status == "succeeded" and run.rows_written == 2
    inserted = _sent(org, "POST", "/services/data/v62.0/composite/sobjects")
    assert sorted(r["External_Id__c"] for b in inserted for r in b) == ["4", "5"]
    accounts = _accounts(org)
    assert sorted(accounts, key=int) == ["1", "2", "3", "4", "5"]
    assert accounts["1"]["Name"] == "User 1"


def test_update_changes_existing_accounts_and_a_missing_one_is_not_found_in_the_dlq(
    driver: EngineDriver, account: Any, people: Warehouse, org: FakeSalesforce,
    client: FlaskClient,
) -> None:
    org.add("Account", Name="Old 1", External_Id__c="1")
    org.add("Account", Name="Old 2", External_Id__c="2")
    seed(people, 3)
    setup = _sync(account, people, org, mode="update")
    run = driver.run(setup)
    assert run.status == "succeeded"
    assert (run.rows_written, run.rows_failed) == (2, 1)
    accounts = _accounts(org)
    assert sorted(accounts) == ["1", "2"]
    assert accounts["2"]["Name"] == "User 2" and accounts["2"]["Founded__c"] == "1990-01-03"
    entries = dlq_entries(client, account.key, setup)
    assert list(entries) == ["3"]
    assert entries["3"]["error_code"] == "NOT_FOUND"
    assert "3" in entries["3"]["message"]


def test_delete_removes_the_accounts_of_the_result(
    driver: EngineDriver, account: Any, people: Warehouse, org: FakeSalesforce
) -> None:
    for key in ("1", "2", "3", "9"):
        org.add("Account", Name=f"Account {key}", External_Id__c=key)
    seed(people, 3)
    setup = _sync(account, people, org, mode="delete")
    run = driver.run(setup)
    assert run.status == "succeeded" and run.rows_written == 3
    assert sorted(_accounts(org)) == ["9"]
    deletes = [r for r in org.requests if r.method == "DELETE"]
    assert deletes and all(len(r.query["ids"][0].split(",")) <= COLLECTION_LIMIT for r in deletes)


def test_mirror_deletes_accounts_whose_rows_left_the_source(
    driver: EngineDriver, account: Any, people: Warehouse, org: FakeSalesforce
) -> None:
    seed(people, 5)
    setup = _sync(account, people, org, mode="mirror")
    driver.run(setup)
    people.execute("DELETE FROM warehouse.people WHERE id IN (2, 4)")
    people.execute("UPDATE warehouse.people SET name = 'Kept' WHERE id = 5")
    run = driver.run(setup)
    assert run.status == "succeeded"
    assert (run.rows_removed, run.rows_changed) == (2, 1)
    accounts = _accounts(org)
    assert sorted(accounts, key=int) == ["1", "3", "5"]
    assert accounts["5"]["Name"] == "Kept"



def test_429_with_retry_after_is_retried_until_the_accounts_are_written(
    driver: EngineDriver, account: Any, people: Warehouse, org: FakeSalesforce,
    client: FlaskClient,
) -> None:
    seed(people, 5)
    setup = _sync(account, people, org)
    limited = [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
    run = run_with_faults_on_writes(driver, setup, org, 429, limited, {"Retry-After": "3"}, 2)
    assert run.status == "succeeded" and run.rows_written == 5
    assert len(_accounts(org)) == 5
    assert len(_sent(org)) == 3  # two refused, one accepted
    assert dlq_entries(client, account.key, setup) == {}


def test_a_storm_of_5xx_is_retried_until_the_accounts_are_written(
    driver: EngineDriver, account: Any, people: Warehouse, org: FakeSalesforce,
    client: FlaskClient,
) -> None:
    seed(people, 5)
    setup = _sync(account, people, org)
    down = [{"message": "Service Unavailable", "errorCode": "SERVER_UNAVAILABLE"}]
    run = run_with_faults_on_writes(driver, setup, org, 503, down, None, 4)
    assert run.status == "succeeded" and run.rows_written == 5
    assert len(_accounts(org)) == 5
    assert dlq_entries(client, account.key, setup) == {}


def test_rejected_records_land_in_the_dlq_with_salesforce_message_and_resolve_once_accepted(
    driver: EngineDriver, account: Any, people: Warehouse, org: FakeSalesforce,
    client: FlaskClient,
) -> None:
    org.reject("2", "FIELD_CUSTOM_VALIDATION_EXCEPTION", "Revenue must be positive",
               ("AnnualRevenue",))
    org.reject("4", "DUPLICATE_VALUE", "duplicate value found: Name")
    seed(people, 5)
    setup = _sync(account, people, org)
    run = driver.run(setup)
    assert run.status == "succeeded"
    assert (run.rows_written, run.rows_failed) == (3, 2)
    assert sorted(_accounts(org), key=int) == ["1", "3", "5"]
    entries = dlq_entries(client, account.key, setup)
    assert sorted(entries) == ["2", "4"]
    assert entries["2"]["error_code"] == "DESTINATION_VALIDATION"
    assert entries["2"]["message"] == (
        "FIELD_CUSTOM_VALIDATION_EXCEPTION: Revenue must be positive (fields: AnnualRevenue)"
    )
    assert entries["4"]["message"] == "DUPLICATE_VALUE: duplicate value found: Name"

    org.clear_rejections()
    org.requests.clear()
    run = driver.run(setup)
    assert run.status == "succeeded" and run.rows_written == 2
    assert _sent_keys(org) == ["2", "4"]
    assert sorted(_accounts(org), key=int) == ["1", "2", "3", "4", "5"]
    assert dlq_entries(client, account.key, setup) == {}
    assert resolutions(client, account.key, setup) == {"2": "auto_resolved", "4": "auto_resolved"}


def test_a_rejected_access_token_fails_the_run_and_marks_the_destination(
    driver: EngineDriver, account: Any, people: Warehouse, org: FakeSalesforce,
    client: FlaskClient,
) -> None:
    seed(people, 3)
    setup = _sync(account, people, org, accessToken="00Dfake!revoked")
    run = driver.run(setup)
    assert run.status == "failed"
    assert "fix the destination's credentials" in (run.error or "")
    assert "INVALID_SESSION_ID" in (run.error or "")
    assert org.records("Account") == []
    assert destination_status(client, account.key, setup)["status"] == "auth_failed"


def test_discovery_answers_the_org_objects_and_account_fields(
    account: Any, people: Warehouse, org: FakeSalesforce, client: FlaskClient
) -> None:
    setup = _sync(account, people, org)
    objects = discovered_objects(client, account.key, setup)
    assert set(objects) == {"Account", "Contact", "AccountHistory"}
    assert objects["Account"]["writable"] and objects["Account"]["supports_upsert"]
    assert not objects["AccountHistory"]["writable"]
    fields = discovered_fields(client, account.key, setup, "Account")
    assert fields["External_Id__c"]["external_id"] is True
    assert fields["Name"]["required"] is True and fields["Name"]["label"] == "Account Name"
    assert {name: fields[name]["data_type"] for name in (
        "AnnualRevenue", "NumberOfEmployees", "Active__c", "Last_Activity__c", "Founded__c",
    )} == {
        "AnnualRevenue": "number", "NumberOfEmployees": "integer", "Active__c": "boolean",
        "Last_Activity__c": "datetime", "Founded__c": "date",
    }
    assert fields["CreatedDate"]["updateable"] is False


def test_a_run_larger_than_the_bulk_threshold_writes_through_an_ingest_job(
    driver: EngineDriver, account: Any, people: Warehouse, org: FakeSalesforce
) -> None:
    seed(people, 250)  # one batch of 250: more than a collection takes
    setup = _sync(account, people, org, bulkThreshold=100, bulkPollIntervalSeconds=0)
    run = driver.run(setup)
    assert run.status == "succeeded", run.error
    assert (run.rows_written, run.rows_failed) == (250, 0)
    assert [job.operation for job in org.jobs.values()] == ["upsert"]
    assert _sent(org) == []
    accounts = _accounts(org)
    assert len(accounts) == 250
    assert accounts["8"]["Active__c"] is True and accounts["8"]["AnnualRevenue"] == 12.0
    assert accounts["8"]["Last_Activity__c"].startswith("2025-03-27T17:08:00")



def test_a_429_on_field_discovery_still_sends_salesforce_typed_values(
    driver: EngineDriver, account: Any, people: Warehouse, org: FakeSalesforce
) -> None:
    seed(people, 3)
    setup = _sync(account, people, org)
    limited = [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
    org.fail_next(429, limited, {"Retry-After": "1"})  # the describe call made while planning
    run = driver.run(setup)
    assert run.status == "succeeded", run.error
    assert _accounts(org)["2"]["Last_Activity__c"] == "2025-03-27T17:02:00.000Z"
