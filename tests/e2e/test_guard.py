"""Guards end to end: a run whose plan would remove or change too much of the destination is
held with nothing written, until it is approved (the kept plan is written, nothing else) or
cancelled; against real Postgres, the engine in this process and the fake HTTP receiver."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from shared import queue
from shared.db import transaction
from shared.repositories import engine as repo
from shared.services import syncs
from tests.conftest import bearer
from tests.e2e.conftest import API, EngineDriver, Warehouse, get_run
from tests.engine.conftest import SyncSetup, make_sync
from tests.fakes.http_sink import FakeHttpSink
from worker.field_digests import record_digests


@pytest.fixture
def sink() -> Iterator[FakeHttpSink]:
    with FakeHttpSink() as fake:
        yield fake


@pytest.fixture
def released(driver: EngineDriver, monkeypatch: pytest.MonkeyPatch) -> EngineDriver:
    """An approved plan's batches go to the driver's writers, as Celery would deliver them."""
    monkeypatch.setattr(queue, "enqueue_batch", driver._collect)
    monkeypatch.setattr(queue, "enqueue_finalize", driver.engine.finalize)
    return driver


def _sync(account: Any, warehouse: Warehouse, sink: FakeHttpSink, *, mode: str = "mirror",
          guard: dict[str, Any] | None = None, count: int = 0) -> SyncSetup:
    if count:
        warehouse.insert(count)
    setup = make_sync(account.workspace_id, {"url": warehouse.url}, sink.url, mode=mode)
    if guard is not None:
        syncs.update(account.workspace_id, setup.sync_id, {"guard": guard})
    return setup


def _snapshot(setup: SyncSetup) -> dict[str, str]:
    with transaction() as conn:
        rows = conn.execute(
            "SELECT record_key, content_hash FROM sync_snapshots WHERE sync_id = %s",
            (setup.sync_id,),
        ).fetchall()
    return dict(rows)


def _sent(sink: FakeHttpSink) -> list[tuple[str, str]]:
    return sorted((b.operation, str(r["external_id"])) for b in sink.received for r in b.records)


def _post(client: FlaskClient, account: Any, path: str) -> Any:
    return client.post(f"{API}{path}", headers=bearer(account.key))


def test_a_truncated_source_under_mirror_is_held_and_the_destination_keeps_every_record(
    driver: EngineDriver, account: Any, warehouse: Warehouse, sink: FakeHttpSink,
    client: FlaskClient,
) -> None:
    setup = _sync(account, warehouse, sink, count=150)
    assert driver.run(setup).rows_written == 150
    before = _snapshot(setup)
    sink.received.clear()
    warehouse.execute("TRUNCATE warehouse.people")

    run = driver.run(setup)

    assert run.status == "held"
    assert "maxRemovedPercent 50" in run.error
    assert "remove 150 of the 150 records" in run.error
    assert (run.rows_removed, run.rows_written) == (150, 0)
    assert sink.received == []
    assert len(sink.store) == 150
    assert _snapshot(setup) == before
    listed = client.get(f"{API}/runs?status=held&sync_id={setup.sync_id}",
                        headers=bearer(account.key)).get_json()["data"]
    assert [(r["id"], r["attributes"]["status"]) for r in listed] == [(run.id, "held")]


def test_approving_writes_the_planned_records_and_nothing_else(
    released: EngineDriver, account: Any, warehouse: Warehouse, sink: FakeHttpSink,
    client: FlaskClient,
) -> None:
    setup = _sync(account, warehouse, sink, guard={"maxRemovedPercent": 20}, count=10)
    released.run(setup)
    warehouse.execute("DELETE FROM warehouse.people WHERE id <= 5")
    warehouse.execute("UPDATE warehouse.people SET name = 'Planned' WHERE id = 6")
    held = released.run(setup)
    assert held.status == "held", held.error
    assert "remove 5 of the 10 records" in held.error
    # The source moves on after the plan was made: approval writes the plan, not the source.
    warehouse.execute("UPDATE warehouse.people SET name = 'Later' WHERE id = 7")
    warehouse.insert(1, start=11)
    sink.received.clear()
    # No writer, follower or the reaper finds a held plan's batches.
    released.engine.reap()
    assert released.pending == []

    response = _post(client, account, f"/runs/{held.id}/approve")
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["data"]["attributes"]["status"] == "running"
    released.drain()

    run = get_run(held.id)
    assert run.status == "succeeded", run.error
    assert _post(client, account, f"/runs/{held.id}/approve").status_code == 409  # not held
    assert _post(client, account, "/runs/retl_run_nope/approve").status_code == 404
    assert _sent(sink) == [("delete", str(k)) for k in range(1, 6)] + [("upsert", "6")]
    assert sorted(sink.store, key=int) == ["6", "7", "8", "9", "10"]
    assert sink.store["6"]["full_name"] == "Planned"
    assert sink.store["7"]["full_name"] == "User 7"
    # The field digests travelled with the kept batches; the removed records lost theirs.
    with transaction() as conn:
        digests = dict(conn.execute(
            "SELECT record_key, field_digests FROM sync_snapshots WHERE sync_id = %s"
                " AND field_digests IS NOT NULL",
            (setup.sync_id,),
        ).fetchall())
    assert {k: bytes(d) for k, d in digests.items()} == {
        key: record_digests(record) for key, record in sink.store.items()
    }
    # The snapshot took the approved plan: the next run sends what changed since.
    sink.received.clear()
    assert released.run(setup).status == "succeeded"
    assert _sent(sink) == [("upsert", "11"), ("upsert", "7")]


def test_cancelling_a_held_run_discards_its_plan_and_the_next_run_is_held_again(
    released: EngineDriver, account: Any, warehouse: Warehouse, sink: FakeHttpSink,
    client: FlaskClient,
) -> None:
    setup = _sync(account, warehouse, sink, guard={"maxRemovedPercent": 20}, count=10)
    released.run(setup)
    warehouse.execute("DELETE FROM warehouse.people WHERE id > 2")
    held = released.run(setup)
    assert held.status == "held"

    response = _post(client, account, f"/runs/{held.id}/cancel")
    assert response.status_code == 202
    assert get_run(held.id).status == "cancelled"
    assert _post(client, account, f"/runs/{held.id}/approve").status_code == 409
    released.drain()
    again = released.run(setup)  # a held run blocks no later run

    assert again.status == "held"
    assert len(sink.store) == 10


def test_approving_a_plan_after_a_newer_run_started_is_refused(
    released: EngineDriver, account: Any, warehouse: Warehouse, sink: FakeHttpSink,
    client: FlaskClient,
) -> None:
    setup = _sync(account, warehouse, sink, guard={"maxRemovedPercent": 20}, count=10)
    released.run(setup)
    warehouse.execute("DELETE FROM warehouse.people WHERE id > 2")
    old = released.run(setup)
    newer = released.run(setup)
    assert (old.status, newer.status) == ("held", "held")

    stale = _post(client, account, f"/runs/{old.id}/approve")
    assert stale.status_code == 409
    assert "newer run" in stale.get_json()["errors"][0]["detail"]
    assert get_run(old.id).status == "held"
    assert _post(client, account, f"/runs/{newer.id}/approve").status_code == 202
    released.drain()
    assert get_run(newer.id).status == "succeeded"
    assert sorted(sink.store) == ["1", "2"]


def test_changed_percent_guard_holds_above_its_limit_only(
    driver: EngineDriver, account: Any, warehouse: Warehouse, sink: FakeHttpSink
) -> None:
    setup = _sync(account, warehouse, sink, mode="upsert", guard={"maxChangedPercent": 50},
                  count=10)
    driver.run(setup)
    warehouse.execute("UPDATE warehouse.people SET name = 'New' WHERE id <= 5")
    assert driver.run(setup).status == "succeeded"  # 50% is not more than 50%
    warehouse.execute("UPDATE warehouse.people SET name = 'Newer' WHERE id <= 6")

    run = driver.run(setup)

    assert run.status == "held"
    assert run.error == (
        "held by the guard maxChangedPercent 50: the run would change 6 of the 10 records the"
        " destination holds (60.0%)"
    )
    assert (sink.store["1"]["full_name"], sink.store["6"]["full_name"]) == ("New", "User 6")


def test_min_source_rows_holds_an_empty_result(
    driver: EngineDriver, account: Any, warehouse: Warehouse, sink: FakeHttpSink
) -> None:
    setup = _sync(account, warehouse, sink, mode="upsert", guard={"minSourceRows": 1})
    run = driver.run(setup)
    assert run.status == "held"
    assert "minSourceRows 1: the source returned 0 record(s)" in run.error
    warehouse.insert(3)
    assert driver.run(setup).status == "succeeded"
    assert len(sink.store) == 3


def test_default_guard_for_mirror_holds_more_than_half_of_more_than_100_records(
    driver: EngineDriver, account: Any, warehouse: Warehouse, sink: FakeHttpSink
) -> None:
    setup = _sync(account, warehouse, sink, count=101)
    driver.run(setup)
    warehouse.execute("DELETE FROM warehouse.people WHERE id <= 50")
    assert driver.run(setup).status == "succeeded"  # 50 of 101: within the default
    assert len(sink.store) == 51
    warehouse.insert(50, start=200)  # 101 records again
    driver.run(setup)
    warehouse.execute("DELETE FROM warehouse.people WHERE id <= 101")  # 51 of 101

    run = driver.run(setup)

    assert run.status == "held"
    assert "default guard" in run.error and "remove 51 of the 101 records" in run.error
    assert len(sink.store) == 101


def test_a_small_mirror_and_an_empty_guard_are_not_held(
    driver: EngineDriver, account: Any, warehouse: Warehouse, sink: FakeHttpSink
) -> None:
    small = _sync(account, warehouse, sink, count=100)
    driver.run(small)
    warehouse.execute("TRUNCATE warehouse.people")
    assert driver.run(small).status == "succeeded"  # not more than 100 records
    assert sink.store == {}
    warehouse.insert(150)
    unguarded = _sync(account, warehouse, sink, guard={})
    driver.run(unguarded)
    warehouse.execute("TRUNCATE warehouse.people")
    assert driver.run(unguarded).status == "succeeded"


def test_a_full_refresh_is_guarded_too(
    driver: EngineDriver, account: Any, warehouse: Warehouse, sink: FakeHttpSink
) -> None:
    setup = _sync(account, warehouse, sink, guard={"maxRemovedPercent": 10}, count=20)
    driver.run(setup)
    sink.received.clear()
    warehouse.execute("DELETE FROM warehouse.people WHERE id > 10")
    run = driver.run(setup, full_refresh=True)
    assert run.status == "held"
    assert sink.received == []


def test_the_guard_is_validated_and_shown_on_the_sync(
    client: FlaskClient, account: Any, warehouse: Warehouse, sink: FakeHttpSink
) -> None:
    setup = _sync(account, warehouse, sink)
    path = f"{API}/syncs/{setup.sync_id}"
    bad = client.put(path, json={"guard": {"maxRemovedPercent": 150}}, headers=bearer(account.key))
    assert bad.status_code == 422
    assert bad.get_json()["errors"][0]["source"]["pointer"] == "/guard/maxRemovedPercent"
    unknown = client.put(path, json={"guard": {"maxDeleted": 1}}, headers=bearer(account.key))
    assert unknown.status_code == 422
    guard = {"maxRemovedPercent": 20, "maxChangedPercent": 50, "minSourceRows": 1}
    ok = client.put(path, json={"guard": guard}, headers=bearer(account.key))
    assert ok.status_code == 200, ok.get_json()
    shown = client.get(path, headers=bearer(account.key)).get_json()["data"]["attributes"]
    assert shown["guard"] == guard
    document = client.get("/api/openapi.json").get_json()
    assert "/api/reverse-etl/runs/{id}/approve" in document["paths"]
    assert "held" in document["components"]["schemas"]["RunAttributes"]["properties"]["status"]["enum"]


def _held_batches(run_id: str) -> int:
    with transaction() as conn:
        return conn.execute(
            "SELECT count(*) FROM held_batches WHERE run_id = %s", (run_id,)
        ).fetchone()[0]


def test_staging_is_purged_of_a_held_plan_only_once_a_newer_run_started(
    driver: EngineDriver, account: Any, warehouse: Warehouse, sink: FakeHttpSink
) -> None:
    setup = _sync(account, warehouse, sink, guard={"maxRemovedPercent": 20}, count=10)
    driver.run(setup)
    warehouse.execute("DELETE FROM warehouse.people WHERE id > 2")
    old = driver.run(setup)
    with transaction() as conn:
        repo.purge_finished_staging(conn, 0)
    assert _held_batches(old.id) == 1  # it may still be approved

    newer = driver.run(setup)
    with transaction() as conn:
        repo.purge_finished_staging(conn, 0)

    assert (_held_batches(old.id), _held_batches(newer.id)) == (0, 1)
