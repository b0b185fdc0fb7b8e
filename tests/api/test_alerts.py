"""Alert channels through the API: create, list, get, update, delete and a test alert sent to a
local receiver; URLs of Slack channels and webhook headers are never returned."""

from __future__ import annotations

import json

import psycopg
import pytest

from tests.api.conftest import API, assert_error, assert_resource
from tests.conftest import bearer
from tests.fakes.alert_receiver import FakeSlackWebhook, FakeWebhook

HOOK_TOKEN = "Bearer hook-token-Never-Shown-4R"


@pytest.fixture(autouse=True)
def loopback_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The receivers of these tests listen on 127.0.0.1, which egress must allow."""
    monkeypatch.setenv("RETL_EGRESS_ALLOW", "127.0.0.1")


def create(client, key, **body):
    return client.post(f"{API}/alerts", json=body, headers=bearer(key))


def test_a_slack_channel_is_created_without_showing_its_url(client, api_key, database_url):
    url = "https://hooks.slack.com/services/T0/B0/s3cret-Never-Shown-8P"
    response = create(client, api_key, name="ops", kind="slack", config={"url": url})

    assert response.status_code == 201, response.get_json()
    attributes = assert_resource(response.get_json()["data"], "reverse_etl_alert_channel", "retl_alert")
    assert attributes["config"] == {}
    assert attributes["secrets_set"] == ["url"]
    assert attributes["events"] == ["sync_failing", "sync_recovered", "dlq_threshold", "run_held"]
    assert attributes["dlq_threshold"] == 100
    assert attributes["enabled"] is True
    assert "s3cret" not in json.dumps(client.get(f"{API}/alerts", headers=bearer(api_key)).get_json())
    with psycopg.connect(database_url) as conn:
        stored = conn.execute("SELECT config_encrypted FROM alert_channels").fetchone()[0]
    assert "s3cret" not in stored


def test_a_webhook_shows_its_url_but_not_its_headers(client, api_key):
    response = create(client, api_key, name="pager", kind="webhook", events=["run_failed"],
                      dlqThreshold=5, config={"url": "https://hooks.example.com/retl",
                                              "headers": {"Authorization": HOOK_TOKEN}})

    attributes = response.get_json()["data"]["attributes"]
    assert attributes["config"] == {"url": "https://hooks.example.com/retl"}
    assert attributes["secrets_set"] == ["headers"]
    assert attributes["events"] == ["run_failed"]
    assert attributes["dlq_threshold"] == 5
    assert "hook-token" not in json.dumps(response.get_json())


def test_update_merges_config_so_the_secret_may_be_left_out(client, api_key):
    created = create(client, api_key, name="ops", kind="slack",
                     config={"url": "https://hooks.slack.com/services/T0/B0/x"}).get_json()["data"]

    response = client.put(f"{API}/alerts/{created['id']}", headers=bearer(api_key),
                          json={"name": "ops-night", "enabled": False, "events": ["run_failed"]})

    attributes = response.get_json()["data"]["attributes"]
    assert (attributes["name"], attributes["enabled"], attributes["events"]) == (
        "ops-night", False, ["run_failed"])
    assert attributes["secrets_set"] == ["url"]


def test_list_get_and_delete_stay_inside_the_workspace(client, api_key, other_api_key):
    created = create(client, api_key, name="ops", kind="webhook",
                     config={"url": "https://hooks.example.com/a"}).get_json()["data"]
    path = f"{API}/alerts/{created['id']}"

    assert client.get(path, headers=bearer(other_api_key)).status_code == 404
    assert client.delete(path, headers=bearer(other_api_key)).status_code == 404
    assert client.get(f"{API}/alerts", headers=bearer(other_api_key)).get_json()["data"] == []
    listed = client.get(f"{API}/alerts", headers=bearer(api_key)).get_json()
    assert [item["id"] for item in listed["data"]] == [created["id"]]
    assert listed["meta"]["page"]["cursor"] is None

    deleted = client.delete(path, headers=bearer(api_key))
    assert deleted.get_json()["data"]["attributes"]["deleted"] is True
    assert client.get(path, headers=bearer(api_key)).status_code == 404


@pytest.mark.parametrize(("body", "pointer"), [
    ({"name": "x", "kind": "email", "config": {"url": "https://a.example"}}, "/kind"),
    ({"name": "x", "kind": "slack", "config": {}}, "/config/url"),
    ({"name": "x", "kind": "slack", "config": {"url": "ftp://a.example/x"}}, "/config/url"),
    ({"name": "x", "kind": "slack", "config": {"url": "https://a.example", "headers": {}}},
     "/config/headers"),
    ({"name": "x", "kind": "webhook", "config": {"url": "https://a.example", "headers": {"a": 1}}},
     "/config/headers/a"),
    ({"name": "x", "kind": "webhook",
      "config": {"url": "https://a.example", "headers": {"X-A": "b\r\nX-Injected: c"}}},
     "/config/headers/X-A"),
    # A receiver is a connection like any other: metadata and link-local addresses are refused.
    ({"name": "x", "kind": "webhook", "config": {"url": "http://169.254.169.254/latest"}},
     "/config/url"),
    ({"name": "x", "kind": "slack", "config": {"url": "http://[fe80::1]/hook"}}, "/config/url"),
    ({"name": "x", "kind": "webhook", "config": {"url": "https://a.example"}, "events": ["spam"]},
     "/events/0"),
    ({"name": "x", "kind": "webhook", "config": {"url": "https://a.example"}, "dlqThreshold": 0},
     "/dlqThreshold"),
])
def test_invalid_channels_are_refused(client, api_key, body, pointer):
    assert_error(create(client, api_key, **body), 422, pointer)


def test_a_test_alert_reaches_a_slack_webhook_in_slacks_format(client, api_key):
    with FakeSlackWebhook() as slack:
        created = create(client, api_key, name="ops", kind="slack",
                         config={"url": slack.url + slack.path}).get_json()["data"]

        response = client.post(f"{API}/alerts/{created['id']}/test", headers=bearer(api_key))

    attributes = response.get_json()["data"]["attributes"]
    assert attributes["last_delivery_status"] == "delivered", attributes
    (message,) = slack.received
    assert "test alert" in message["text"]
    assert message["blocks"][0]["type"] == "section"


def test_a_refused_test_alert_is_reported_on_the_channel(client, api_key):
    with FakeWebhook(required_headers={"Authorization": HOOK_TOKEN}) as hook:
        created = create(client, api_key, name="ops", kind="webhook",
                         config={"url": hook.url + hook.path,
                                 "headers": {"Authorization": "Bearer wrong"}}).get_json()["data"]

        response = client.post(f"{API}/alerts/{created['id']}/test", headers=bearer(api_key))

    attributes = response.get_json()["data"]["attributes"]
    assert attributes["last_delivery_status"] == "failed"
    assert attributes["last_delivery_error"] == "the receiver answered HTTP 403"
    assert hook.received == []


def test_the_openapi_document_lists_the_alert_endpoints(client):
    paths = client.get("/api/openapi.json").get_json()["paths"]

    assert set(paths[f"{API}/alerts"]) == {"get", "post"}
    assert set(paths[f"{API}/alerts/{{id}}"]) == {"get", "put", "delete"}
    assert set(paths[f"{API}/alerts/{{id}}/test"]) == {"post"}
