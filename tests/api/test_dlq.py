"""The dead-letter queue through the API: list (open by default, history, per sync), stats
(per sync, since a time) and resolve (with and without replay), isolated per workspace.

Entries are written straight into Postgres, as the engine leaves them after a write failed."""

from __future__ import annotations

import datetime as dt
from urllib.parse import quote

import pytest

from tests.api.conftest import (
    API,
    assert_error,
    assert_resource,
    create_sync,
    insert_dlq_entry,
    insert_run,
    run_rows,
)
from tests.conftest import bearer

SEED_ENTRY_ATTRIBUTES = {
    "sync_id", "run_id", "error_code", "message", "record_keys", "attempts", "first_seen_at", "resolved",
}


@pytest.fixture
def failed_run(sync, database_url) -> str:
    return insert_run(database_url, sync["id"], status="failed")


def ids_of(response) -> list[str]:
    return [item["id"] for item in response.get_json()["data"]]


def resolve(client, key, **body):
    return client.post(f"{API}/dlq/resolve", json=body, headers=bearer(key))


# ---- list ------------------------------------------------------------------------------------


def test_list_dlq_answers_open_entries_in_the_seed_shape(client, api_key, sync, failed_run, database_url):
    entry = insert_dlq_entry(database_url, sync["id"], failed_run, key="acc_88291")

    response = client.get(f"{API}/dlq", headers=bearer(api_key))

    assert response.status_code == 200
    document = response.get_json()
    assert ids_of(response) == [entry]
    assert document["meta"] == {"page": {"limit": 50, "cursor": None}}
    attributes = assert_resource(document["data"][0], "reverse_etl_dlq_entry", "retl_dlq")
    assert SEED_ENTRY_ATTRIBUTES <= set(attributes)
    assert attributes["sync_id"] == sync["id"]
    assert attributes["run_id"] == failed_run
    assert attributes["error_code"] == "DESTINATION_VALIDATION"
    assert attributes["record_keys"] == {"External_Id__c": "acc_88291"}
    assert attributes["attempts"] == 5
    assert attributes["resolved"] is False


def test_list_dlq_defaults_to_open_entries_and_resolved_true_gives_history(
    client, api_key, sync, failed_run, database_url
):
    open_entry = insert_dlq_entry(database_url, sync["id"], failed_run, key="a")
    closed_entry = insert_dlq_entry(database_url, sync["id"], failed_run, key="b", resolved=True)

    default = client.get(f"{API}/dlq", headers=bearer(api_key))
    explicit_open = client.get(f"{API}/dlq?resolved=false", headers=bearer(api_key))
    history = client.get(f"{API}/dlq?resolved=true", headers=bearer(api_key))

    assert ids_of(default) == [open_entry]
    assert ids_of(explicit_open) == [open_entry]
    assert ids_of(history) == [closed_entry]
    assert history.get_json()["data"][0]["attributes"]["resolved"] is True


def test_list_dlq_filters_by_sync_id(client, api_key, destination, source, database_url):
    first = create_sync(client, api_key, destination["id"], name="first")
    second = create_sync(client, api_key, destination["id"], name="second")
    wanted = insert_dlq_entry(database_url, first["id"], insert_run(database_url, first["id"]), key="a")
    insert_dlq_entry(database_url, second["id"], insert_run(database_url, second["id"]), key="a")

    response = client.get(f"{API}/dlq?sync_id={first['id']}", headers=bearer(api_key))

    assert ids_of(response) == [wanted]


def test_list_dlq_with_a_non_boolean_resolved_answers_422(client, api_key):
    assert_error(client.get(f"{API}/dlq?resolved=perhaps", headers=bearer(api_key)), 422, "/resolved")


def test_list_dlq_shows_only_the_callers_workspace(client, api_key, other_api_key, sync, failed_run, database_url):
    insert_dlq_entry(database_url, sync["id"], failed_run, key="a")

    assert client.get(f"{API}/dlq", headers=bearer(other_api_key)).get_json()["data"] == []
    assert client.get(f"{API}/dlq?sync_id={sync['id']}", headers=bearer(other_api_key)).get_json()["data"] == []


# ---- stats -----------------------------------------------------------------------------------


def test_stats_count_open_and_resolved_entries_by_error_code(client, api_key, sync, failed_run, database_url):
    for key in ("a", "b", "c"):
        insert_dlq_entry(database_url, sync["id"], failed_run, key=key, error_code="DESTINATION_VALIDATION")
    insert_dlq_entry(database_url, sync["id"], failed_run, key="d", error_code="RATE_LIMIT")
    insert_dlq_entry(database_url, sync["id"], failed_run, key="e", error_code="RATE_LIMIT", resolved=True)

    response = client.get(f"{API}/dlq/stats", headers=bearer(api_key))

    assert response.status_code == 200
    data = response.get_json()["data"]
    attributes = assert_resource(data, "reverse_etl_dlq_stats")
    assert set(attributes) == {"open_count", "resolved_count", "by_error_code", "computed_at"}
    assert attributes["open_count"] == 4
    assert attributes["resolved_count"] == 1
    assert attributes["by_error_code"] == {"DESTINATION_VALIDATION": 3, "RATE_LIMIT": 1}


def test_stats_of_an_empty_workspace_are_zero(client, api_key):
    attributes = client.get(f"{API}/dlq/stats", headers=bearer(api_key)).get_json()["data"]["attributes"]

    assert (attributes["open_count"], attributes["resolved_count"], attributes["by_error_code"]) == (0, 0, {})


def test_stats_scoped_to_one_sync(client, api_key, destination, source, database_url):
    first = create_sync(client, api_key, destination["id"], name="first")
    second = create_sync(client, api_key, destination["id"], name="second")
    insert_dlq_entry(database_url, first["id"], insert_run(database_url, first["id"]), key="a")
    second_run = insert_run(database_url, second["id"])
    insert_dlq_entry(database_url, second["id"], second_run, key="a", error_code="RATE_LIMIT")
    insert_dlq_entry(database_url, second["id"], second_run, key="b", error_code="RATE_LIMIT")

    response = client.get(f"{API}/dlq/stats?sync_id={second['id']}", headers=bearer(api_key))

    attributes = response.get_json()["data"]["attributes"]
    assert attributes["open_count"] == 2
    assert attributes["by_error_code"] == {"RATE_LIMIT": 2}


def test_stats_since_counts_entries_first_seen_at_or_after_it(client, api_key, sync, failed_run, database_url):
    cut = dt.datetime(2025, 3, 27, 12, 0, tzinfo=dt.UTC)
    insert_dlq_entry(database_url, sync["id"], failed_run, key="old", first_seen_at=cut - dt.timedelta(seconds=1))
    insert_dlq_entry(database_url, sync["id"], failed_run, key="at", first_seen_at=cut)
    insert_dlq_entry(database_url, sync["id"], failed_run, key="new", first_seen_at=cut + dt.timedelta(hours=1))

    utc = client.get(f"{API}/dlq/stats?since=2025-03-27T12:00:00Z", headers=bearer(api_key))
    offset = client.get(f"{API}/dlq/stats?since={quote('2025-03-27T14:00:00+02:00')}", headers=bearer(api_key))

    assert utc.get_json()["data"]["attributes"]["open_count"] == 2
    assert offset.get_json()["data"]["attributes"]["open_count"] == 2


def test_stats_with_a_bad_since_answers_422(client, api_key):
    assert_error(client.get(f"{API}/dlq/stats?since=yesterday", headers=bearer(api_key)), 422, "/since")


def test_stats_never_count_another_workspaces_entries(client, other_api_key, sync, failed_run, database_url):
    insert_dlq_entry(database_url, sync["id"], failed_run, key="a")

    everything = client.get(f"{API}/dlq/stats", headers=bearer(other_api_key)).get_json()["data"]["attributes"]
    by_sync = client.get(f"{API}/dlq/stats?sync_id={sync['id']}", headers=bearer(other_api_key))

    assert everything["open_count"] == 0
    assert by_sync.get_json()["data"]["attributes"]["open_count"] == 0


# ---- resolve ---------------------------------------------------------------------------------


def test_resolve_without_replay_closes_the_entries(client, api_key, sync, failed_run, database_url):
    first = insert_dlq_entry(database_url, sync["id"], failed_run, key="a")
    second = insert_dlq_entry(database_url, sync["id"], failed_run, key="b")
    untouched = insert_dlq_entry(database_url, sync["id"], failed_run, key="c")

    response = resolve(client, api_key, entryIds=[first, second], resolution="skipped")

    assert response.status_code == 200
    data = response.get_json()["data"]
    attributes = assert_resource(data, "reverse_etl_dlq_resolve")
    assert sorted(attributes["resolved_ids"]) == sorted([first, second])
    assert attributes["replay_run_id"] is None
    assert ids_of(client.get(f"{API}/dlq", headers=bearer(api_key))) == [untouched]
    history = client.get(f"{API}/dlq?resolved=true", headers=bearer(api_key)).get_json()["data"]
    assert sorted(item["id"] for item in history) == sorted([first, second])
    assert {item["attributes"]["resolution"] for item in history} == {"skipped"}
    assert run_rows(database_url, sync["id"])[-1]["id"] == failed_run  # no run queued


def test_resolve_with_replay_queues_a_replay_run_for_the_records(client, api_key, sync, failed_run, database_url):
    first = insert_dlq_entry(database_url, sync["id"], failed_run, key="acc_1")
    second = insert_dlq_entry(database_url, sync["id"], failed_run, key="acc_2")

    response = resolve(client, api_key, entryIds=[first, second], resolution="fixed_upstream", replay=True)

    assert response.status_code == 200
    attributes = response.get_json()["data"]["attributes"]
    replay_run_id = attributes["replay_run_id"]
    assert replay_run_id and replay_run_id.startswith("retl_run_")
    run = client.get(f"{API}/runs/{replay_run_id}", headers=bearer(api_key)).get_json()["data"]
    assert run["attributes"]["status"] == "queued"
    assert run["attributes"]["trigger"] == "replay"
    assert run["attributes"]["sync_id"] == sync["id"]
    stored = next(row for row in run_rows(database_url, sync["id"]) if row["id"] == replay_run_id)
    assert sorted(stored["replay_keys"]) == ["acc_1", "acc_2"]
    stats = client.get(f"{API}/dlq/stats", headers=bearer(api_key)).get_json()["data"]["attributes"]
    assert (stats["open_count"], stats["resolved_count"]) == (0, 2)


def test_resolve_with_an_unknown_id_answers_404_and_resolves_nothing(
    client, api_key, sync, failed_run, database_url
):
    entry = insert_dlq_entry(database_url, sync["id"], failed_run, key="a")

    response = resolve(client, api_key, entryIds=[entry, "retl_dlq_01jzzzzzzzzzzzzzzzzzzzzzzz"], resolution="skipped")

    assert_error(response, 404, "/entryIds")
    assert ids_of(client.get(f"{API}/dlq", headers=bearer(api_key))) == [entry]


def test_resolve_of_another_workspaces_entry_answers_404_and_leaves_it_open(
    client, api_key, other_api_key, sync, failed_run, database_url
):
    entry = insert_dlq_entry(database_url, sync["id"], failed_run, key="a")

    assert_error(resolve(client, other_api_key, entryIds=[entry], resolution="skipped"), 404, "/entryIds")
    assert_error(resolve(client, other_api_key, entryIds=[entry], resolution="x", replay=True), 404)
    assert ids_of(client.get(f"{API}/dlq", headers=bearer(api_key))) == [entry]
    assert len(run_rows(database_url, sync["id"])) == 1


def test_resolving_an_entry_twice_keeps_its_first_resolution(client, api_key, sync, failed_run, database_url):
    entry = insert_dlq_entry(database_url, sync["id"], failed_run, key="a")
    resolve(client, api_key, entryIds=[entry], resolution="skipped")

    again = resolve(client, api_key, entryIds=[entry], resolution="manual_push")

    assert again.status_code == 200
    assert again.get_json()["data"]["attributes"]["resolved_ids"] == [entry]
    history = client.get(f"{API}/dlq?resolved=true", headers=bearer(api_key)).get_json()["data"]
    assert history[0]["attributes"]["resolution"] == "skipped"


def test_resolve_validates_its_body(client, api_key):
    assert_error(resolve(client, api_key, resolution="skipped"), 422, "/entryIds")
    assert_error(resolve(client, api_key, entryIds=[], resolution="skipped"), 422, "/entryIds")
    assert_error(resolve(client, api_key, entryIds=["retl_dlq_x"]), 422, "/resolution")
    assert_error(resolve(client, api_key, entryIds=["retl_dlq_x"], resolution=""), 422, "/resolution")
    assert_error(resolve(client, api_key, entryIds="retl_dlq_x", resolution="skipped"), 422, "/entryIds")
    assert_error(resolve(client, api_key, entryIds=[1], resolution="skipped"), 422, "/entryIds/0")
    assert_error(
        resolve(client, api_key, entryIds=["retl_dlq_x"], resolution="skipped", replay="no"), 422, "/replay"
    )
