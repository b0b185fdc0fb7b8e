"""Sync definitions through the API: list (filters), create (default source, mode checks), get,
update, delete and toggle, with the seed's response shapes and workspace isolation."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.api.conftest import (
    API,
    assert_error,
    assert_resource,
    create_destination,
    create_source,
    create_sync,
    insert_run,
    sync_body,
)
from tests.conftest import bearer

SYNC_ATTRIBUTES = {
    "name", "source_query", "source_id", "destination_id", "object_name", "field_mappings",
    "sync_mode", "enabled", "schedule", "guard", "next_run_at", "created_at", "updated_at",
}


def test_create_sync_answers_201_with_the_seed_shape(client, api_key, destination, source):
    body = sync_body(destination["id"])
    response = client.post(f"{API}/syncs", json=body, headers=bearer(api_key))

    assert response.status_code == 201
    data = response.get_json()["data"]
    attributes = assert_resource(data, "reverse_etl_sync", "retl_sync")
    assert set(attributes) == SYNC_ATTRIBUTES
    assert attributes["name"] == body["name"]
    assert attributes["source_query"] == body["sourceQuery"]
    assert attributes["destination_id"] == destination["id"]
    assert attributes["source_id"] == source["id"]
    assert attributes["object_name"] == "records"
    assert attributes["sync_mode"] == "upsert"
    assert attributes["enabled"] is True
    assert attributes["schedule"] == {"type": "cron", "expression": "15 */4 * * *", "timezone": "UTC"}
    assert attributes["field_mappings"] == [
        {"source": "account_id", "destination": "External_Id__c", "key": True},
        {"source": "name", "destination": "Name", "key": False},
    ]
    assert attributes["next_run_at"] is not None
    assert attributes["created_at"] == attributes["updated_at"]


def test_create_then_get_returns_the_same_sync(client, api_key, sync):
    response = client.get(f"{API}/syncs/{sync['id']}", headers=bearer(api_key))

    assert response.status_code == 200
    assert response.get_json() == {"data": sync}


def test_schedule_defaults_to_manual_without_a_next_run(client, api_key, destination, source):
    body = sync_body(destination["id"])
    del body["schedule"]
    created = client.post(f"{API}/syncs", json=body, headers=bearer(api_key)).get_json()["data"]

    assert created["attributes"]["schedule"] == {"type": "manual"}
    assert created["attributes"]["next_run_at"] is None


def test_cron_timezone_defaults_to_utc(client, api_key, destination, source):
    sync = create_sync(client, api_key, destination["id"], schedule={"type": "cron", "expression": "0 * * * *"})

    assert sync["attributes"]["schedule"] == {"type": "cron", "expression": "0 * * * *", "timezone": "UTC"}


def test_interval_schedule_is_accepted(client, api_key, destination, source):
    sync = create_sync(client, api_key, destination["id"], schedule={"type": "interval", "every": "15m"})

    assert sync["attributes"]["schedule"] == {"type": "interval", "every": "15m"}
    assert sync["attributes"]["next_run_at"] is not None


def test_insert_mode_needs_no_key_mapping(client, api_key, destination, source):
    mappings = [{"source": "name", "destination": "Name"}]
    sync = create_sync(client, api_key, destination["id"], syncMode="insert", fieldMappings=mappings)

    assert sync["attributes"]["sync_mode"] == "insert"


def test_every_mode_of_the_http_destination_is_accepted(client, api_key, destination, source):
    for mode in ("upsert", "insert", "update", "delete", "mirror"):
        sync = create_sync(client, api_key, destination["id"], syncMode=mode, name=f"sync_{mode}")
        assert sync["attributes"]["sync_mode"] == mode


def test_source_id_defaults_to_the_first_source_created(client, api_key, destination, source_url):
    first = create_source(client, api_key, source_url, name="first")
    create_source(client, api_key, source_url, name="second")

    sync = create_sync(client, api_key, destination["id"])

    assert sync["attributes"]["source_id"] == first["id"]


def test_an_explicit_source_id_is_kept(client, api_key, destination, source_url):
    create_source(client, api_key, source_url, name="first")
    second = create_source(client, api_key, source_url, name="second")

    sync = create_sync(client, api_key, destination["id"], sourceId=second["id"])

    assert sync["attributes"]["source_id"] == second["id"]


def test_create_without_any_source_answers_422_naming_source_id(client, api_key, destination):
    response = client.post(f"{API}/syncs", json=sync_body(destination["id"]), headers=bearer(api_key))

    error = assert_error(response, 422, "/sourceId")
    assert "source" in error["detail"]


def test_create_with_an_unknown_source_answers_422(client, api_key, destination, source):
    body = sync_body(destination["id"], sourceId="src_01jzzzzzzzzzzzzzzzzzzzzzzz")

    assert_error(client.post(f"{API}/syncs", json=body, headers=bearer(api_key)), 422, "/sourceId")


def test_create_with_an_unknown_destination_answers_422(client, api_key, source):
    body = sync_body("conn_01jzzzzzzzzzzzzzzzzzzzzzzz")

    assert_error(client.post(f"{API}/syncs", json=body, headers=bearer(api_key)), 422, "/destinationId")


def test_another_workspaces_destination_and_source_answer_like_unknown_ones(
    client, api_key, other_api_key, sink, source_url, source
):
    theirs = create_destination(client, other_api_key, sink.url)
    their_source = create_source(client, other_api_key, source_url)
    ours = create_destination(client, api_key, sink.url)

    wrong_destination = client.post(f"{API}/syncs", json=sync_body(theirs["id"]), headers=bearer(api_key))
    unknown_destination = client.post(
        f"{API}/syncs", json=sync_body("conn_01jzzzzzzzzzzzzzzzzzzzzzzz"), headers=bearer(api_key)
    )
    wrong_source = client.post(
        f"{API}/syncs", json=sync_body(ours["id"], sourceId=their_source["id"]), headers=bearer(api_key)
    )

    assert_error(wrong_destination, 422, "/destinationId")
    assert_error(wrong_source, 422, "/sourceId")
    assert wrong_destination.get_json()["errors"][0]["detail"].replace(theirs["id"], "X") == \
        unknown_destination.get_json()["errors"][0]["detail"].replace("conn_01jzzzzzzzzzzzzzzzzzzzzzzz", "X")


def test_a_mode_the_api_does_not_know_answers_422_at_sync_mode(client, api_key, destination, source):
    body = sync_body(destination["id"], syncMode="merge_everything")

    assert_error(client.post(f"{API}/syncs", json=body, headers=bearer(api_key)), 422, "/syncMode")


def test_upsert_without_a_key_mapping_answers_422_at_field_mappings(client, api_key, destination, source):
    body = sync_body(destination["id"], fieldMappings=[{"source": "name", "destination": "Name"}])

    assert_error(client.post(f"{API}/syncs", json=body, headers=bearer(api_key)), 422, "/fieldMappings")


def test_nothing_is_stored_when_a_create_is_refused(client, api_key, destination, source):
    client.post(f"{API}/syncs", json=sync_body(destination["id"], syncMode="nope"), headers=bearer(api_key))

    listed = client.get(f"{API}/syncs", headers=bearer(api_key)).get_json()
    assert listed["data"] == []


# ---- list --------------------------------------------------------------------------------------


def test_list_syncs_answers_the_seed_shape_newest_first(client, api_key, destination, source):
    older = create_sync(client, api_key, destination["id"], name="older")
    newer = create_sync(client, api_key, destination["id"], name="newer")

    response = client.get(f"{API}/syncs", headers=bearer(api_key))

    assert response.status_code == 200
    document = response.get_json()
    assert [item["id"] for item in document["data"]] == [newer["id"], older["id"]]
    assert document["meta"] == {"page": {"limit": 50, "cursor": None}}
    for item in document["data"]:
        assert set(assert_resource(item, "reverse_etl_sync", "retl_sync")) == SYNC_ATTRIBUTES


def test_list_syncs_filters_by_destination_id(client, api_key, sink, source):
    first = create_destination(client, api_key, sink.url, name="one")
    second = create_destination(client, api_key, sink.url, name="two")
    to_first = create_sync(client, api_key, first["id"])
    create_sync(client, api_key, second["id"])

    response = client.get(f"{API}/syncs?destination_id={first['id']}", headers=bearer(api_key))

    assert [item["id"] for item in response.get_json()["data"]] == [to_first["id"]]


def test_list_syncs_filters_by_enabled(client, api_key, destination, source):
    active = create_sync(client, api_key, destination["id"], name="active")
    paused = create_sync(client, api_key, destination["id"], name="paused", enabled=False)

    enabled = client.get(f"{API}/syncs?enabled=true", headers=bearer(api_key)).get_json()["data"]
    disabled = client.get(f"{API}/syncs?enabled=false", headers=bearer(api_key)).get_json()["data"]

    assert [item["id"] for item in enabled] == [active["id"]]
    assert [item["id"] for item in disabled] == [paused["id"]]
    assert paused["attributes"]["next_run_at"] is None


def test_list_syncs_filters_combine(client, api_key, sink, source):
    first = create_destination(client, api_key, sink.url, name="one")
    second = create_destination(client, api_key, sink.url, name="two")
    create_sync(client, api_key, first["id"], enabled=True)
    wanted = create_sync(client, api_key, first["id"], enabled=False)
    create_sync(client, api_key, second["id"], enabled=False)

    response = client.get(
        f"{API}/syncs?destination_id={first['id']}&enabled=false", headers=bearer(api_key)
    )

    assert [item["id"] for item in response.get_json()["data"]] == [wanted["id"]]


def test_list_syncs_shows_only_the_callers_workspace(client, api_key, other_api_key, sync):
    theirs = client.get(f"{API}/syncs", headers=bearer(other_api_key)).get_json()
    ours = client.get(f"{API}/syncs", headers=bearer(api_key)).get_json()

    assert theirs["data"] == []
    assert [item["id"] for item in ours["data"]] == [sync["id"]]


def test_list_syncs_with_an_unknown_query_parameter_answers_422(client, api_key):
    response = client.get(f"{API}/syncs?colour=blue", headers=bearer(api_key))

    error = assert_error(response, 422, "/colour")
    assert error["source"]["parameter"] == "colour"


def test_list_syncs_with_a_non_boolean_enabled_answers_422(client, api_key):
    assert_error(client.get(f"{API}/syncs?enabled=maybe", headers=bearer(api_key)), 422, "/enabled")


# ---- get / 404 -------------------------------------------------------------------------------


def _not_found_shape(response: Any, unknown_id: str) -> dict[str, Any]:
    error = assert_error(response, 404)
    return {**error, "detail": error["detail"].replace(unknown_id, "<id>")}


def test_get_sync_of_another_workspace_answers_exactly_like_an_unknown_id(
    client, api_key, other_api_key, sync
):
    unknown = "retl_sync_01jzzzzzzzzzzzzzzzzzzzzzzz"
    foreign = client.get(f"{API}/syncs/{sync['id']}", headers=bearer(other_api_key))
    missing = client.get(f"{API}/syncs/{unknown}", headers=bearer(other_api_key))

    assert _not_found_shape(foreign, sync["id"]) == _not_found_shape(missing, unknown)


def test_get_sync_with_a_query_parameter_answers_422(client, api_key, sync):
    assert_error(client.get(f"{API}/syncs/{sync['id']}?x=1", headers=bearer(api_key)), 422, "/x")


# ---- update ----------------------------------------------------------------------------------


def test_update_changes_only_the_fields_given(client, api_key, sync):
    body = {"schedule": {"type": "cron", "expression": "0 */2 * * *", "timezone": "UTC"}}
    response = client.put(f"{API}/syncs/{sync['id']}", json=body, headers=bearer(api_key))

    assert response.status_code == 200
    attributes = assert_resource(response.get_json()["data"], "reverse_etl_sync", "retl_sync")
    assert attributes["schedule"] == body["schedule"]
    before = sync["attributes"]
    for unchanged in ("name", "source_query", "destination_id", "field_mappings", "sync_mode", "enabled"):
        assert attributes[unchanged] == before[unchanged]
    assert attributes["updated_at"] >= before["updated_at"]
    stored = client.get(f"{API}/syncs/{sync['id']}", headers=bearer(api_key)).get_json()["data"]
    assert stored["attributes"]["schedule"] == body["schedule"]


def test_update_checks_the_merged_sync(client, api_key, sync):
    # Switching an upsert to a mapping without a key is refused, as on create.
    body = {"fieldMappings": [{"source": "name", "destination": "Name"}]}
    response = client.put(f"{API}/syncs/{sync['id']}", json=body, headers=bearer(api_key))

    assert_error(response, 422, "/fieldMappings")
    stored = client.get(f"{API}/syncs/{sync['id']}", headers=bearer(api_key)).get_json()["data"]
    assert stored["attributes"]["field_mappings"] == sync["attributes"]["field_mappings"]


def test_update_to_insert_without_key_is_accepted(client, api_key, sync):
    body = {"syncMode": "insert", "fieldMappings": [{"source": "name", "destination": "Name"}]}
    response = client.put(f"{API}/syncs/{sync['id']}", json=body, headers=bearer(api_key))

    assert response.status_code == 200
    assert response.get_json()["data"]["attributes"]["sync_mode"] == "insert"


def test_update_with_an_invalid_cron_answers_422_at_the_expression(client, api_key, sync):
    body = {"schedule": {"type": "cron", "expression": "61 * * * *"}}
    response = client.put(f"{API}/syncs/{sync['id']}", json=body, headers=bearer(api_key))

    assert_error(response, 422, "/schedule/expression")


def test_update_with_an_empty_body_changes_nothing(client, api_key, sync):
    response = client.put(f"{API}/syncs/{sync['id']}", json={}, headers=bearer(api_key))

    assert response.status_code == 200
    assert response.get_json()["data"]["attributes"] == sync["attributes"]


def test_update_of_another_workspaces_sync_answers_404_and_changes_nothing(
    client, api_key, other_api_key, sync
):
    response = client.put(f"{API}/syncs/{sync['id']}", json={"name": "hijacked"}, headers=bearer(other_api_key))

    assert_error(response, 404)
    stored = client.get(f"{API}/syncs/{sync['id']}", headers=bearer(api_key)).get_json()["data"]
    assert stored["attributes"]["name"] == sync["attributes"]["name"]


def test_update_disabling_clears_next_run_and_enabling_sets_it(client, api_key, sync):
    off = client.put(f"{API}/syncs/{sync['id']}", json={"enabled": False}, headers=bearer(api_key))
    on = client.put(f"{API}/syncs/{sync['id']}", json={"enabled": True}, headers=bearer(api_key))

    assert off.get_json()["data"]["attributes"]["next_run_at"] is None
    assert on.get_json()["data"]["attributes"]["next_run_at"] is not None


# ---- delete ----------------------------------------------------------------------------------


def test_delete_sync_answers_the_seed_shape_and_hides_the_sync(client, api_key, sync):
    response = client.delete(f"{API}/syncs/{sync['id']}", headers=bearer(api_key))

    assert response.status_code == 200
    data = response.get_json()["data"]
    attributes = assert_resource(data, "reverse_etl_sync", "retl_sync")
    assert data["id"] == sync["id"]
    assert attributes["deleted"] is True
    assert set(attributes) == {"deleted", "deleted_at"}
    assert_error(client.get(f"{API}/syncs/{sync['id']}", headers=bearer(api_key)), 404)
    assert client.get(f"{API}/syncs", headers=bearer(api_key)).get_json()["data"] == []
    assert_error(client.delete(f"{API}/syncs/{sync['id']}", headers=bearer(api_key)), 404)


def test_delete_cancels_the_queued_run(client, api_key, sync):
    run = client.post(f"{API}/sync/run", json={"syncId": sync["id"]}, headers=bearer(api_key)).get_json()["data"]

    client.delete(f"{API}/syncs/{sync['id']}", headers=bearer(api_key))

    stored = client.get(f"{API}/runs/{run['id']}", headers=bearer(api_key)).get_json()["data"]
    assert stored["attributes"]["status"] == "cancelled"


def test_delete_of_another_workspaces_sync_answers_404_and_keeps_it(client, api_key, other_api_key, sync):
    assert_error(client.delete(f"{API}/syncs/{sync['id']}", headers=bearer(other_api_key)), 404)

    assert client.get(f"{API}/syncs/{sync['id']}", headers=bearer(api_key)).status_code == 200


# ---- toggle ----------------------------------------------------------------------------------


def test_toggle_disables_and_enables_a_sync(client, api_key, sync):
    off = client.post(f"{API}/sync/toggle", json={"syncId": sync["id"], "enabled": False}, headers=bearer(api_key))

    assert off.status_code == 200
    data = off.get_json()["data"]
    assert data["id"] == sync["id"]
    attributes = assert_resource(data, "reverse_etl_sync", "retl_sync")
    assert attributes["enabled"] is False
    assert attributes["next_run_at"] is None
    listed = client.get(f"{API}/syncs?enabled=false", headers=bearer(api_key)).get_json()["data"]
    assert [item["id"] for item in listed] == [sync["id"]]

    on = client.post(f"{API}/sync/toggle", json={"syncId": sync["id"], "enabled": True}, headers=bearer(api_key))
    assert on.get_json()["data"]["attributes"]["enabled"] is True
    assert on.get_json()["data"]["attributes"]["next_run_at"] is not None


def test_toggle_needs_sync_id_and_enabled(client, api_key, sync):
    missing_enabled = client.post(f"{API}/sync/toggle", json={"syncId": sync["id"]}, headers=bearer(api_key))
    missing_id = client.post(f"{API}/sync/toggle", json={"enabled": True}, headers=bearer(api_key))
    wrong_type = client.post(
        f"{API}/sync/toggle", json={"syncId": sync["id"], "enabled": "sometimes"}, headers=bearer(api_key)
    )

    assert_error(missing_enabled, 422, "/enabled")
    assert_error(missing_id, 422, "/syncId")
    assert_error(wrong_type, 422, "/enabled")


def test_toggle_of_an_unknown_or_foreign_sync_answers_404(client, api_key, other_api_key, sync):
    foreign = client.post(
        f"{API}/sync/toggle", json={"syncId": sync["id"], "enabled": False}, headers=bearer(other_api_key)
    )
    unknown = client.post(
        f"{API}/sync/toggle", json={"syncId": "retl_sync_nope", "enabled": False}, headers=bearer(api_key)
    )

    assert_error(foreign, 404)
    assert_error(unknown, 404)
    stored = client.get(f"{API}/syncs/{sync['id']}", headers=bearer(api_key)).get_json()["data"]
    assert stored["attributes"]["enabled"] is True


# ---- /v1 alias -------------------------------------------------------------------------------


def test_v1_prefix_serves_the_same_api(client: FlaskClient, api_key: str, sync: dict):
    bare = client.get(f"{API}/syncs/{sync['id']}", headers=bearer(api_key)).get_json()
    versioned = client.get(f"/v1{API}/syncs/{sync['id']}", headers=bearer(api_key))
    listed = client.get(f"/v1{API}/syncs", headers=bearer(api_key)).get_json()

    assert versioned.status_code == 200
    assert versioned.get_json() == bare
    assert [item["id"] for item in listed["data"]] == [sync["id"]]


def test_v1_prefix_accepts_writes(client, api_key, destination, source):
    response = client.post(f"/v1{API}/syncs", json=sync_body(destination["id"]), headers=bearer(api_key))

    assert response.status_code == 201
    assert client.get(f"{API}/syncs/{response.get_json()['data']['id']}", headers=bearer(api_key)).status_code == 200


def test_v1_prefix_needs_a_key_too(client):
    assert_error(client.get(f"/v1{API}/syncs"), 401)


def test_a_prefix_that_only_starts_like_v1_is_not_an_alias(client, api_key):
    assert_error(client.get(f"/v10{API}/syncs", headers=bearer(api_key)), 404)


def test_a_mode_the_destination_does_not_support_answers_422_at_sync_mode(client, api_key, source):
    created = client.post(
        f"{API}/destinations", json={"name": "Iterable", "connector": "iterable", "config": {"apiKey": "k"}},
        headers=bearer(api_key),
    )
    assert created.status_code == 201, created.get_json()
    body = sync_body(created.get_json()["data"]["id"], syncMode="update", objectName="users")

    error = assert_error(client.post(f"{API}/syncs", json=body, headers=bearer(api_key)), 422, "/syncMode")
    assert "iterable" in error["detail"]


def test_update_refuses_a_mapping_without_destination(client, api_key, sync):
    mappings = [{"source": "id", "key": True}]
    response = client.put(f"{API}/syncs/{sync['id']}", json={"fieldMappings": mappings}, headers=bearer(api_key))
    assert_error(response, 422, "/fieldMappings/0/destination")
    stored = client.get(f"{API}/syncs/{sync['id']}", headers=bearer(api_key)).get_json()["data"]
    assert stored["attributes"]["field_mappings"] == sync["attributes"]["field_mappings"]


@pytest.mark.parametrize("template", ["{{ name ", "{{ name | no_such_filter }}"])
def test_a_template_that_does_not_compile_answers_422(client, api_key, destination, source, template):
    body = {
        "name": "t", "sourceQuery": "SELECT 1 AS id", "destinationId": destination["id"],
        "objectName": "records", "syncMode": "upsert",
        "fieldMappings": [{"source": "id", "destination": "id", "key": True},
                          {"template": template, "destination": "label"}],
    }
    response = client.post(f"{API}/syncs", json=body, headers=bearer(api_key))
    assert_error(response, 422, "/fieldMappings/1/template")


def _run_status(client, api_key, run_id):
    return client.get(f"{API}/runs/{run_id}", headers=bearer(api_key)).get_json()["data"]["attributes"]["status"]


def test_pausing_cancels_a_queued_scheduled_run_but_not_a_manual_one(client, api_key, sync, database_url):
    scheduled = insert_run(database_url, sync["id"], status="queued", trigger="schedule")
    toggle = {"syncId": sync["id"], "enabled": False}
    assert client.post(f"{API}/sync/toggle", json=toggle, headers=bearer(api_key)).status_code == 200
    assert _run_status(client, api_key, scheduled) == "cancelled"

    client.post(f"{API}/sync/toggle", json={"syncId": sync["id"], "enabled": True}, headers=bearer(api_key))
    manual = insert_run(database_url, sync["id"], status="queued", trigger="manual")
    client.post(f"{API}/sync/toggle", json=toggle, headers=bearer(api_key))
    assert _run_status(client, api_key, manual) == "queued"


def test_moving_a_sync_with_an_active_run_to_another_destination_answers_409(
    client, api_key, sync, sink, database_url
):
    insert_run(database_url, sync["id"], status="running")
    other = create_destination(client, api_key, sink.url, name="Other")
    response = client.put(f"{API}/syncs/{sync['id']}", json={"destinationId": other["id"]}, headers=bearer(api_key))
    assert_error(response, 409, "/destinationId")


@pytest.mark.parametrize("object_name, mode", [("users", "insert"), ("events", "upsert"), ("events", "mirror")])
def test_a_mode_the_destination_object_lacks_answers_422(client, api_key, source, object_name, mode):
    body = {"name": "it", "connector": "iterable", "config": {"apiKey": "k", "baseUrl": "http://127.0.0.1:9"}}
    destination = client.post(f"{API}/destinations", json=body, headers=bearer(api_key)).get_json()["data"]
    sync_body = {
        "name": "s", "sourceQuery": "SELECT 1 AS id", "destinationId": destination["id"],
        "objectName": object_name, "syncMode": mode,
        "fieldMappings": [{"source": "id", "destination": "email", "key": True}],
    }
    response = client.post(f"{API}/syncs", json=sync_body, headers=bearer(api_key))
    assert_error(response, 422, "/syncMode")
