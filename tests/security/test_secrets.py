"""Secrets stay secret: settings that would break every request are refused when saved, URL
credentials are never returned, a destination's answer never carries its own secrets back,
and a connection moved to another host does not take its stored credentials along."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest

from shared.services import connections, syncs
from tests.api.conftest import assert_error
from tests.conftest import bearer
from tests.engine.conftest import SyncSetup
from tests.fakes.base import FakeServer, Request, Response
from tests.fakes.http_sink import FakeHttpSink
from tests.security.conftest import API

HEADER_SECRET = "Bearer hdr-Secret-51f0c2d9e8"
URL_PASSWORD = "urlPass-7d1e93"
URL_TOKEN = "urlToken-c4b8a2f0"


class EchoingReceiver(FakeServer):
    """Refuses every batch with `status`, quoting the headers and URL it was sent."""

    def __init__(self, status: int) -> None:
        super().__init__()
        self.status = status

    def handle(self, request: Request) -> Response:
        return Response(self.status, f"refused {request.path}?{request.query} with {request.headers}")


def _post(client, key: str, kind: str, connector: str, config: dict):
    body = {"name": "x", "connector": connector, "config": config}
    return client.post(f"{API}/{kind}s", json=body, headers=bearer(key))


@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer token\n"},
    {"Authorization": "Bearer a\r\nX-Injected: 1"},
    {"X-Api-Key": "ключ-1234"},
    {"Bad Name": "value"},
    {"X-Nested": {"a": 1}},
])
def test_header_names_and_values_that_cannot_go_on_the_wire_are_refused_at_save(
    client, api_key, headers
):
    config = {"url": "http://127.0.0.1:9/in", "headers": headers}
    response = _post(client, api_key, "destination", "http", config)

    error = assert_error(response, 422, "/config/headers")
    assert "token\n" not in error["detail"] and "ключ" not in error["detail"]


# NaN and Infinity are no JSON: the API refuses such a body as malformed before anything else.
@pytest.mark.parametrize("raw", ["-5", "0", '"NaN"', '"inf"', '"-Infinity"', "1e9", "true", "[]"])
@pytest.mark.parametrize(("connector", "config"), [
    ("http", {"url": "http://127.0.0.1:9/in"}),
    ("hubspot", {"accessToken": "pat-1"}),
    ("iterable", {"apiKey": "key-1"}),
    ("salesforce", {"instanceUrl": "https://acme.my.salesforce.com", "accessToken": "00D!x"}),
    ("postgres", {"url": "postgresql://u@127.0.0.1:9/db"}),
])
def test_timeout_seconds_must_be_a_finite_positive_number_of_seconds(
    client, api_key, connector, config, raw
):
    body = json.dumps({"name": "x", "connector": connector, "config": config})
    body = body[:-2] + f', "timeoutSeconds": {raw}}}}}'
    response = client.post(f"{API}/destinations", data=body, headers={
        **bearer(api_key), "Content-Type": "application/json"})

    assert_error(response, 422, "/config/timeoutSeconds")


def test_url_credentials_are_stored_but_never_returned(client, api_key):
    with FakeHttpSink() as sink:
        host = urlsplit(sink.url).netloc
        url = f"http://svc:{URL_PASSWORD}@{host}/in?token={URL_TOKEN}&region=eu"
        created = _post(client, api_key, "destination", "http", {"url": url})
        destination_id = created.get_json()["data"]["id"]
        shown = created.get_json()["data"]["attributes"]["config"]["url"]
        # The config as read back, saved again unchanged, keeps the real credentials.
        put = client.put(f"{API}/destinations/{destination_id}",
                         json={"config": {"url": shown, "method": "PUT"}}, headers=bearer(api_key))
        answers = [
            created, put,
            client.get(f"{API}/destinations/{destination_id}", headers=bearer(api_key)),
            client.get(f"{API}/destinations", headers=bearer(api_key)),
            client.post(f"{API}/destinations/{destination_id}/test", headers=bearer(api_key)),
        ]

        assert shown == f"http://REDACTED@{host}/in?token=REDACTED&region=eu"
        for answer in answers:
            text = answer.get_data(as_text=True)
            assert URL_PASSWORD not in text and URL_TOKEN not in text
        assert answers[-1].get_json()["data"]["attributes"]["status"] == "connected"
        (request,) = sink.requests
        assert request.query["token"] == [URL_TOKEN]
        assert request.headers["authorization"].startswith("Basic ")


def test_moving_a_destination_to_another_host_forgets_its_stored_secrets(client, api_key):
    with FakeHttpSink() as first, FakeHttpSink() as second:
        created = _post(client, api_key, "destination", "http",
                        {"url": first.url, "headers": {"Authorization": HEADER_SECRET}})
        destination_id = created.get_json()["data"]["id"]

        moved = client.put(f"{API}/destinations/{destination_id}",
                           json={"config": {"url": second.url}}, headers=bearer(api_key))
        tested = client.post(f"{API}/destinations/{destination_id}/test", headers=bearer(api_key))

        assert moved.get_json()["data"]["attributes"]["secrets_set"] == []
        assert tested.get_json()["data"]["attributes"]["status"] == "connected"
        assert "authorization" not in second.requests[-1].headers

        given = client.put(
            f"{API}/destinations/{destination_id}",
            json={"config": {"url": first.url, "headers": {"Authorization": "Bearer new-token-1"}}},
            headers=bearer(api_key),
        )
        client.post(f"{API}/destinations/{destination_id}/test", headers=bearer(api_key))

        assert given.get_json()["data"]["attributes"]["secrets_set"] == ["headers"]
        assert first.requests[-1].headers["authorization"] == "Bearer new-token-1"


def test_moving_salesforce_to_another_instance_needs_its_token_again(client, api_key):
    created = _post(client, api_key, "destination", "salesforce",
                    {"instanceUrl": "https://acme.my.salesforce.com", "accessToken": "00D!stored"})
    destination_id = created.get_json()["data"]["id"]

    moved = client.put(f"{API}/destinations/{destination_id}",
                       json={"config": {"instanceUrl": "https://evil.example.com"}},
                       headers=bearer(api_key))
    assert_error(moved, 422)

    given = client.put(f"{API}/destinations/{destination_id}",
                       json={"config": {"instanceUrl": "https://other.my.salesforce.com",
                                        "accessToken": "00D!new"}}, headers=bearer(api_key))
    assert given.status_code == 200
    assert given.get_json()["data"]["attributes"]["secrets_set"] == ["accessToken"]


def _echo_sync(account, url: str) -> SyncSetup:
    source = connections.create(account.workspace_id, "source", "memory", "duckdb", {"path": ":memory:"})
    destination = connections.create(
        account.workspace_id, "destination", "echo", "http",
        {"url": url, "headers": {"Authorization": HEADER_SECRET}},
    )
    sync = syncs.create(account.workspace_id, {
        "name": "echo", "sourceId": source.record.id, "destinationId": destination.record.id,
        "objectName": "records", "sourceQuery": "SELECT 1 AS id",
        "fieldMappings": [{"source": "id", "destination": "id", "key": True}],
        "syncMode": "upsert",
    })
    return SyncSetup(account.workspace_id, sync.id, source.record.id, destination.record.id)


@pytest.mark.parametrize("status", [400, 401])
def test_a_destination_quoting_its_own_credentials_back_never_shows_them(
    client, account, driver, status
):
    with EchoingReceiver(status) as receiver:
        host = urlsplit(receiver.url).netloc
        setup = _echo_sync(account, f"http://{host}/in?api_key={URL_TOKEN}")
        run = driver.run(setup)

    texts = [
        run.error or "",
        client.get(f"{API}/dlq?sync_id={setup.sync_id}", headers=bearer(account.key)).get_data(as_text=True),
        client.get(f"{API}/runs/{run.id}", headers=bearer(account.key)).get_data(as_text=True),
        client.get(f"{API}/destinations/{setup.destination_id}", headers=bearer(account.key)).get_data(as_text=True),
    ]
    assert any("refused" in text for text in texts)
    for text in texts:
        assert "hdr-Secret-51f0c2d9e8" not in text
        assert URL_TOKEN not in text
