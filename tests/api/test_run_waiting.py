"""The run resource says whether a run waits for its destination, and until when."""

from __future__ import annotations

import datetime as dt

import psycopg

from tests.api.conftest import API, insert_run
from tests.conftest import bearer


def _park_a_batch(database_url: str, run_id: str, seconds: int) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO run_batches (run_id, batch_no, operation, record_keys, payload,"
            " not_before) VALUES (%s, 1, 'upsert', '{1}', ''::bytea,"
            " now() + make_interval(secs => %s))",
            (run_id, seconds),
        )


def test_a_running_run_with_a_parked_batch_shows_waiting_until(
    client, api_key, sync, database_url
) -> None:
    run_id = insert_run(database_url, sync["id"], status="running")
    attributes = client.get(f"{API}/runs/{run_id}", headers=bearer(api_key)).get_json()["data"][
        "attributes"]
    assert attributes["waiting_until"] is None

    _park_a_batch(database_url, run_id, 30)
    attributes = client.get(f"{API}/runs/{run_id}", headers=bearer(api_key)).get_json()["data"][
        "attributes"]
    until = dt.datetime.fromisoformat(attributes["waiting_until"].replace("Z", "+00:00"))
    assert 20 < (until - dt.datetime.now(dt.UTC)).total_seconds() <= 31
    listed = client.get(f"{API}/runs?sync_id={sync['id']}", headers=bearer(api_key)).get_json()
    assert listed["data"][0]["attributes"]["waiting_until"] == attributes["waiting_until"]


def test_the_api_document_describes_waiting_until(client) -> None:
    document = client.get("/api/openapi.json").get_json()
    waiting = document["components"]["schemas"]["RunAttributes"]["properties"]["waiting_until"]
    assert (waiting["format"], waiting["nullable"]) == ("date-time", True)
    assert "parked batch" in waiting["description"]
