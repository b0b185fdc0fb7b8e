"""The Salesforce destination against a fake org: discovery, sObject Collections writes, Bulk API
2.0 jobs, Id lookups, sign-in refresh, limits and the vendor's per-record errors."""

from __future__ import annotations

import datetime as dt
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from connectors.destinations.base import DestinationField, RateLimit, Record
from connectors.destinations.salesforce import (
    SalesforceDestination,
    parse_bulk_error,
    soql_literal,
)
from connectors.errors import AuthError, ConnectorError, RetryableError
from tests.fakes.salesforce import FakeSalesforce


@pytest.fixture
def org() -> Iterator[FakeSalesforce]:
    with FakeSalesforce() as fake:
        yield fake  # type: ignore[misc]


def _destination(org: FakeSalesforce, **config: Any) -> SalesforceDestination:
    settings = {
        "instanceUrl": org.url,
        "accessToken": org.access_token,
        "bulkPollIntervalSeconds": 0,
        **config,
    }
    return SalesforceDestination({k: v for k, v in settings.items() if v is not None})


@pytest.fixture
def salesforce(org: FakeSalesforce) -> Iterator[SalesforceDestination]:
    destination = _destination(org)
    yield destination
    destination.close()


def _refreshing(org: FakeSalesforce, **config: Any) -> SalesforceDestination:
    return _destination(
        org,
        clientId=org.client_id,
        clientSecret=org.client_secret,
        refreshToken=org.refresh_token,
        loginUrl=org.url,
        **config,
    )


def _accounts(count: int, prefix: str = "acct") -> list[Record]:
    return [
        Record(key=f"{prefix}-{n}", fields={"Name": f"Account {n}", "AnnualRevenue": n * 10.5})
        for n in range(count)
    ]


def _paths(org: FakeSalesforce, method: str) -> list[str]:
    return [r.path for r in org.requests if r.method == method]


# -- configuration ----------------------------------------------------------------------------


def test_declares_its_contract() -> None:
    assert SalesforceDestination.type == "salesforce"
    assert {
        "upsert",
        "insert",
        "update",
        "delete",
        "mirror",
    } <= SalesforceDestination.supported_modes
    assert SalesforceDestination.batch_size == 200
    assert SalesforceDestination.max_concurrency == 10
    assert SalesforceDestination.rate_limit == RateLimit(20, 1.0)
    secrets = set(SalesforceDestination.secret_fields())
    assert secrets == {"accessToken", "clientSecret", "refreshToken"}


def test_config_needs_an_instance_url_and_credentials() -> None:
    with pytest.raises(ConnectorError, match="instanceUrl"):
        SalesforceDestination({"accessToken": "x"})
    with pytest.raises(ConnectorError, match="accessToken"):
        SalesforceDestination({"instanceUrl": "https://acme.my.salesforce.com"})
    destination = SalesforceDestination(
        {"instanceUrl": "https://acme.my.salesforce.com/", "accessToken": "x", "apiVersion": "61.0"}
    )
    assert destination.api_version == "v61.0"
    assert destination.instance_url == "https://acme.my.salesforce.com"
    assert destination.login_url == "https://login.salesforce.com"


def test_keeps_one_session(salesforce: SalesforceDestination) -> None:
    salesforce.test()
    session = salesforce.session
    salesforce.list_objects()
    assert salesforce.session is session
    salesforce.close()
    assert salesforce._session is None


# -- discovery --------------------------------------------------------------------------------


def test_test_calls_the_limits_resource(
    org: FakeSalesforce, salesforce: SalesforceDestination
) -> None:
    salesforce.test()
    assert org.requests[-1].path == "/services/data/v62.0/limits"
    assert org.requests[-1].headers["authorization"] == f"Bearer {org.access_token}"


def test_test_with_a_bad_token_is_an_auth_error(org: FakeSalesforce) -> None:
    destination = _destination(org, accessToken="00Dwrong")
    with pytest.raises(AuthError, match="INVALID_SESSION_ID"):
        destination.test()


def test_lists_objects(salesforce: SalesforceDestination) -> None:
    objects = {obj.api_name: obj for obj in salesforce.list_objects()}
    assert objects["Account"].label == "Account"
    assert objects["Account"].writable and objects["Account"].supports_upsert
    assert objects["Contact"].writable
    assert not objects["AccountHistory"].writable
    assert not objects["AccountHistory"].supports_upsert


def test_lists_fields_with_types(salesforce: SalesforceDestination) -> None:
    fields = {field.name: field for field in salesforce.list_fields("Account")}
    assert fields["Name"].required and fields["Name"].data_type == "string"
    assert fields["Name"].label == "Account Name"
    assert fields["External_Id__c"].external_id and not fields["External_Id__c"].required
    assert fields["AnnualRevenue"].data_type == "number"
    assert fields["NumberOfEmployees"].data_type == "integer"
    assert fields["Last_Activity__c"].data_type == "datetime"
    assert fields["Founded__c"].data_type == "date"
    assert fields["Active__c"].data_type == "boolean"
    # Not nillable but defaulted on create: Salesforce fills it in.
    assert not fields["Active__c"].required
    assert fields["Rating"].data_type == "string"
    assert fields["Website"].data_type == "string"
    assert fields["Id"].data_type == "string" and not fields["Id"].required
    assert not fields["CreatedDate"].updateable and not fields["CreatedDate"].required
    contact = {field.name: field for field in salesforce.list_fields("Contact")}
    assert contact["Email"].data_type == "string"
    assert contact["LastName"].required
    assert contact["AccountId"].data_type == "string"
    assert contact["Customer_Number__c"].data_type == "number"


def test_unknown_object_is_a_connector_error(salesforce: SalesforceDestination) -> None:
    with pytest.raises(ConnectorError, match="NOT_FOUND: The requested resource does not exist"):
        salesforce.list_fields("Nope__c")
    with pytest.raises(ConnectorError, match="not a Salesforce object API name"):
        salesforce.list_fields("Account/../x")


# -- values -----------------------------------------------------------------------------------


def test_format_value() -> None:
    destination = SalesforceDestination(
        {"instanceUrl": "https://x.my.salesforce.com", "accessToken": "t"}
    )
    moment = dt.datetime(2025, 3, 27, 19, 0, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    field = DestinationField("Last_Activity__c", "Last Activity", "datetime")
    assert destination.format_value(moment, field) == "2025-03-27T17:00:00.123Z"
    assert (
        destination.format_value(dt.datetime(2025, 3, 27, 17, 0), field)
        == "2025-03-27T17:00:00.000Z"
    )
    date_field = DestinationField("Founded__c", "Founded", "date")
    assert destination.format_value(dt.date(2020, 1, 2), date_field) == "2020-01-02"
    flag = DestinationField("Active__c", "Active", "boolean")
    assert destination.format_value(True, flag) is True
    assert destination.format_value(False, flag) is False
    assert (
        destination.format_value(12.5, DestinationField("AnnualRevenue", "Revenue", "number"))
        == 12.5
    )


def test_soql_literals_escape_quotes_and_backslashes() -> None:
    assert soql_literal("O'Brien") == "'O\\'Brien'"
    assert soql_literal("back\\slash") == "'back\\\\slash'"
    assert soql_literal('say "hi"\n') == "'say \\\"hi\\\"\\n'"


def test_parse_bulk_error() -> None:
    error = parse_bulk_error("REQUIRED_FIELD_MISSING:Required fields are missing: [Name]:Name --")
    assert (error.status_code, error.message, error.fields) == (
        "REQUIRED_FIELD_MISSING",
        "Required fields are missing: [Name]",
        ("Name",),
    )
    gone = parse_bulk_error("INVALID_CROSS_REFERENCE_KEY:invalid cross reference id:--")
    assert (gone.status_code, gone.message, gone.fields) == (
        "INVALID_CROSS_REFERENCE_KEY",
        "invalid cross reference id",
        (),
    )
    assert parse_bulk_error("something odd").status_code == "UNKNOWN"


# -- sObject Collections ----------------------------------------------------------------------


def test_upsert_creates_then_updates(
    org: FakeSalesforce, salesforce: SalesforceDestination
) -> None:
    records = [
        Record(
            "ext-1",
            {
                "Name": "Acme",
                "AnnualRevenue": 1200.5,
                "Active__c": True,
                "Last_Activity__c": "2025-03-27T17:00:00.000Z",
                "Founded__c": "1999-01-02",
            },
        ),
        Record("ext-2", {"Name": "Globex", "External_Id__c": "ext-2", "NumberOfEmployees": 40}),
    ]
    results = salesforce.write_batch("Account", "upsert", "External_Id__c", records)
    assert all(r.ok for r in results)
    acme = org.find("Account", "External_Id__c", "ext-1")
    assert len(acme) == 1 and acme[0]["Name"] == "Acme" and acme[0]["AnnualRevenue"] == 1200.5
    assert (
        acme[0]["Last_Activity__c"] == "2025-03-27T17:00:00.000Z" and acme[0]["Active__c"] is True
    )
    assert results[0].external_id == acme[0]["Id"]
    request = org.requests[-1]
    assert request.method == "PATCH"
    assert request.path == "/services/data/v62.0/composite/sobjects/Account/External_Id__c"
    body = request.json()
    assert body["allOrNone"] is False
    assert body["records"][0]["attributes"] == {"type": "Account"}

    again = salesforce.write_batch(
        "Account", "upsert", "External_Id__c", [Record("ext-1", {"Name": "Acme Corp"})]
    )
    assert again[0].ok and again[0].external_id == acme[0]["Id"]
    assert [r["Name"] for r in org.find("Account", "External_Id__c", "ext-1")] == ["Acme Corp"]
    assert len(org.records("Account")) == 2


def test_insert(org: FakeSalesforce, salesforce: SalesforceDestination) -> None:
    results = salesforce.write_batch(
        "Contact",
        "insert",
        "Email",
        [
            Record("ada@example.com", {"LastName": "Lovelace", "Email": "ada@example.com"}),
            Record("alan@example.com", {"LastName": "Turing"}),
        ],
    )
    assert [r.ok for r in results] == [True, True]
    assert {c["Email"] for c in org.records("Contact")} == {"ada@example.com", "alan@example.com"}
    assert _paths(org, "POST")[-1] == "/services/data/v62.0/composite/sobjects"


def test_insert_without_a_key_field(org: FakeSalesforce, salesforce: SalesforceDestination) -> None:
    # Insert mode without a key mapping: the key is a content hash and no field carries it.
    small = [Record(f"hash{n}", {"LastName": f"L{n}"}) for n in range(3)]
    assert all(r.ok for r in salesforce.write_batch("Contact", "insert", "", small))
    large = [Record(f"hash{n}", {"LastName": f"B{n}"}) for n in range(201)]
    results = salesforce.write_batch("Contact", "insert", "", large)
    assert all(r.ok for r in results)
    by_id = {c["Id"]: c for c in org.records("Contact")}
    assert len(by_id) == 204
    assert by_id[results[150].external_id]["LastName"] == "B150"
    assert not any("hash" in str(c) for c in by_id.values())


def test_per_record_failures_carry_the_vendor_message(
    org: FakeSalesforce, salesforce: SalesforceDestination
) -> None:
    org.reject(
        "ext-bad",
        "FIELD_CUSTOM_VALIDATION_EXCEPTION",
        "Revenue must be positive",
        ("AnnualRevenue",),
    )
    results = salesforce.write_batch(
        "Account",
        "upsert",
        "External_Id__c",
        [
            Record("ext-ok", {"Name": "Fine"}),
            Record("ext-noname", {"AnnualRevenue": 5}),
            Record("ext-bad", {"Name": "Bad", "AnnualRevenue": -1}),
            Record("ext-long", {"Name": "x" * 300}),
            Record("ext-readonly", {"Name": "RO", "CreatedDate": "2020-01-01T00:00:00.000Z"}),
        ],
    )
    assert results[0].ok
    assert results[1].code == "DESTINATION_VALIDATION"
    assert results[1].message == (
        "REQUIRED_FIELD_MISSING: Required fields are missing: [Name] (fields: Name)"
    )
    assert results[2].code == "DESTINATION_VALIDATION"
    assert results[2].message == (
        "FIELD_CUSTOM_VALIDATION_EXCEPTION: Revenue must be positive (fields: AnnualRevenue)"
    )
    assert not results[2].retryable
    assert results[3].message.startswith("STRING_TOO_LONG: Account Name: data value too large")
    assert results[4].message.startswith(
        "INVALID_FIELD_FOR_INSERT_UPDATE: Unable to create/update fields: CreatedDate"
    )
    assert [a["External_Id__c"] for a in org.records("Account")] == ["ext-ok"]


def test_invalid_email_is_a_per_record_failure(
    org: FakeSalesforce, salesforce: SalesforceDestination
) -> None:
    results = salesforce.write_batch(
        "Contact",
        "insert",
        "Email",
        [
            Record("nope", {"LastName": "X", "Email": "not-an-email"}),
            Record("b@x.io", {"LastName": "Y"}),
        ],
    )
    assert results[0].message == (
        "INVALID_EMAIL_ADDRESS: Email: invalid email address: not-an-email (fields: Email)"
    )
    assert results[1].ok


def test_a_locked_row_is_retryable(org: FakeSalesforce, salesforce: SalesforceDestination) -> None:
    org.reject(
        "ext-locked", "UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access to this record"
    )
    (result,) = salesforce.write_batch(
        "Account", "upsert", "External_Id__c", [Record("ext-locked", {"Name": "L"})]
    )
    assert not result.ok and result.retryable
    assert "UNABLE_TO_LOCK_ROW" in (result.message or "")


def test_unknown_field_refuses_the_whole_request(salesforce: SalesforceDestination) -> None:
    with pytest.raises(
        ConnectorError, match="INVALID_FIELD: No such column 'Bogus__c' on sobject of type Account"
    ):
        salesforce.write_batch(
            "Account", "upsert", "External_Id__c", [Record("e", {"Name": "A", "Bogus__c": 1})]
        )


def test_a_value_of_the_wrong_type_refuses_the_whole_request(
    salesforce: SalesforceDestination,
) -> None:
    # Salesforce parses the JSON body before saving any record: a bad value fails the request.
    with pytest.raises(
        ConnectorError, match="JSON_PARSER_ERROR: Cannot deserialize instance of currency"
    ):
        salesforce.write_batch(
            "Account",
            "insert",
            "External_Id__c",
            [Record("e", {"Name": "A", "AnnualRevenue": "lots"})],
        )


def test_upsert_on_a_field_that_is_not_an_external_id(salesforce: SalesforceDestination) -> None:
    with pytest.raises(
        ConnectorError, match="Provided external ID field does not exist or is not accessible: Name"
    ):
        salesforce.write_batch("Account", "upsert", "Name", [Record("Acme", {"Name": "Acme"})])
    with pytest.raises(ConnectorError, match="not on Id"):
        salesforce.write_batch("Account", "upsert", "Id", [Record("001x", {"Name": "Acme"})])


def test_update_looks_ids_up_and_reports_missing_keys(
    org: FakeSalesforce, salesforce: SalesforceDestination
) -> None:
    obrien = org.add("Account", Name="Old", External_Id__c="O'Brien\\1")
    plain = org.add("Account", Name="Plain", External_Id__c="plain")
    results = salesforce.write_batch(
        "Account",
        "update",
        "External_Id__c",
        [
            Record("O'Brien\\1", {"Name": "New", "External_Id__c": "O'Brien\\1"}),
            Record("missing", {"Name": "Ghost"}),
            Record("PLAIN", {"AnnualRevenue": 3}),  # SOQL matches text without regard to case
        ],
    )
    assert results[0].ok and results[0].external_id == obrien
    assert results[1].code == "NOT_FOUND" and "missing" in (results[1].message or "")
    assert results[2].ok and results[2].external_id == plain
    assert org.find("Account", "Id", obrien)[0]["Name"] == "New"
    assert org.find("Account", "Id", plain)[0]["AnnualRevenue"] == 3
    assert not org.find("Account", "Name", "Ghost")
    query = next(r for r in org.requests if r.path.endswith("/query"))
    assert query.query["q"] == [
        "SELECT Id, External_Id__c FROM Account WHERE External_Id__c IN "
        "('O\\'Brien\\\\1','missing','PLAIN')"
    ]
    update = org.requests[-1]
    assert (update.method, update.path) == ("PATCH", "/services/data/v62.0/composite/sobjects")
    assert [r["Id"] for r in update.json()["records"]] == [obrien, plain]


def test_update_by_a_numeric_key_uses_bare_literals(
    org: FakeSalesforce, salesforce: SalesforceDestination
) -> None:
    contact = org.add("Contact", LastName="Hopper", Customer_Number__c=42.0)
    results = salesforce.write_batch(
        "Contact",
        "update",
        "Customer_Number__c",
        [Record("42", {"FirstName": "Grace"}), Record("x", {})],
    )
    assert results[0].ok and results[0].external_id == contact
    assert results[1].code == "NOT_FOUND"
    assert org.find("Contact", "Id", contact)[0]["FirstName"] == "Grace"
    query = next(r for r in org.requests if r.path.endswith("/query"))
    assert query.query["q"][0].endswith("WHERE Customer_Number__c IN (42)")


def test_update_with_a_key_shared_by_several_records_fails_that_record(
    org: FakeSalesforce, salesforce: SalesforceDestination
) -> None:
    org.add("Contact", LastName="A", Email="twin@example.com")
    org.add("Contact", LastName="B", Email="twin@example.com")
    (result,) = salesforce.write_batch(
        "Contact", "update", "Email", [Record("twin@example.com", {"FirstName": "T"})]
    )
    assert result.code == "DESTINATION_VALIDATION"
    assert "2 Contact records have Email = 'twin@example.com'" in (result.message or "")


def test_update_and_delete_by_record_id_need_no_lookup(
    org: FakeSalesforce, salesforce: SalesforceDestination
) -> None:
    record_id = org.add("Account", Name="ById")
    updated = salesforce.write_batch(
        "Account", "update", "Id", [Record(record_id, {"Name": "Renamed"})]
    )
    assert updated[0].ok
    assert org.find("Account", "Id", record_id)[0]["Name"] == "Renamed"
    deleted = salesforce.write_batch(
        "Account", "delete", "Id", [Record(record_id, {"Id": record_id})]
    )
    assert deleted[0].ok and not org.records("Account")
    gone = salesforce.write_batch("Account", "update", "Id", [Record(record_id, {"Name": "Again"})])
    assert gone[0].code == "NOT_FOUND" and "ENTITY_IS_DELETED" in (gone[0].message or "")
    assert not any(r.path.endswith("/query") for r in org.requests)


def test_delete_removes_every_match_and_missing_keys_count_as_gone(
    org: FakeSalesforce, salesforce: SalesforceDestination
) -> None:
    org.add("Contact", LastName="A", Email="twin@example.com")
    org.add("Contact", LastName="B", Email="twin@example.com")
    keep = org.add("Contact", LastName="C", Email="keep@example.com")
    results = salesforce.write_batch(
        "Contact",
        "delete",
        "Email",
        [
            Record("twin@example.com", {"Email": "twin@example.com"}),
            Record("never@example.com", {}),
        ],
    )
    assert [r.ok for r in results] == [True, True]
    assert [c["Id"] for c in org.records("Contact")] == [keep]
    delete = next(r for r in org.requests if r.method == "DELETE")
    assert delete.path == "/services/data/v62.0/composite/sobjects"
    assert delete.query["allOrNone"] == ["false"]
    assert len(delete.query["ids"][0].split(",")) == 2


def test_a_refused_delete_carries_the_message(
    org: FakeSalesforce, salesforce: SalesforceDestination
) -> None:
    org.add("Account", Name="Linked", External_Id__c="linked")
    org.reject("linked", "DELETE_FAILED", "Your attempt to delete Linked could not be completed")
    (result,) = salesforce.write_batch(
        "Account", "delete", "External_Id__c", [Record("linked", {})]
    )
    assert result.code == "DESTINATION_VALIDATION"
    assert result.message == "DELETE_FAILED: Your attempt to delete Linked could not be completed"
    assert len(org.records("Account")) == 1


def test_lookups_follow_next_records_url(
    org: FakeSalesforce, salesforce: SalesforceDestination
) -> None:
    org.query_page_size = 2
    ids = [org.add("Account", Name=f"A{n}", External_Id__c=f"k{n}") for n in range(5)]
    results = salesforce.write_batch(
        "Account",
        "update",
        "External_Id__c",
        [Record(f"k{n}", {"NumberOfEmployees": n}) for n in range(5)],
    )
    assert [r.external_id for r in results] == ids
    assert sum(1 for r in org.requests if "/query/" in r.path) == 2


def test_empty_batch_makes_no_call(org: FakeSalesforce, salesforce: SalesforceDestination) -> None:
    assert salesforce.write_batch("Account", "upsert", "External_Id__c", []) == []
    assert org.requests == []


# -- batch sizes ------------------------------------------------------------------------------


def test_batch_sizes_stay_under_the_collection_limit(salesforce: SalesforceDestination) -> None:
    assert salesforce.batch_size_for("upsert", 50) == 200
    assert salesforce.batch_size_for("upsert", 10_000) == 200
    for operation in ("upsert", "insert", "update", "delete"):
        assert salesforce.batch_size_for(operation, 10_001) == 10_000
    capped = SalesforceDestination(
        {
            "instanceUrl": "https://x.my.salesforce.com",
            "accessToken": "t",
            "batchSize": 500,
            "bulkThreshold": 1000,
            "bulkBatchSize": 5000,
        }
    )
    assert capped.batch_size_for("insert", 999) == 200
    assert capped.batch_size_for("insert", 1001) == 5000


def test_the_fake_refuses_more_than_200_records_like_salesforce(org: FakeSalesforce) -> None:
    records = [{"attributes": {"type": "Account"}, "Name": f"A{n}"} for n in range(201)]
    response = requests.post(
        f"{org.url}/services/data/v62.0/composite/sobjects",
        json={"allOrNone": False, "records": records},
        headers={"Authorization": f"Bearer {org.access_token}"},
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json() == [
        {
            "message": "record limit reached. cannot submit more than 200 records into this call",
            "errorCode": "EXCEEDED_ID_LIMIT",
        }
    ]


def test_200_records_go_in_one_collections_request(
    org: FakeSalesforce, salesforce: SalesforceDestination
) -> None:
    results = salesforce.write_batch("Account", "upsert", "External_Id__c", _accounts(200))
    assert all(r.ok for r in results)
    assert len(org.records("Account")) == 200
    assert not any("/jobs/" in r.path for r in org.requests)


# -- Bulk API 2.0 -----------------------------------------------------------------------------


def test_bulk_upsert_runs_an_ingest_job(
    org: FakeSalesforce, salesforce: SalesforceDestination
) -> None:
    org.reject("acct-7", "FIELD_CUSTOM_VALIDATION_EXCEPTION", "No sevens", ("Name",))
    records = _accounts(450)
    records[3] = Record("acct-3", {"Name": "Three", "AnnualRevenue": "lots"})
    records[5] = Record("acct-5", {"Name": None})
    results = salesforce.write_batch("Account", "upsert", "External_Id__c", records)

    assert len(results) == 450
    assert results[3].code == "DESTINATION_VALIDATION"
    assert results[3].message == (
        "INVALID_TYPE_ON_FIELD_IN_RECORD: Annual Revenue: value not of required type: lots "
        "(fields: AnnualRevenue)"
    )
    assert (
        results[5].message
        == "REQUIRED_FIELD_MISSING: Required fields are missing: [Name] (fields: Name)"
    )
    assert results[7].message == "FIELD_CUSTOM_VALIDATION_EXCEPTION: No sevens (fields: Name)"
    failed = {3, 5, 7}
    assert all(r.ok for n, r in enumerate(results) if n not in failed)
    stored = {a["External_Id__c"]: a for a in org.records("Account")}
    assert len(stored) == 447
    assert results[10].external_id == stored["acct-10"]["Id"]
    assert stored["acct-10"]["AnnualRevenue"] == 105.0

    (job,) = org.jobs.values()
    assert (job.operation, job.external_id_field, job.state) == (
        "upsert",
        "External_Id__c",
        "JobComplete",
    )
    create = next(r for r in org.requests if r.path.endswith("/jobs/ingest"))
    assert create.json() == {
        "object": "Account",
        "operation": "upsert",
        "contentType": "CSV",
        "lineEnding": "LF",
        "columnDelimiter": "COMMA",
        "externalIdFieldName": "External_Id__c",
    }
    upload = next(r for r in org.requests if r.method == "PUT")
    assert upload.headers["content-type"] == "text/csv"
    assert upload.body.decode().splitlines()[0] == "Name,AnnualRevenue,External_Id__c"
    # The fake kept the job InProgress for one status check.
    assert sum(1 for r in org.requests if r.method == "GET" and r.path.endswith(job.id)) == 2
    assert not any(
        r.path.endswith("/composite/sobjects/Account/External_Id__c") for r in org.requests
    )


def test_bulk_update_and_delete_look_ids_up(
    org: FakeSalesforce, salesforce: SalesforceDestination
) -> None:
    org.query_page_size = 100
    ids = [org.add("Account", Name=f"A{n}", External_Id__c=f"k-{n}") for n in range(300)]
    updates = [Record(f"k-{n}", {"NumberOfEmployees": n}) for n in range(300)]
    updates.append(Record("k-missing", {"NumberOfEmployees": 1}))
    results = salesforce.write_batch("Account", "update", "External_Id__c", updates)
    assert [r.external_id for r in results[:300]] == ids
    assert results[300].code == "NOT_FOUND"
    assert all(a["NumberOfEmployees"] == int(a["Name"][1:]) for a in org.records("Account"))
    assert any("/query/" in r.path for r in org.requests)

    deletes = [Record(f"k-{n}", {"External_Id__c": f"k-{n}"}) for n in range(250)]
    deletes.append(Record("k-missing", {}))
    results = salesforce.write_batch("Account", "delete", "External_Id__c", deletes)
    assert all(r.ok for r in results)
    assert len(org.records("Account")) == 50
    delete_job = [job for job in org.jobs.values() if job.operation == "delete"][0]
    assert delete_job.columns == ["Id"]


def test_bulk_insert_without_a_key_column_matches_rows(
    org: FakeSalesforce, salesforce: SalesforceDestination
) -> None:
    records = [Record(str(n), {"LastName": f"L{n}"}) for n in range(250)]
    records[9] = Record("9", {"LastName": None})
    results = salesforce.write_batch("Contact", "insert", "Id", records)
    assert results[9].code == "DESTINATION_VALIDATION"
    assert sum(r.ok for r in results) == 249
    by_id = {c["Id"]: c for c in org.records("Contact")}
    assert by_id[results[42].external_id]["LastName"] == "L42"


def test_bulk_job_finishing_at_once(org: FakeSalesforce, salesforce: SalesforceDestination) -> None:
    org.bulk_polls_before_complete = 0
    results = salesforce.write_batch("Account", "insert", "External_Id__c", _accounts(201))
    assert all(r.ok for r in results)
    assert len(org.records("Account")) == 201


def test_bulk_job_that_fails_as_a_whole_is_a_connector_error(
    org: FakeSalesforce, salesforce: SalesforceDestination
) -> None:
    records = [Record(f"k{n}", {"Name": "A", "Bogus__c": 1}) for n in range(201)]
    with pytest.raises(ConnectorError, match="Field name not found : Bogus__c"):
        salesforce.write_batch("Account", "upsert", "External_Id__c", records)
    assert not org.records("Account")


def test_bulk_poll_timeout_is_retryable_and_aborts_the_job(org: FakeSalesforce) -> None:
    org.hold_bulk_jobs = True
    destination = _destination(org, bulkPollTimeoutSeconds=0)
    with pytest.raises(RetryableError) as caught:
        destination.write_batch("Account", "upsert", "External_Id__c", _accounts(201))
    assert caught.value.code == "TIMEOUT"
    (job,) = org.jobs.values()
    assert job.state == "Aborted"
    assert not org.records("Account")


# -- whole-call failures ----------------------------------------------------------------------


def test_429_with_retry_after_is_retryable(
    org: FakeSalesforce, salesforce: SalesforceDestination
) -> None:
    org.fail_next(
        429, [{"message": "slow down", "errorCode": "REQUEST_LIMIT_EXCEEDED"}], {"Retry-After": "7"}
    )
    with pytest.raises(RetryableError) as caught:
        salesforce.write_batch("Account", "upsert", "External_Id__c", _accounts(2))
    assert caught.value.code == "RATE_LIMIT"
    assert caught.value.retry_after == 7


def test_daily_limit_403_is_a_rate_limit(
    org: FakeSalesforce, salesforce: SalesforceDestination
) -> None:
    org.api_limit = 1
    salesforce.test()
    assert salesforce.api_usage == (1, 1)
    with pytest.raises(RetryableError) as caught:
        salesforce.write_batch("Account", "upsert", "External_Id__c", _accounts(2))
    assert caught.value.code == "RATE_LIMIT"
    assert caught.value.retry_after == 60
    assert "REQUEST_LIMIT_EXCEEDED: TotalRequests Limit exceeded." in caught.value.message
    assert salesforce.api_usage == (2, 1)


def test_other_403_is_an_auth_error(org: FakeSalesforce, salesforce: SalesforceDestination) -> None:
    org.fail_next(
        403,
        [
            {
                "message": "API is not enabled for this Organization or Partner",
                "errorCode": "API_DISABLED_FOR_ORG",
            }
        ],
    )
    with pytest.raises(AuthError, match="API_DISABLED_FOR_ORG"):
        salesforce.list_objects()


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_retryable(
    org: FakeSalesforce, salesforce: SalesforceDestination, status: int
) -> None:
    org.fail_next(status, "<html>Service Unavailable</html>")
    with pytest.raises(RetryableError) as caught:
        salesforce.write_batch("Account", "insert", "External_Id__c", _accounts(1))
    assert caught.value.code == "UNKNOWN"
    assert "Service Unavailable" in caught.value.message


def test_unreachable_instance_is_retryable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    destination = SalesforceDestination(
        {"instanceUrl": f"http://127.0.0.1:{port}", "accessToken": "t"}
    )
    with pytest.raises(RetryableError):
        destination.write_batch("Account", "insert", "External_Id__c", _accounts(1))


def test_api_usage_is_read_from_every_answer(
    org: FakeSalesforce, salesforce: SalesforceDestination
) -> None:
    assert salesforce.api_usage is None
    salesforce.list_objects()
    salesforce.list_fields("Account")
    assert salesforce.api_usage == (2, 15_000)


def test_unexpected_body_does_not_crash(
    org: FakeSalesforce, salesforce: SalesforceDestination
) -> None:
    org.fail_next(200, "<html>maintenance</html>")
    results = salesforce.write_batch("Account", "upsert", "External_Id__c", _accounts(3))
    assert [r.code for r in results] == ["UNKNOWN"] * 3
    assert "maintenance" in (results[0].message or "")
    org.fail_next(200, [{"weird": True}])
    results = salesforce.write_batch("Account", "upsert", "External_Id__c", _accounts(2))
    assert [r.code for r in results] == ["UNKNOWN", "UNKNOWN"]
    org.fail_next(200, "not json")
    with pytest.raises(ConnectorError, match="not json"):
        salesforce.list_objects()
    org.fail_next(200, {"sobjects": "nope"})
    with pytest.raises(ConnectorError, match="no sobjects list"):
        salesforce.list_objects()


def test_400_on_the_whole_request_is_a_connector_error(
    org: FakeSalesforce, salesforce: SalesforceDestination
) -> None:
    org.fail_next(
        400,
        json.dumps([{"message": "bad", "errorCode": "MALFORMED_QUERY"}]).encode(),
        {"Content-Type": "application/json"},
    )
    with pytest.raises(ConnectorError, match="MALFORMED_QUERY: bad") as caught:
        salesforce.write_batch("Account", "update", "Id", [Record("001x", {"Name": "n"})])
    assert not isinstance(caught.value, RetryableError | AuthError)


# -- sign-in ----------------------------------------------------------------------------------


def test_expired_token_without_refresh_credentials_is_an_auth_error(
    org: FakeSalesforce, salesforce: SalesforceDestination
) -> None:
    org.expire_token()
    with pytest.raises(AuthError, match="fix the destination's credentials"):
        salesforce.write_batch("Account", "upsert", "External_Id__c", _accounts(1))
    assert org.token_requests == 0


def test_expired_token_is_refreshed_once_and_the_call_repeated(org: FakeSalesforce) -> None:
    destination = _refreshing(org)
    org.expire_token()
    results = destination.write_batch("Account", "upsert", "External_Id__c", _accounts(2))
    assert all(r.ok for r in results)
    assert org.token_requests == 1
    token_request = next(r for r in org.requests if r.path == "/services/oauth2/token")
    form = dict(pair.split("=", 1) for pair in token_request.body.decode().split("&"))
    assert form["grant_type"] == "refresh_token"
    assert form["client_id"] == org.client_id
    writes = [r for r in org.requests if r.path.endswith("/External_Id__c")]
    assert len(writes) == 2
    assert writes[-1].headers["authorization"] == f"Bearer {org.access_token}"
    assert len(org.records("Account")) == 2


def test_refresh_token_alone_signs_in_first(org: FakeSalesforce) -> None:
    destination = _refreshing(org, accessToken=None)
    destination.test()
    assert org.token_requests == 1
    assert org.requests[0].path == "/services/oauth2/token"


def test_rejected_refresh_is_an_auth_error(org: FakeSalesforce) -> None:
    destination = _refreshing(org)
    org.expire_token()
    org.revoke_refresh_token()
    with pytest.raises(AuthError, match="invalid_grant: expired access/refresh token"):
        destination.write_batch("Account", "upsert", "External_Id__c", _accounts(1))
    assert org.token_requests == 1


def test_still_refused_after_refresh_is_an_auth_error(org: FakeSalesforce) -> None:
    destination = _refreshing(org)
    org._authorised = lambda request: False  # type: ignore[method-assign]
    with pytest.raises(AuthError, match="INVALID_SESSION_ID"):
        destination.list_objects()
    assert org.token_requests == 1
    assert sum(1 for r in org.requests if r.path.endswith("/sobjects")) == 2


def test_refresh_during_a_bulk_job(org: FakeSalesforce) -> None:
    destination = _refreshing(org)
    org.bulk_polls_before_complete = 0
    original = org._advance

    def expire_then_advance(job: Any) -> None:
        if org.token_requests == 0:
            org.expire_token()
        original(job)

    org._advance = expire_then_advance  # type: ignore[method-assign]
    results = destination.write_batch("Account", "upsert", "External_Id__c", _accounts(205))
    assert all(r.ok for r in results)
    assert org.token_requests == 1


def test_the_fake_checks_soql_literal_quoting(org: FakeSalesforce) -> None:
    def query(soql: str) -> requests.Response:
        return requests.get(
            f"{org.url}/services/data/v62.0/query",
            params={"q": soql},
            headers={"Authorization": f"Bearer {org.access_token}"},
            timeout=10,
        )

    unquoted = query("SELECT Id, Email FROM Contact WHERE Email IN (a)")
    assert unquoted.status_code == 400
    assert unquoted.json()[0]["errorCode"] == "INVALID_QUERY_FILTER_OPERATOR"
    quoted_number = query("SELECT Id FROM Contact WHERE Customer_Number__c IN ('1')")
    assert quoted_number.json()[0]["errorCode"] == "INVALID_QUERY_FILTER_OPERATOR"
    bad_escape = query("SELECT Id FROM Contact WHERE Email IN ('a\\qb')")
    assert bad_escape.json()[0]["errorCode"] == "MALFORMED_QUERY"
    unknown = query("SELECT Id FROM Nope__c WHERE Name IN ('a')")
    assert unknown.json()[0]["errorCode"] == "INVALID_TYPE"
