"""Runs through the API: trigger (one sync, several, coalescing onto the queued run, full
refresh), list (sync_id and status filters), get and cancel, with workspace isolation."""

from __future__ import annotations

import base64
import json
import os

import redis

from tests.api.conftest import API, assert_error, assert_resource, create_sync, insert_run, run_rows
from tests.conftest import bearer

SEED_RUN_ATTRIBUTES = {
    "sync_id", "status", "full_refresh", "created_at", "rows_read", "rows_written", "rows_failed",
    "started_at", "finished_at",
}


def enqueued_run_ids(redis_url: str) -> list[str]:
    """The run ids of the execute-run messages waiting on the test queue, oldest first."""
    client = redis.Redis.from_url(redis_url)
    found = []
    for raw in reversed(client.lrange(os.environ["RETL_QUEUE"], 0, -1)):
        message = json.loads(raw)
        assert message["headers"]["task"] == "retl.execute_run"
        args = json.loads(base64.b64decode(message["body"]))[0]
        found.extend(args)
    return found


def trigger(client, key, **body):
    return client.post(f"{API}/sync/run", json=body, headers=bearer(key))


# ---- trigger ---------------------------------------------------------------------------------


def test_trigger_one_sync_answers_one_queued_run_and_enqueues_it(client, api_key, sync, redis_url):
    response = trigger(client, api_key, syncId=sync["id"])

    assert response.status_code == 202
    data = response.get_json()["data"]
    attributes = assert_resource(data, "reverse_etl_run", "retl_run")
    assert SEED_RUN_ATTRIBUTES <= set(attributes)
    assert attributes["sync_id"] == sync["id"]
    assert attributes["status"] == "queued"
    assert attributes["full_refresh"] is False
    assert attributes["trigger"] == "manual"
    assert enqueued_run_ids(redis_url) == [data["id"]]


def test_a_second_trigger_while_queued_returns_the_same_run(client, api_key, sync, redis_url, database_url):
    first = trigger(client, api_key, syncId=sync["id"]).get_json()["data"]
    second = trigger(client, api_key, syncId=sync["id"]).get_json()["data"]

    assert second["id"] == first["id"]
    assert len(run_rows(database_url, sync["id"])) == 1
    assert enqueued_run_ids(redis_url) == [first["id"]]


def test_a_new_run_is_queued_once_the_previous_one_finished(client, api_key, sync, database_url):
    insert_run(database_url, sync["id"], status="succeeded")

    run = trigger(client, api_key, syncId=sync["id"]).get_json()["data"]

    assert run["attributes"]["status"] == "queued"
    assert len(run_rows(database_url, sync["id"])) == 2


def test_full_refresh_is_recorded_on_the_run(client, api_key, sync):
    run = trigger(client, api_key, syncId=sync["id"], fullRefresh=True).get_json()["data"]

    assert run["attributes"]["full_refresh"] is True


def test_a_full_refresh_trigger_upgrades_the_queued_run(client, api_key, sync):
    plain = trigger(client, api_key, syncId=sync["id"]).get_json()["data"]
    full = trigger(client, api_key, syncId=sync["id"], fullRefresh=True).get_json()["data"]

    assert full["id"] == plain["id"]
    assert full["attributes"]["full_refresh"] is True


def test_trigger_several_syncs_answers_a_list_in_request_order(client, api_key, destination, source, redis_url):
    first = create_sync(client, api_key, destination["id"], name="first")
    second = create_sync(client, api_key, destination["id"], name="second")

    response = trigger(client, api_key, syncIds=[second["id"], first["id"]])

    assert response.status_code == 202
    data = response.get_json()["data"]
    assert isinstance(data, list)
    assert [run["attributes"]["sync_id"] for run in data] == [second["id"], first["id"]]
    for run in data:
        assert assert_resource(run, "reverse_etl_run", "retl_run")["status"] == "queued"
    assert sorted(enqueued_run_ids(redis_url)) == sorted(run["id"] for run in data)


def test_trigger_several_with_a_duplicate_id_queues_one_run_for_it(client, api_key, sync):
    data = trigger(client, api_key, syncIds=[sync["id"], sync["id"]]).get_json()["data"]

    assert len({run["id"] for run in data}) == 1


def test_trigger_of_an_unknown_sync_answers_404_at_sync_id(client, api_key):
    assert_error(trigger(client, api_key, syncId="retl_sync_01jzzzzzzzzzzzzzzzzzzzzzzz"), 404, "/syncId")


def test_trigger_several_with_one_unknown_queues_nothing(client, api_key, sync, database_url, redis_url):
    response = trigger(client, api_key, syncIds=[sync["id"], "retl_sync_01jzzzzzzzzzzzzzzzzzzzzzzz"])

    assert_error(response, 404, "/syncIds/1")
    assert run_rows(database_url, sync["id"]) == []
    assert enqueued_run_ids(redis_url) == []


def test_trigger_of_another_workspaces_sync_answers_404_and_queues_nothing(
    client, other_api_key, sync, database_url
):
    assert_error(trigger(client, other_api_key, syncId=sync["id"]), 404, "/syncId")
    assert run_rows(database_url, sync["id"]) == []


def test_trigger_of_a_deleted_sync_answers_404(client, api_key, sync):
    client.delete(f"{API}/syncs/{sync['id']}", headers=bearer(api_key))

    assert_error(trigger(client, api_key, syncId=sync["id"]), 404)


def test_trigger_needs_exactly_one_of_sync_id_and_sync_ids(client, api_key, sync):
    assert_error(trigger(client, api_key), 422, "/syncId")
    assert_error(trigger(client, api_key, syncId=sync["id"], syncIds=[sync["id"]]), 422, "/syncId")
    assert_error(trigger(client, api_key, syncIds=[]), 422, "/syncIds")
    assert_error(trigger(client, api_key, syncIds=sync["id"]), 422, "/syncIds")
    assert_error(trigger(client, api_key, syncId=sync["id"], fullRefresh="yes please"), 422, "/fullRefresh")


# ---- list ------------------------------------------------------------------------------------


def test_list_runs_answers_the_seed_shape_newest_first(client, api_key, sync, database_url):
    finished = insert_run(database_url, sync["id"], status="succeeded")
    queued = trigger(client, api_key, syncId=sync["id"]).get_json()["data"]

    response = client.get(f"{API}/runs", headers=bearer(api_key))

    assert response.status_code == 200
    document = response.get_json()
    assert [run["id"] for run in document["data"]] == [queued["id"], finished]
    assert document["meta"] == {"page": {"limit": 50, "cursor": None}}
    attributes = assert_resource(document["data"][1], "reverse_etl_run", "retl_run")
    assert SEED_RUN_ATTRIBUTES <= set(attributes)
    assert (attributes["rows_read"], attributes["rows_written"], attributes["rows_failed"]) == (10, 8, 2)
    assert attributes["status"] == "succeeded"
    assert attributes["started_at"] is not None and attributes["finished_at"] is not None


def test_list_runs_filters_by_sync_id(client, api_key, destination, source):
    first = create_sync(client, api_key, destination["id"], name="first")
    second = create_sync(client, api_key, destination["id"], name="second")
    run = trigger(client, api_key, syncId=first["id"]).get_json()["data"]
    trigger(client, api_key, syncId=second["id"])

    response = client.get(f"{API}/runs?sync_id={first['id']}", headers=bearer(api_key))

    assert [item["id"] for item in response.get_json()["data"]] == [run["id"]]


def test_list_runs_filters_by_status(client, api_key, sync, database_url):
    failed = insert_run(database_url, sync["id"], status="failed")
    insert_run(database_url, sync["id"], status="succeeded")
    queued = trigger(client, api_key, syncId=sync["id"]).get_json()["data"]

    failed_list = client.get(f"{API}/runs?status=failed", headers=bearer(api_key)).get_json()["data"]
    queued_list = client.get(f"{API}/runs?status=queued", headers=bearer(api_key)).get_json()["data"]
    running_list = client.get(f"{API}/runs?status=running", headers=bearer(api_key)).get_json()["data"]

    assert [item["id"] for item in failed_list] == [failed]
    assert [item["id"] for item in queued_list] == [queued["id"]]
    assert running_list == []


def test_list_runs_filters_combine(client, api_key, destination, source, database_url):
    first = create_sync(client, api_key, destination["id"], name="first")
    second = create_sync(client, api_key, destination["id"], name="second")
    wanted = insert_run(database_url, first["id"], status="failed")
    insert_run(database_url, first["id"], status="succeeded")
    insert_run(database_url, second["id"], status="failed")

    response = client.get(f"{API}/runs?sync_id={first['id']}&status=failed", headers=bearer(api_key))

    assert [item["id"] for item in response.get_json()["data"]] == [wanted]


def test_list_runs_with_an_unknown_status_answers_422(client, api_key):
    assert_error(client.get(f"{API}/runs?status=exploded", headers=bearer(api_key)), 422, "/status")


def test_list_runs_shows_only_the_callers_workspace(client, api_key, other_api_key, sync):
    trigger(client, api_key, syncId=sync["id"])

    assert client.get(f"{API}/runs", headers=bearer(other_api_key)).get_json()["data"] == []
    foreign_filter = client.get(f"{API}/runs?sync_id={sync['id']}", headers=bearer(other_api_key))
    assert foreign_filter.get_json()["data"] == []


# ---- get / cancel ----------------------------------------------------------------------------


def test_get_run_answers_the_run(client, api_key, sync):
    run = trigger(client, api_key, syncId=sync["id"]).get_json()["data"]

    response = client.get(f"{API}/runs/{run['id']}", headers=bearer(api_key))

    assert response.status_code == 200
    assert response.get_json() == {"data": run}


def test_get_run_of_another_workspace_answers_like_an_unknown_run(client, api_key, other_api_key, sync):
    run = trigger(client, api_key, syncId=sync["id"]).get_json()["data"]
    unknown = "retl_run_01jzzzzzzzzzzzzzzzzzzzzzzz"

    foreign = assert_error(client.get(f"{API}/runs/{run['id']}", headers=bearer(other_api_key)), 404)
    missing = assert_error(client.get(f"{API}/runs/{unknown}", headers=bearer(other_api_key)), 404)

    assert foreign["detail"].replace(run["id"], "<id>") == missing["detail"].replace(unknown, "<id>")
    assert {**foreign, "detail": ""} == {**missing, "detail": ""}


def test_cancel_a_queued_run_cancels_it_at_once(client, api_key, sync):
    run = trigger(client, api_key, syncId=sync["id"]).get_json()["data"]

    response = client.post(f"{API}/runs/{run['id']}/cancel", headers=bearer(api_key))

    assert response.status_code == 202
    attributes = assert_resource(response.get_json()["data"], "reverse_etl_run", "retl_run")
    assert attributes["status"] == "cancelled"
    assert attributes["finished_at"] is not None
    again = trigger(client, api_key, syncId=sync["id"]).get_json()["data"]
    assert again["id"] != run["id"]


def test_cancel_of_a_finished_run_answers_409(client, api_key, sync, database_url):
    run_id = insert_run(database_url, sync["id"], status="succeeded")

    assert_error(client.post(f"{API}/runs/{run_id}/cancel", headers=bearer(api_key)), 409)


def test_cancel_of_another_workspaces_run_answers_404_and_leaves_it_queued(
    client, api_key, other_api_key, sync
):
    run = trigger(client, api_key, syncId=sync["id"]).get_json()["data"]

    assert_error(client.post(f"{API}/runs/{run['id']}/cancel", headers=bearer(other_api_key)), 404)
    stored = client.get(f"{API}/runs/{run['id']}", headers=bearer(api_key)).get_json()["data"]
    assert stored["attributes"]["status"] == "queued"
