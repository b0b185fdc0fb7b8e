"""Destination discovery through the API: objects (with `search`) and fields of an object,
as the destination connector reports them, with 404/422 answers and workspace isolation."""

from __future__ import annotations

import pytest

from tests.api.conftest import API, assert_error, assert_resource, create_destination, create_source
from tests.conftest import bearer

FIELDS = [
    {"name": "External_Id__c", "label": "Warehouse Account Id", "type": "string", "externalId": True},
    {"name": "Name", "label": "Account Name", "type": "string", "required": True},
    {"name": "AnnualRevenue", "type": "number"},
]


@pytest.fixture
def accounts(client, api_key, sink) -> dict:
    """A receiver that declares one object, Account, and its fields."""
    return create_destination(client, api_key, sink.url, objectName="Account", fields=FIELDS)


def test_list_objects_answers_the_seed_shape(client, api_key, accounts):
    response = client.get(f"{API}/objects?destination_id={accounts['id']}", headers=bearer(api_key))

    assert response.status_code == 200
    data = response.get_json()["data"]
    assert len(data) == 1
    assert data[0]["id"] == "Account"
    attributes = assert_resource(data[0], "destination_object", "")
    assert attributes == {"label": "Account", "api_name": "Account", "supports_upsert": True, "writable": True}


def test_list_objects_search_is_a_case_insensitive_filter(client, api_key, accounts):
    def found(search: str) -> list[str]:
        url = f"{API}/objects?destination_id={accounts['id']}&search={search}"
        return [item["id"] for item in client.get(url, headers=bearer(api_key)).get_json()["data"]]

    assert found("acc") == ["Account"]
    assert found("COUNT") == ["Account"]
    assert found("contact") == []


def test_list_objects_needs_a_destination_id(client, api_key):
    error = assert_error(client.get(f"{API}/objects", headers=bearer(api_key)), 422, "/destination_id")
    assert error["source"]["parameter"] == "destination_id"


def test_list_objects_of_an_unknown_or_foreign_destination_answers_404(client, api_key, other_api_key, accounts):
    unknown = "conn_01jzzzzzzzzzzzzzzzzzzzzzzz"
    foreign = client.get(f"{API}/objects?destination_id={accounts['id']}", headers=bearer(other_api_key))
    missing = client.get(f"{API}/objects?destination_id={unknown}", headers=bearer(other_api_key))

    foreign_error = assert_error(foreign, 404, "/destination_id")
    missing_error = assert_error(missing, 404, "/destination_id")
    assert foreign_error["detail"].replace(accounts["id"], "<id>") == missing_error["detail"].replace(unknown, "<id>")


def test_a_source_is_not_a_destination_for_discovery(client, api_key, source):
    response = client.get(f"{API}/objects?destination_id={source['id']}", headers=bearer(api_key))

    assert_error(response, 404, "/destination_id")


def test_list_fields_answers_the_seed_shape(client, api_key, accounts):
    response = client.get(
        f"{API}/fields?destination_id={accounts['id']}&object_name=Account", headers=bearer(api_key)
    )

    assert response.status_code == 200
    data = response.get_json()["data"]
    assert [item["id"] for item in data] == ["External_Id__c", "Name", "AnnualRevenue"]
    by_id = {item["id"]: assert_resource(item, "destination_field", "") for item in data}
    assert by_id["Name"] == {
        "label": "Account Name", "data_type": "string", "required": True, "updateable": True, "external_id": False,
    }
    assert by_id["External_Id__c"]["external_id"] is True
    assert by_id["External_Id__c"]["label"] == "Warehouse Account Id"
    assert by_id["AnnualRevenue"]["data_type"] == "number"


def test_list_fields_of_an_unknown_object_answers_404_at_object_name(client, api_key, accounts):
    response = client.get(
        f"{API}/fields?destination_id={accounts['id']}&object_name=Contact", headers=bearer(api_key)
    )

    assert_error(response, 404, "/object_name")


def test_list_fields_needs_destination_id_and_object_name(client, api_key, accounts):
    no_object = client.get(f"{API}/fields?destination_id={accounts['id']}", headers=bearer(api_key))
    no_destination = client.get(f"{API}/fields?object_name=Account", headers=bearer(api_key))

    assert_error(no_object, 422, "/object_name")
    assert_error(no_destination, 422, "/destination_id")


def test_list_fields_of_a_foreign_destination_answers_404(client, other_api_key, accounts):
    response = client.get(
        f"{API}/fields?destination_id={accounts['id']}&object_name=Account", headers=bearer(other_api_key)
    )

    assert_error(response, 404, "/destination_id")


def test_discovery_never_calls_another_workspaces_destination(client, other_api_key, sink, accounts):
    before = len(sink.requests)

    client.get(f"{API}/objects?destination_id={accounts['id']}", headers=bearer(other_api_key))

    assert len(sink.requests) == before


def test_discovery_of_a_destination_with_a_broken_field_declaration_answers_503(client, api_key, sink):
    destination = create_destination(client, api_key, sink.url, fields=[{"label": "no name"}])

    response = client.get(
        f"{API}/fields?destination_id={destination['id']}&object_name=records", headers=bearer(api_key)
    )

    assert_error(response, 503)


def test_discovery_of_a_source_url_is_refused_before_any_call(client, api_key, reader_url):
    source = create_source(client, api_key, reader_url)

    response = client.get(f"{API}/fields?destination_id={source['id']}&object_name=x", headers=bearer(api_key))

    assert_error(response, 404, "/destination_id")
