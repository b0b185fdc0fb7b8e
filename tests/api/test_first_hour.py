"""What a new user meets in the first hour: a mapping to a field the destination does not have
is refused when the sync is saved; deleting a sync resolves its open DLQ entries; the DLQ is
resolved by a filter as well as by ids."""

from __future__ import annotations

from tests.api.conftest import (
    API,
    assert_error,
    create_destination,
    create_sync,
    insert_dlq_entry,
    insert_run,
    sync_body,
)
from tests.conftest import bearer

DECLARED_FIELDS = ["External_Id__c", "Name"]


def test_a_mapping_to_an_unknown_field_is_refused_at_save(client, api_key, sink, source):
    destination = create_destination(client, api_key, sink.url, fields=DECLARED_FIELDS)
    mappings = [
        {"source": "account_id", "destination": "External_Id__c", "key": True},
        {"source": "name", "destination": "Nmae"},
    ]

    response = client.post(f"{API}/syncs", json=sync_body(destination["id"], fieldMappings=mappings),
                           headers=bearer(api_key))

    error = assert_error(response, 422, "/fieldMappings/1/destination")
    assert "Nmae" in error["detail"]
    listed = client.get(f"{API}/syncs", headers=bearer(api_key)).get_json()["data"]
    assert listed == []


def test_a_mapping_to_known_fields_is_saved_and_a_later_typo_refused(client, api_key, sink, source):
    destination = create_destination(client, api_key, sink.url, fields=DECLARED_FIELDS)
    sync = create_sync(client, api_key, destination["id"])
    typo = [
        {"source": "account_id", "destination": "External_Id__c", "key": True},
        {"source": "name", "destination": "name"},
    ]

    response = client.put(f"{API}/syncs/{sync['id']}", json={"fieldMappings": typo},
                          headers=bearer(api_key))

    assert_error(response, 422, "/fieldMappings/1/destination")
    stored = client.get(f"{API}/syncs/{sync['id']}", headers=bearer(api_key)).get_json()["data"]
    assert stored["attributes"]["field_mappings"][1]["destination"] == "Name"


def test_a_destination_that_cannot_be_asked_accepts_any_field(client, api_key, source, unused_port):
    body = {"name": "CRM", "connector": "postgres",
            "config": {"url": f"postgresql://retl@127.0.0.1:{unused_port}/crm"}}
    created = client.post(f"{API}/destinations", json=body, headers=bearer(api_key))
    assert created.status_code == 201, created.get_json()

    sync = create_sync(client, api_key, created.get_json()["data"]["id"], objectName="accounts")

    assert sync["attributes"]["field_mappings"][1]["destination"] == "Name"


def test_deleting_a_sync_resolves_its_open_dlq_entries(client, api_key, sync, database_url):
    run = insert_run(database_url, sync["id"])
    entries = [insert_dlq_entry(database_url, sync["id"], run, key=f"acc_{i}") for i in range(3)]

    assert client.delete(f"{API}/syncs/{sync['id']}", headers=bearer(api_key)).status_code == 200

    stats = client.get(f"{API}/dlq/stats", headers=bearer(api_key)).get_json()["data"]
    assert stats["attributes"]["open_count"] == 0
    history = client.get(f"{API}/dlq?resolved=true", headers=bearer(api_key)).get_json()["data"]
    assert sorted(item["id"] for item in history) == sorted(entries)
    assert {item["attributes"]["resolution"] for item in history} == {"sync_deleted"}


def test_resolve_by_filter_resolves_every_matching_open_entry(
    client, api_key, sync, source, destination, database_url
):
    other = create_sync(client, api_key, destination["id"], name="contacts")
    run, other_run = insert_run(database_url, sync["id"]), insert_run(database_url, other["id"])
    matching = [insert_dlq_entry(database_url, sync["id"], run, key=f"acc_{i}", error_code="MAPPING")
                for i in range(3)]
    kept = [
        insert_dlq_entry(database_url, sync["id"], run, key="acc_9"),  # another error code
        insert_dlq_entry(database_url, other["id"], other_run, key="acc_1", error_code="MAPPING"),
    ]

    response = client.post(f"{API}/dlq/resolve", headers=bearer(api_key), json={
        "filter": {"syncId": sync["id"], "errorCode": "MAPPING"}, "resolution": "fixed_upstream",
    })

    assert response.status_code == 200, response.get_json()
    assert sorted(response.get_json()["data"]["attributes"]["resolved_ids"]) == sorted(matching)
    still_open = client.get(f"{API}/dlq?limit=200", headers=bearer(api_key)).get_json()["data"]
    assert sorted(item["id"] for item in still_open) == sorted(kept)


def test_resolve_by_filter_of_one_sync_with_replay_queues_its_run(
    client, api_key, sync, database_url
):
    run = insert_run(database_url, sync["id"])
    entries = [insert_dlq_entry(database_url, sync["id"], run, key=f"acc_{i}") for i in range(2)]

    response = client.post(f"{API}/dlq/resolve", headers=bearer(api_key), json={
        "filter": {"syncId": sync["id"]}, "resolution": "fixed_upstream", "replay": True,
    })

    attributes = response.get_json()["data"]["attributes"]
    assert sorted(attributes["resolved_ids"]) == sorted(entries)
    replay = client.get(f"{API}/runs/{attributes['replay_run_id']}", headers=bearer(api_key))
    assert replay.get_json()["data"]["attributes"]["trigger"] == "replay"


def test_resolve_takes_ids_or_a_filter_not_both_nor_neither(client, api_key, sync, database_url):
    run = insert_run(database_url, sync["id"])
    entry = insert_dlq_entry(database_url, sync["id"], run, key="acc_1")
    url, headers = f"{API}/dlq/resolve", bearer(api_key)

    both = client.post(url, headers=headers, json={
        "entryIds": [entry], "filter": {"syncId": sync["id"]}, "resolution": "x"})
    neither = client.post(url, headers=headers, json={"resolution": "x"})
    empty_filter = client.post(url, headers=headers, json={"filter": {}, "resolution": "x"})
    unknown_sync = client.post(url, headers=headers, json={
        "filter": {"syncId": "retl_sync_01jqzz0000000000000000000"}, "resolution": "x"})

    assert_error(both, 422)
    assert_error(neither, 422)
    assert_error(empty_filter, 422)
    assert_error(unknown_sync, 404, "/filter/syncId")
    assert client.get(f"{API}/dlq", headers=headers).get_json()["data"][0]["id"] == entry
