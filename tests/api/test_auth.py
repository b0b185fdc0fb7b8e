"""Bearer-key authentication on every /api route (missing, malformed, unknown and revoked keys
answer 401 in the error envelope), and the API-key endpoints of a workspace."""

from __future__ import annotations

import pytest

from shared.services.auth import create_api_key
from tests.api.conftest import API, assert_error, assert_resource
from tests.conftest import bearer

X = "retl_sync_01jzzzzzzzzzzzzzzzzzzzzzzz"
ENDPOINTS = [
    ("get", "/syncs"), ("post", "/syncs"), ("get", f"/syncs/{X}"), ("put", f"/syncs/{X}"),
    ("delete", f"/syncs/{X}"), ("post", "/sync/run"), ("post", "/sync/toggle"),
    ("get", "/destinations"), ("post", "/destinations"), ("get", "/destinations/conn_x"),
    ("put", "/destinations/conn_x"), ("delete", "/destinations/conn_x"), ("post", "/destinations/conn_x/test"),
    ("get", "/sources"), ("post", "/sources"), ("get", "/sources/src_x"), ("put", "/sources/src_x"),
    ("delete", "/sources/src_x"), ("post", "/sources/src_x/test"),
    ("get", "/objects?destination_id=conn_x"), ("get", "/fields?destination_id=conn_x&object_name=A"),
    ("get", "/runs"), ("get", "/runs/retl_run_x"), ("post", "/runs/retl_run_x/cancel"),
    ("get", "/dlq"), ("get", "/dlq/stats"), ("post", "/dlq/resolve"),
    ("get", "/api-keys"), ("post", "/api-keys"), ("delete", "/api-keys/key_x"),
]


def _revoked_key(client, api_key: str) -> str:
    issued = client.post(f"{API}/api-keys", json={}, headers=bearer(api_key)).get_json()["data"]
    revoked = client.delete(f"{API}/api-keys/{issued['id']}", headers=bearer(api_key))
    assert revoked.status_code == 200
    return issued["attributes"]["key"]


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Token {key}",
        "{key}",
        "Bearer not-a-retl-key",
        "Bearer retl_sk_unknownunknownunknownunknownunknown",
        "Bearer {key}x",
        "Bearer " + "retl_sk_" + "a" * 5000,
        "Bearer {revoked}",
    ],
    ids=["missing", "empty", "scheme only", "scheme and space", "basic", "token scheme", "no scheme",
         "not a key", "unknown key", "key plus a char", "huge key", "revoked key"],
)
def test_every_api_route_answers_401_without_a_valid_key(client, api_key, authorization):
    headers = {}
    if authorization is not None:
        revoked = _revoked_key(client, api_key) if "{revoked}" in authorization else ""
        headers["Authorization"] = authorization.format(key=api_key, revoked=revoked)

    for method, path in ENDPOINTS:
        response = getattr(client, method)(API + path, json={}, headers=headers)
        error = assert_error(response, 401)
        assert error["code"] == "unauthorized", (method, path)


def test_the_bearer_scheme_is_case_insensitive(client, api_key):
    response = client.get(f"{API}/syncs", headers={"Authorization": f"bearer {api_key}"})

    assert response.status_code == 200


def test_a_valid_key_reaches_every_route(client, api_key):
    for method, path in ENDPOINTS:
        response = getattr(client, method)(API + path, json={}, headers=bearer(api_key))
        assert response.status_code not in (401, 500), (method, path, response.get_json())


def test_ops_routes_need_no_key(client):
    for path in ("/healthz", "/readyz", "/api/openapi.json"):
        assert client.get(path).status_code == 200, path


# ---- API keys --------------------------------------------------------------------------------


def test_create_api_key_shows_the_key_once_and_it_authenticates(client, api_key):
    response = client.post(f"{API}/api-keys", json={}, headers=bearer(api_key))

    assert response.status_code == 201
    data = response.get_json()["data"]
    attributes = assert_resource(data, "api_key", "key")
    new_key = attributes["key"]
    assert new_key.startswith("retl_sk_")
    assert attributes["display_hint"] == new_key[:12] + "..."
    assert client.get(f"{API}/syncs", headers=bearer(new_key)).status_code == 200
    listed = client.get(f"{API}/api-keys", headers=bearer(api_key)).get_json()["data"]
    assert data["id"] in [item["id"] for item in listed]
    assert all("key" not in item["attributes"] for item in listed)
    assert new_key not in client.get(f"{API}/api-keys", headers=bearer(api_key)).get_data(as_text=True)


def test_a_new_key_belongs_to_the_callers_workspace(client, api_key, destination):
    new_key = client.post(f"{API}/api-keys", json={}, headers=bearer(api_key)).get_json()["data"]["attributes"]["key"]

    listed = client.get(f"{API}/destinations", headers=bearer(new_key)).get_json()["data"]

    assert [item["id"] for item in listed] == [destination["id"]]


def test_create_api_key_refuses_a_body_with_fields(client, api_key):
    assert_error(client.post(f"{API}/api-keys", json={"workspace": "globex"}, headers=bearer(api_key)), 422, "/workspace")


def test_a_revoked_key_answers_401_and_stays_listed_as_revoked(client, api_key):
    issued = client.post(f"{API}/api-keys", json={}, headers=bearer(api_key)).get_json()["data"]

    revoked = client.delete(f"{API}/api-keys/{issued['id']}", headers=bearer(api_key))

    assert revoked.status_code == 200
    assert revoked.get_json()["data"]["attributes"]["revoked_at"] is not None
    assert_error(client.get(f"{API}/syncs", headers=bearer(issued["attributes"]["key"])), 401)
    listed = {item["id"]: item for item in client.get(f"{API}/api-keys", headers=bearer(api_key)).get_json()["data"]}
    assert listed[issued["id"]]["attributes"]["revoked_at"] is not None
    assert client.get(f"{API}/syncs", headers=bearer(api_key)).status_code == 200


def test_api_keys_of_another_workspace_are_neither_listed_nor_revocable(client, api_key, other_api_key):
    theirs = client.post(f"{API}/api-keys", json={}, headers=bearer(other_api_key)).get_json()["data"]

    ours = client.get(f"{API}/api-keys", headers=bearer(api_key)).get_json()["data"]
    assert theirs["id"] not in [item["id"] for item in ours]
    foreign = assert_error(client.delete(f"{API}/api-keys/{theirs['id']}", headers=bearer(api_key)), 404)
    missing = assert_error(client.delete(f"{API}/api-keys/key_01jzzzzzzzzzzzzzzzzzzzzzzz", headers=bearer(api_key)), 404)
    assert foreign["detail"].replace(theirs["id"], "<id>") == missing["detail"].replace("key_01jzzzzzzzzzzzzzzzzzzzzzzz", "<id>")
    assert client.get(f"{API}/syncs", headers=bearer(theirs["attributes"]["key"])).status_code == 200


def test_two_keys_of_one_workspace_see_the_same_objects(client, api_key, destination):
    second = create_api_key("acme").key

    listed = client.get(f"{API}/destinations", headers=bearer(second)).get_json()["data"]

    assert [item["id"] for item in listed] == [destination["id"]]
