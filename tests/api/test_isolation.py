"""One workspace never reaches another: every route of the URL map that takes an id answers 404
to each of another workspace's ids (new routes are walked as they come), and a key reaches
nothing but its own workspace; revoked, altered or query-string keys answer 401."""

from __future__ import annotations

import psycopg
import pytest

from tests.api.conftest import API, assert_error, insert_dlq_entry, insert_run
from tests.conftest import bearer

METHODS = ("GET", "POST", "PUT", "DELETE")


def _their_objects(client, other_api_key, sync, database_url) -> dict[str, str]:
    """Ids of every kind of object, all owned by the other workspace (`sync` is built with it)."""
    run = insert_run(database_url, sync["id"], status="queued")
    entry = insert_dlq_entry(database_url, sync["id"], run, key="a")
    key = client.post(f"{API}/api-keys", json={}, headers=bearer(other_api_key)).get_json()["data"]
    return {
        "sync": sync["id"], "run": run, "dlq_entry": entry, "api_key": key["id"],
        "destination": sync["attributes"]["destination_id"], "source": sync["attributes"]["source_id"],
    }


@pytest.fixture
def their_sync(client, other_api_key, sink, source_url):
    from tests.api.conftest import create_destination, create_source, create_sync

    destination = create_destination(client, other_api_key, sink.url)
    create_source(client, other_api_key, source_url)
    return create_sync(client, other_api_key, destination["id"])


def _id_routes(app) -> list[tuple[str, str, str]]:
    """(method, rule, argument) of every /api route that takes an id in its path."""
    routes = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(API) or not rule.arguments:
            continue
        (argument,) = rule.arguments
        for method in sorted(rule.methods & set(METHODS)):
            routes.append((method, rule.rule, argument))
    return routes


def test_every_id_route_answers_404_to_every_id_of_another_workspace(
    app, client, api_key, other_api_key, their_sync, database_url
):
    theirs = _their_objects(client, other_api_key, their_sync, database_url)
    routes = _id_routes(app)
    assert len(routes) >= 14, routes  # syncs, destinations, sources, runs, api-keys: all walked

    for method, rule, argument in routes:
        for kind, their_id in theirs.items():
            path = rule.replace(f"<{argument}>", their_id)
            response = client.open(path, method=method, json={}, headers=bearer(api_key))
            assert response.status_code == 404, (method, path, kind, response.get_json())
            assert_error(response, 404)

    # Nothing of theirs changed: the sync is there, the run still queued, the key still works.
    own = bearer(other_api_key)
    assert client.get(f"{API}/syncs/{theirs['sync']}", headers=own).status_code == 200
    assert client.get(f"{API}/runs/{theirs['run']}", headers=own).get_json()["data"]["attributes"]["status"] == "queued"
    for kind in ("destination", "source"):
        assert client.get(f"{API}/{kind}s/{theirs[kind]}", headers=own).status_code == 200
    listed = client.get(f"{API}/api-keys", headers=own).get_json()["data"]
    assert all(item["attributes"]["revoked_at"] is None for item in listed)


def test_ids_of_another_workspace_in_bodies_and_queries_answer_404(
    client, api_key, other_api_key, their_sync, database_url
):
    theirs = _their_objects(client, other_api_key, their_sync, database_url)
    headers = bearer(api_key)

    for response in (
        client.post(f"{API}/sync/run", json={"syncId": theirs["sync"]}, headers=headers),
        client.post(f"{API}/sync/run", json={"syncIds": [theirs["sync"]]}, headers=headers),
        client.post(f"{API}/sync/toggle", json={"syncId": theirs["sync"], "enabled": False}, headers=headers),
        client.post(f"{API}/dlq/resolve", json={"entryIds": [theirs["dlq_entry"]], "resolution": "x"},
                    headers=headers),
        client.get(f"{API}/objects", query_string={"destination_id": theirs["destination"]}, headers=headers),
        client.get(f"{API}/fields", query_string={"destination_id": theirs["destination"], "object_name": "records"},
                   headers=headers),
    ):
        assert_error(response, 404)
    for path, name in (("/runs", "sync_id"), ("/dlq", "sync_id"), ("/syncs", "destination_id")):
        listed = client.get(API + path, query_string={name: theirs["sync" if name == "sync_id" else "destination"]},
                            headers=headers)
        assert listed.status_code == 200 and listed.get_json()["data"] == [], path


def test_a_key_sees_nothing_of_another_workspace(client, api_key, other_api_key, their_sync, database_url):
    _their_objects(client, other_api_key, their_sync, database_url)

    for path in ("/syncs", "/destinations", "/sources", "/runs", "/dlq", "/dlq?resolved=true"):
        response = client.get(API + path, headers=bearer(api_key))
        assert response.status_code == 200 and response.get_json()["data"] == [], path
    keys = client.get(f"{API}/api-keys", headers=bearer(api_key)).get_json()["data"]
    stats = client.get(f"{API}/dlq/stats", headers=bearer(api_key)).get_json()["data"]["attributes"]
    assert len(keys) == 1
    assert stats["open_count"] == 0 and stats["by_error_code"] == {}


def _one_character_changed(key: str) -> list[str]:
    """The key with one character replaced, at its start (past the prefix), middle and end."""
    variants = []
    for index in (len("retl_sk_"), len(key) // 2, len(key) - 1):
        replacement = "A" if key[index] != "A" else "B"
        variants.append(key[:index] + replacement + key[index + 1:])
    return variants


def test_a_key_with_one_character_changed_answers_401(client, api_key):
    for altered in _one_character_changed(api_key):
        error = assert_error(client.get(f"{API}/syncs", headers=bearer(altered)), 401)
        assert error["code"] == "unauthorized"
    assert client.get(f"{API}/syncs", headers=bearer(api_key)).status_code == 200


@pytest.mark.parametrize("parameter", ["api_key", "key", "access_token", "token", "Authorization"])
def test_a_key_in_the_query_string_answers_401(client, api_key, parameter):
    for value in (api_key, f"Bearer {api_key}"):
        response = client.get(f"{API}/syncs", query_string={parameter: value})
        assert_error(response, 401)


def test_a_revoked_key_answers_401_everywhere_at_once(client, api_key, database_url):
    issued = client.post(f"{API}/api-keys", json={}, headers=bearer(api_key)).get_json()["data"]
    key = issued["attributes"]["key"]
    assert client.get(f"{API}/syncs", headers=bearer(key)).status_code == 200

    client.delete(f"{API}/api-keys/{issued['id']}", headers=bearer(api_key))

    for path in ("/syncs", "/runs", "/api-keys", "/dlq/stats"):
        assert_error(client.get(API + path, headers=bearer(key)), 401)
    with psycopg.connect(database_url) as conn:
        revoked = conn.execute("SELECT revoked_at FROM api_keys WHERE id = %s", (issued["id"],)).fetchone()[0]
    assert revoked is not None
