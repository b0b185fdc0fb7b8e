"""What is particular to Salesforce, synced from a Postgres table through the engine against the
fake org: typed values on the wire, the Bulk API path of large runs, and typed values when field
discovery is throttled. What every destination does (modes, batch limits, retries, refusals,
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
from tests.fakes.salesforce import FakeSalesforce

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


def _sync(account: Any, people: Warehouse, org: FakeSalesforce, **config: Any) -> SyncSetup:
    settings = {"instanceUrl": org.url, "accessToken": org.access_token,
                "rateLimitPerSecond": 1000, **config}
    return make_sync(account, people, "salesforce", settings, object_name="Account",
                     mappings=MAPPINGS)


def _accounts(org: FakeSalesforce) -> dict[str, dict[str, Any]]:
    return {a["External_Id__c"]: a for a in org.records("Account")}


def _sent(org: FakeSalesforce) -> list[list[dict]]:
    """The records of each upsert request, in order."""
    return [r.json()["records"] for r in org.requests
            if r.method == "PATCH" and r.path == UPSERT_PATH]


def test_rows_are_upserted_with_salesforce_typed_values(
    driver: EngineDriver, account: Any, people: Warehouse, org: FakeSalesforce
) -> None:
    seed(people, 7)
    run = driver.run(_sync(account, people, org))
    assert run.status == "succeeded", run.error
    accounts = _accounts(org)
    assert {k: accounts["2"][k] for k in ("Name", "AnnualRevenue", "Active__c",
                                          "Last_Activity__c", "Founded__c")} == {
        "Name": "User 2", "AnnualRevenue": 3.0, "Active__c": True,
        "Last_Activity__c": "2025-03-27T17:02:00.000Z", "Founded__c": "1990-01-03",
    }
    assert accounts["3"]["Active__c"] is False and accounts["3"]["AnnualRevenue"] == 4.5
    wire = next(r for b in _sent(org) for r in b if r["External_Id__c"] == "7")
    assert wire == {
        "attributes": {"type": "Account"}, "External_Id__c": "7", "Name": "User 7",
        "AnnualRevenue": 10.5, "Active__c": False,
        "Last_Activity__c": "2025-03-27T17:07:00.000Z", "Founded__c": "1990-01-08",
    }


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
