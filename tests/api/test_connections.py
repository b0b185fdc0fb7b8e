"""Destinations and sources through the API: create, list (connector filter), get, update,
delete and test; secrets never shown or logged; workspace isolation."""

from __future__ import annotations

import logging

import pytest

from tests.api.conftest import (
    API,
    SINK_TOKEN,
    SOURCE_PASSWORD,
    assert_error,
    assert_resource,
    create_destination,
    create_source,
)
from tests.conftest import bearer
from tests.fakes.http_sink import FakeHttpSink

CONNECTION_ATTRIBUTES = {
    "name", "connector", "status", "status_message", "objects_discoverable", "config", "secrets_set",
    "checked_at", "created_at", "updated_at",
}
KINDS = [("destinations", "reverse_etl_destination", "conn"), ("sources", "reverse_etl_source", "src")]


@pytest.fixture
def make(client, api_key, sink, source_url):
    """Create a connection of a kind (`destinations` or `sources`) for a key."""

    def _make(plural: str, key: str = api_key, name: str = "one") -> dict:
        if plural == "destinations":
            return create_destination(client, key, sink.url, name=name)
        return create_source(client, key, source_url, name=name)

    return _make


# ---- destinations ------------------------------------------------------------------------------


def test_create_destination_answers_201_and_hides_the_secret_headers(client, api_key, sink):
    body = {
        "name": "Receiver",
        "connector": "http",
        "config": {"url": sink.url, "headers": {"Authorization": SINK_TOKEN}, "batchSize": 50},
    }
    response = client.post(f"{API}/destinations", json=body, headers=bearer(api_key))

    assert response.status_code == 201
    attributes = assert_resource(response.get_json()["data"], "reverse_etl_destination", "conn")
    assert set(attributes) == CONNECTION_ATTRIBUTES
    assert attributes["name"] == "Receiver"
    assert attributes["connector"] == "http"
    assert attributes["status"] == "untested"
    assert attributes["objects_discoverable"] is True
    assert attributes["config"] == {"url": sink.url, "batchSize": 50}
    assert attributes["secrets_set"] == ["headers"]
    assert SINK_TOKEN not in response.get_data(as_text=True)


def test_destination_secrets_are_never_returned_by_any_endpoint(client, api_key, destination):
    destination_id = destination["id"]
    answers = [
        client.get(f"{API}/destinations", headers=bearer(api_key)),
        client.get(f"{API}/destinations/{destination_id}", headers=bearer(api_key)),
        client.put(f"{API}/destinations/{destination_id}", json={"name": "renamed"}, headers=bearer(api_key)),
        client.post(f"{API}/destinations/{destination_id}/test", headers=bearer(api_key)),
    ]

    for response in answers:
        assert response.status_code == 200
        assert "sink-token" not in response.get_data(as_text=True)


def test_secrets_are_never_logged(client, api_key, sink, source_url, caplog):
    caplog.set_level(logging.DEBUG)
    destination = create_destination(client, api_key, sink.url, headers={"Authorization": SINK_TOKEN})
    source = create_source(client, api_key, source_url)
    client.post(f"{API}/destinations/{destination['id']}/test", headers=bearer(api_key))
    client.post(f"{API}/sources/{source['id']}/test", headers=bearer(api_key))
    client.put(
        f"{API}/destinations/{destination['id']}",
        json={"config": {"url": "ftp://nowhere", "headers": {"Authorization": SINK_TOKEN}}},
        headers=bearer(api_key),
    )

    logged = "\n".join(record.getMessage() for record in caplog.records) + caplog.text
    assert SINK_TOKEN not in logged
    assert "sink-token" not in logged
    assert SOURCE_PASSWORD not in logged


def test_update_destination_merges_config_and_keeps_the_secret(client, api_key, destination):
    sink = FakeHttpSink(required_headers={"Authorization": SINK_TOKEN})
    with sink:
        response = client.put(
            f"{API}/destinations/{destination['id']}",
            json={"name": "moved", "config": {"url": sink.url}},
            headers=bearer(api_key),
        )
        tested = client.post(f"{API}/destinations/{destination['id']}/test", headers=bearer(api_key))

    assert response.status_code == 200
    attributes = response.get_json()["data"]["attributes"]
    assert attributes["name"] == "moved"
    assert attributes["config"] == {"url": sink.url}
    assert attributes["secrets_set"] == ["headers"]
    assert attributes["status"] == "untested"
    # The stored header still reaches the receiver though the update did not repeat it.
    assert tested.get_json()["data"]["attributes"]["status"] == "connected"
    assert sink.requests[-1].headers["authorization"] == SINK_TOKEN


def test_update_destination_with_null_removes_an_option(client, api_key, destination):
    response = client.put(
        f"{API}/destinations/{destination['id']}", json={"config": {"headers": None}}, headers=bearer(api_key)
    )

    assert response.get_json()["data"]["attributes"]["secrets_set"] == []


def test_update_destination_cannot_drop_a_required_option(client, api_key, destination):
    response = client.put(
        f"{API}/destinations/{destination['id']}", json={"config": {"url": None}}, headers=bearer(api_key)
    )

    assert_error(response, 422, "/config/url")


def test_test_destination_records_connected(client, api_key, destination):
    response = client.post(f"{API}/destinations/{destination['id']}/test", headers=bearer(api_key))

    assert response.status_code == 200
    attributes = assert_resource(response.get_json()["data"], "reverse_etl_destination", "conn")
    assert attributes["status"] == "connected"
    assert attributes["status_message"] is None
    assert attributes["checked_at"] is not None
    stored = client.get(f"{API}/destinations/{destination['id']}", headers=bearer(api_key)).get_json()
    assert stored["data"]["attributes"]["status"] == "connected"


def test_test_destination_with_refused_credentials_records_auth_failed(client, api_key):
    with FakeHttpSink(required_headers={"Authorization": "Bearer right"}) as sink:
        sink.fail_next(401, {"error": "bad token"})
        destination = create_destination(client, api_key, sink.url, headers={"Authorization": "Bearer wrong"})
        response = client.post(f"{API}/destinations/{destination['id']}/test", headers=bearer(api_key))

    assert response.status_code == 200
    attributes = response.get_json()["data"]["attributes"]
    assert attributes["status"] == "auth_failed"
    assert attributes["status_message"]


def test_test_destination_that_cannot_be_reached_records_error(client, api_key, unused_port):
    destination = create_destination(client, api_key, f"http://127.0.0.1:{unused_port}/in")

    response = client.post(f"{API}/destinations/{destination['id']}/test", headers=bearer(api_key))

    assert response.status_code == 200
    assert response.get_json()["data"]["attributes"]["status"] == "error"


def test_create_destination_with_an_unknown_connector_answers_422(client, api_key):
    body = {"name": "x", "connector": "carrier_pigeon", "config": {}}

    assert_error(client.post(f"{API}/destinations", json=body, headers=bearer(api_key)), 422, "/connector")


def test_create_destination_without_a_required_option_answers_422(client, api_key):
    body = {"name": "x", "connector": "http", "config": {}}

    assert_error(client.post(f"{API}/destinations", json=body, headers=bearer(api_key)), 422, "/config/url")


def test_create_destination_with_an_unknown_option_answers_422(client, api_key, sink):
    body = {"name": "x", "connector": "http", "config": {"url": sink.url, "colour": "blue"}}

    assert_error(client.post(f"{API}/destinations", json=body, headers=bearer(api_key)), 422, "/config/colour")


def test_create_destination_with_a_config_the_connector_refuses_answers_422(client, api_key):
    for config in ({"url": "ftp://example.com/in"}, {"url": "http://example.com", "method": "DELETE"}):
        body = {"name": "x", "connector": "http", "config": config}
        assert_error(client.post(f"{API}/destinations", json=body, headers=bearer(api_key)), 422, "/config")
    assert client.get(f"{API}/destinations", headers=bearer(api_key)).get_json()["data"] == []


def test_a_destination_used_by_a_sync_cannot_be_deleted(client, api_key, sync):
    destination_id = sync["attributes"]["destination_id"]

    assert_error(client.delete(f"{API}/destinations/{destination_id}", headers=bearer(api_key)), 409)
    client.delete(f"{API}/syncs/{sync['id']}", headers=bearer(api_key))
    response = client.delete(f"{API}/destinations/{destination_id}", headers=bearer(api_key))
    assert response.status_code == 200
    assert response.get_json()["data"]["attributes"]["deleted"] is True


def test_list_destinations_filters_by_connector(client, api_key, sink):
    http = create_destination(client, api_key, sink.url)

    only_http = client.get(f"{API}/destinations?connector=http", headers=bearer(api_key)).get_json()
    none = client.get(f"{API}/destinations?connector=salesforce", headers=bearer(api_key)).get_json()

    assert [item["id"] for item in only_http["data"]] == [http["id"]]
    assert only_http["data"][0]["attributes"]["objects_discoverable"] is True
    assert none["data"] == []


# ---- sources ---------------------------------------------------------------------------------


def test_create_source_hides_the_url_with_its_password(client, api_key, source_url):
    response = client.post(
        f"{API}/sources", json={"name": "wh", "connector": "postgres", "config": {"url": source_url}},
        headers=bearer(api_key),
    )

    assert response.status_code == 201
    attributes = assert_resource(response.get_json()["data"], "reverse_etl_source", "src")
    assert attributes["connector"] == "postgres"
    assert attributes["objects_discoverable"] is False
    assert "url" in attributes["secrets_set"]
    for answer in (response, client.get(f"{API}/sources", headers=bearer(api_key))):
        assert SOURCE_PASSWORD not in answer.get_data(as_text=True)


def test_test_source_connects_to_a_real_postgres(client, api_key, reader_url):
    source = create_source(client, api_key, reader_url)

    response = client.post(f"{API}/sources/{source['id']}/test", headers=bearer(api_key))

    assert response.status_code == 200
    assert response.get_json()["data"]["attributes"]["status"] == "connected"


def test_test_source_never_shows_the_password_of_its_url(client, api_key, source):
    response = client.post(f"{API}/sources/{source['id']}/test", headers=bearer(api_key))

    assert response.status_code == 200
    assert SOURCE_PASSWORD not in response.get_data(as_text=True)


def test_create_source_with_a_url_the_connector_refuses_answers_422(client, api_key):
    body = {"name": "wh", "connector": "postgres", "config": {"url": "mysql://u:p@h/db"}}

    assert_error(client.post(f"{API}/sources", json=body, headers=bearer(api_key)), 422, "/config")


def test_a_destination_connector_is_not_a_source_connector(client, api_key, sink):
    body = {"name": "x", "connector": "http", "config": {"url": sink.url}}

    assert_error(client.post(f"{API}/sources", json=body, headers=bearer(api_key)), 422, "/connector")


def test_a_source_used_by_a_sync_cannot_be_deleted(client, api_key, sync):
    source_id = sync["attributes"]["source_id"]

    assert_error(client.delete(f"{API}/sources/{source_id}", headers=bearer(api_key)), 409)


def test_list_sources_filters_by_connector(client, api_key, source):
    postgres = client.get(f"{API}/sources?connector=postgres", headers=bearer(api_key)).get_json()["data"]
    duckdb = client.get(f"{API}/sources?connector=duckdb", headers=bearer(api_key)).get_json()["data"]

    assert [item["id"] for item in postgres] == [source["id"]]
    assert duckdb == []


def test_sources_and_destinations_are_separate_lists(client, api_key, destination, source):
    destinations = client.get(f"{API}/destinations", headers=bearer(api_key)).get_json()["data"]
    sources = client.get(f"{API}/sources", headers=bearer(api_key)).get_json()["data"]

    assert [item["id"] for item in destinations] == [destination["id"]]
    assert [item["id"] for item in sources] == [source["id"]]
    assert_error(client.get(f"{API}/sources/{destination['id']}", headers=bearer(api_key)), 404)
    assert_error(client.get(f"{API}/destinations/{source['id']}", headers=bearer(api_key)), 404)


# ---- both kinds ------------------------------------------------------------------------------


@pytest.mark.parametrize(("plural", "kind", "prefix"), KINDS)
def test_get_list_and_delete_a_connection(client, api_key, make, plural, kind, prefix):
    created = make(plural)

    got = client.get(f"{API}/{plural}/{created['id']}", headers=bearer(api_key))
    listed = client.get(f"{API}/{plural}", headers=bearer(api_key))
    deleted = client.delete(f"{API}/{plural}/{created['id']}", headers=bearer(api_key))

    assert got.get_json() == {"data": created}
    assert listed.get_json()["data"] == [created]
    assert listed.get_json()["meta"] == {"page": {"limit": 50, "cursor": None}}
    assert deleted.status_code == 200
    assert_resource(deleted.get_json()["data"], kind, prefix)
    assert deleted.get_json()["data"]["attributes"]["deleted"] is True
    assert_error(client.get(f"{API}/{plural}/{created['id']}", headers=bearer(api_key)), 404)


@pytest.mark.parametrize(("plural", "kind", "prefix"), KINDS)
def test_another_workspaces_connection_answers_exactly_like_an_unknown_one(
    client, api_key, other_api_key, make, plural, kind, prefix
):
    theirs = make(plural, key=other_api_key)
    unknown = f"{prefix}_01jzzzzzzzzzzzzzzzzzzzzzzz"

    for method, suffix, body in (
        ("get", "", None), ("put", "", {"name": "mine"}), ("delete", "", None), ("post", "/test", None),
    ):
        foreign = getattr(client, method)(f"{API}/{plural}/{theirs['id']}{suffix}", json=body, headers=bearer(api_key))
        missing = getattr(client, method)(f"{API}/{plural}/{unknown}{suffix}", json=body, headers=bearer(api_key))
        foreign_error = assert_error(foreign, 404)
        missing_error = assert_error(missing, 404)
        assert foreign_error["detail"].replace(theirs["id"], "<id>") == missing_error["detail"].replace(unknown, "<id>")
    assert client.get(f"{API}/{plural}", headers=bearer(api_key)).get_json()["data"] == []
    still = client.get(f"{API}/{plural}/{theirs['id']}", headers=bearer(other_api_key)).get_json()["data"]
    assert still["attributes"]["name"] == theirs["attributes"]["name"]


@pytest.mark.parametrize("plural", ["destinations", "sources"])
def test_connection_bodies_are_validated(client, api_key, plural):
    post = lambda body: client.post(f"{API}/{plural}", json=body, headers=bearer(api_key))  # noqa: E731

    assert_error(post({"connector": "http", "config": {}}), 422, "/name")
    assert_error(post({"name": "x", "config": {}}), 422, "/connector")
    assert_error(post({"name": "x", "connector": "http"}), 422, "/config")
    assert_error(post({"name": "x", "connector": "http", "config": "url=x"}), 422, "/config")
    assert_error(post({"name": "", "connector": "http", "config": {}}), 422, "/name")
    assert_error(post({"name": "x", "connector": "http", "config": {}, "extra": 1}), 422, "/extra")


@pytest.mark.parametrize("option, value", [
    ("rateLimitPerSecond", -5), ("rateLimitPerSecond", "abc"), ("rateLimitPerSecond", [1]),
    ("rateLimitPerSecond", 1e-7), ("maxConcurrency", 0), ("maxConcurrency", True),
])
def test_fleet_limits_must_be_sensible_numbers(client, api_key, sink, option, value):
    body = {"name": "r", "connector": "http", "config": {"url": sink.url, option: value}}
    response = client.post(f"{API}/destinations", json=body, headers=bearer(api_key))
    assert_error(response, 422, f"/config/{option}")


def test_fleet_limits_within_range_are_kept(client, api_key, sink):
    config = {"url": sink.url, "rateLimitPerSecond": 2.5, "maxConcurrency": 3}
    body = {"name": "r", "connector": "http", "config": config}
    response = client.post(f"{API}/destinations", json=body, headers=bearer(api_key))
    assert response.status_code == 201
    assert response.get_json()["data"]["attributes"]["config"]["maxConcurrency"] == 3


@pytest.mark.parametrize("window, pointer", [
    ({"requests": 0, "perSeconds": 10}, "/config/rateLimit/requests"),
    ({"requests": 2.5, "perSeconds": 10}, "/config/rateLimit/requests"),
    ({"requests": 190, "perSeconds": -1}, "/config/rateLimit/perSeconds"),
    ({"requests": 190, "perSeconds": "10"}, "/config/rateLimit/perSeconds"),
    ({"requests": 190}, "/config/rateLimit"),
    ({"requests": 190, "perSeconds": 10, "burst": 5}, "/config/rateLimit"),
    ([190, 10], "/config/rateLimit"),
])
def test_a_rate_window_must_be_whole_requests_over_positive_seconds(
    client, api_key, sink, window, pointer
):
    body = {"name": "r", "connector": "http", "config": {"url": sink.url, "rateLimit": window}}
    response = client.post(f"{API}/destinations", json=body, headers=bearer(api_key))
    assert_error(response, 422, pointer)


def test_a_rate_window_and_a_rate_per_second_are_not_given_together(client, api_key, sink):
    config = {"url": sink.url, "rateLimit": {"requests": 190, "perSeconds": 10},
              "rateLimitPerSecond": 5}
    body = {"name": "r", "connector": "http", "config": config}
    response = client.post(f"{API}/destinations", json=body, headers=bearer(api_key))
    assert_error(response, 422, "/config/rateLimit")


def test_a_rate_window_is_kept_and_used_by_the_fleet(client, api_key, sink):
    from connectors.destinations.base import RateLimit
    from connectors.destinations.http import HttpDestination

    window = {"requests": 190, "perSeconds": 10}
    body = {"name": "r", "connector": "http", "config": {"url": sink.url, "rateLimit": window}}
    response = client.post(f"{API}/destinations", json=body, headers=bearer(api_key))
    assert response.status_code == 201
    assert response.get_json()["data"]["attributes"]["config"]["rateLimit"] == window
    assert HttpDestination({"url": sink.url, "rateLimit": window}).fleet_rate_limit() == \
        RateLimit(190, 10.0)
    assert HttpDestination({"url": sink.url, "rateLimitPerSecond": 5}).fleet_rate_limit() == \
        RateLimit(5, 1.0)
    assert HttpDestination({"url": sink.url}).fleet_rate_limit() == RateLimit(1000, 1.0)
