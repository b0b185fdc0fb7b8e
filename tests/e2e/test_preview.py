"""Previews through the API: what a run would send, as it would send it, with nothing written
(snapshot, runs, DLQ and the receiver untouched); against real Postgres and the fake receiver."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from shared.db import transaction
from shared.repositories import engine as repo
from shared.repositories import syncs as sync_repo
from shared.services import syncs as sync_service
from shared.settings import get_settings
from tests.conftest import bearer
from tests.e2e.conftest import API, EngineDriver, Warehouse
from tests.engine.conftest import SyncSetup, make_sync
from tests.fakes.http_sink import FakeHttpSink
from worker import dispatch, planner
from worker.field_digests import record_digests

MAPPINGS = [
    {"source": "id", "destination": "external_id", "key": True},
    {"source": "email", "destination": "email"},
    {"source": "score", "destination": "score"},
    {"template": "{{ 100 / score }}", "destination": "inverse"},
]


@pytest.fixture
def sink() -> Iterator[FakeHttpSink]:
    with FakeHttpSink() as fake:
        yield fake


def _state(setup: SyncSetup) -> tuple[Any, ...]:
    """Everything a preview must leave as it was: snapshot and field digests, runs and their
    staging, DLQ."""
    with transaction() as conn:
        return tuple(
            conn.execute(statement, (setup.sync_id,)).fetchall() for statement in (
                "SELECT record_key, content_hash FROM sync_snapshots WHERE sync_id = %s"
                " ORDER BY record_key",
                "SELECT record_key, field_digests FROM sync_snapshots WHERE sync_id = %s"
                " AND field_digests IS NOT NULL"
                " ORDER BY record_key",
                "SELECT id, status, rows_written FROM runs WHERE sync_id = %s ORDER BY id",
                "SELECT id, resolved, attempts FROM dlq_entries WHERE sync_id = %s ORDER BY id",
            )
        ) + (
            conn.execute("SELECT count(*) FROM run_ops").fetchone(),
            conn.execute("SELECT count(*) FROM run_failures").fetchone(),
            conn.execute("SELECT count(*) FROM run_batches").fetchone(),
        )


def _preview(client: FlaskClient, account: Any, path: str, **kwargs: Any) -> Any:
    response = client.post(f"{API}{path}", headers=bearer(account.key), **kwargs)
    assert response.status_code == 200, response.get_json()
    data = response.get_json()["data"]
    assert data["type"] == "reverse_etl_preview"
    return data["attributes"]


@pytest.fixture
def changed_sync(
    driver: EngineDriver, account: Any, warehouse: Warehouse, sink: FakeHttpSink
) -> SyncSetup:
    """A mirror sync of people 1..6 written once, then: 1 changed, 2 gone, 7 new, a row with a
    null key, a second row for key 3 (after the first), and 4 with a score the template divides
    by (changed, but refused by the mapping); 3, 5 and 6 unchanged."""
    warehouse.insert(6)
    setup = make_sync(account.workspace_id, {"url": warehouse.url}, sink.url, mode="mirror",
                      mappings=MAPPINGS, query="SELECT * FROM warehouse.people ORDER BY id, email DESC")
    assert driver.run(setup).rows_written == 6
    warehouse.execute("UPDATE warehouse.people SET email = 'new@example.com' WHERE id = 1")
    warehouse.execute("DELETE FROM warehouse.people WHERE id = 2")
    warehouse.insert(1, start=7)
    warehouse.execute("INSERT INTO warehouse.people (id, email, score) VALUES"
                      " (NULL, 'nobody@example.com', 1), (3, 'again@example.com', 1)")
    warehouse.execute("UPDATE warehouse.people SET score = 0 WHERE id = 4")
    sink.received.clear()
    return setup


def test_a_preview_counts_and_samples_and_changes_nothing(
    client: FlaskClient, account: Any, changed_sync: SyncSetup, sink: FakeHttpSink
) -> None:
    before = _state(changed_sync)

    preview = _preview(client, account, f"/syncs/{changed_sync.sync_id}/preview")

    assert preview["counts"] == {
        "added": 1, "changed": 1, "removed": 1, "unchanged": 3, "rejected": 3
    }
    assert preview["rejected_by_reason"] == {"NULL_KEY": 1, "DUPLICATE_KEY": 1, "MAPPING": 1}
    samples = preview["samples"]
    assert samples["added"] == [{"key": "7", "operation": "upsert", "record": {
        "external_id": 7, "email": "user7@example.com", "score": 10.5, "inverse": "9.523809523809523809523809524",
    }}]
    assert [(s["key"], s["record"]["email"], s["changed_fields"]) for s in samples["changed"]] == [
        ("1", "new@example.com", ["email"])
    ]
    assert samples["removed"] == [{"key": "2", "operation": "delete", "record": {"external_id": 2}}]
    assert sorted((r["reason"], r["key"]) for r in samples["rejected"]) == [
        ("DUPLICATE_KEY", "3"), ("MAPPING", "4"), ("NULL_KEY", None)
    ]
    assert _state(changed_sync) == before
    assert sink.received == []


def test_preview_samples_are_the_records_the_run_sends(
    client: FlaskClient, account: Any, changed_sync: SyncSetup, sink: FakeHttpSink,
    driver: EngineDriver,
) -> None:
    preview = _preview(client, account, f"/syncs/{changed_sync.sync_id}/preview")

    run = driver.run(changed_sync)

    assert run.status == "succeeded"
    sent = {(b.operation, str(r["external_id"])): r for b in sink.received for r in b.records}
    for change in ("added", "changed", "removed"):
        for item in preview["samples"][change]:
            assert sent[(item["operation"], item["key"])] == item["record"]
    assert len(sent) == 3  # 7 added, 1 changed, 2 removed: the preview's samples, all of them


def test_sample_size_is_bounded(
    client: FlaskClient, account: Any, warehouse: Warehouse, sink: FakeHttpSink
) -> None:
    warehouse.insert(30)
    setup = make_sync(account.workspace_id, {"url": warehouse.url}, sink.url)
    path = f"/syncs/{setup.sync_id}/preview"
    assert len(_preview(client, account, path)["samples"]["added"]) == 10
    assert len(_preview(client, account, f"{path}?sample=3")["samples"]["added"]) == 3
    assert len(_preview(client, account, path, json={"sample": 25})["samples"]["added"]) == 25
    too_many = client.post(f"{API}{path}?sample=101", headers=bearer(account.key))
    assert too_many.status_code == 422
    assert too_many.get_json()["errors"][0]["source"]["parameter"] == "sample"
    unknown = client.post(f"{API}/syncs/retl_sync_nope/preview", headers=bearer(account.key))
    assert unknown.status_code == 404


def test_an_unsaved_sync_is_previewed_without_being_created(
    client: FlaskClient, account: Any, warehouse: Warehouse, sink: FakeHttpSink
) -> None:
    warehouse.insert(4)
    setup = make_sync(account.workspace_id, {"url": warehouse.url}, sink.url)
    body = {
        "name": "draft", "sourceId": setup.source_id, "destinationId": setup.destination_id,
        "objectName": "records", "sourceQuery": "SELECT id, email FROM warehouse.people",
        "fieldMappings": [{"source": "id", "destination": "external_id", "key": True},
                          {"source": "email", "destination": "mail"}],
        "syncMode": "upsert",
    }

    preview = _preview(client, account, "/syncs/preview?sample=2", json=body)

    assert preview["counts"] == {
        "added": 4, "changed": 0, "removed": 0, "unchanged": 0, "rejected": 0
    }
    assert [s["record"] for s in preview["samples"]["added"]] == [
        {"external_id": 1, "mail": "user1@example.com"},
        {"external_id": 2, "mail": "user2@example.com"},
    ]
    listed = client.get(f"{API}/syncs", headers=bearer(account.key)).get_json()["data"]
    assert [s["id"] for s in listed] == [setup.sync_id]
    bad = client.post(f"{API}/syncs/preview", json={**body, "sourceQuery": "SELECT nope"},
                      headers=bearer(account.key))
    assert bad.status_code == 422
    assert bad.get_json()["errors"][0]["code"] == "preview_failed"


def test_a_delete_sync_previews_the_keys_it_would_delete(
    client: FlaskClient, account: Any, warehouse: Warehouse, sink: FakeHttpSink
) -> None:
    warehouse.insert(3)
    setup = make_sync(account.workspace_id, {"url": warehouse.url}, sink.url, mode="delete")

    preview = _preview(client, account, f"/syncs/{setup.sync_id}/preview")

    assert preview["counts"] == {
        "added": 0, "changed": 0, "removed": 3, "unchanged": 0, "rejected": 0
    }
    assert preview["samples"]["removed"] == [
        {"key": key, "operation": "delete", "record": {"external_id": key}} for key in "123"
    ]
    assert preview["samples"]["added"] == []


def test_a_preview_is_not_blocked_by_a_running_run_of_the_sync(
    client: FlaskClient, account: Any, changed_sync: SyncSetup, driver: EngineDriver,
) -> None:
    run_id = driver.trigger(changed_sync)
    with transaction() as conn:
        lease = repo.take_lease(conn, run_id, dispatch.worker_id(), 60)
    assert lease is not None

    preview = _preview(client, account, f"/syncs/{changed_sync.sync_id}/preview")

    assert preview["counts"]["added"] == 1


def test_a_preview_reads_at_most_its_row_cap(
    client: FlaskClient, account: Any, warehouse: Warehouse, sink: FakeHttpSink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    warehouse.insert(5)
    setup = make_sync(account.workspace_id, {"url": warehouse.url}, sink.url)
    monkeypatch.setenv("RETL_PREVIEW_MAX_ROWS", "4")
    get_settings.cache_clear()
    try:
        response = client.post(f"{API}/syncs/{setup.sync_id}/preview", headers=bearer(account.key))
    finally:
        monkeypatch.delenv("RETL_PREVIEW_MAX_ROWS")
        get_settings.cache_clear()
    assert response.status_code == 422
    assert response.get_json()["errors"][0]["code"] == "preview_limit"


def _digests(setup: SyncSetup) -> dict[str, bytes]:
    with transaction() as conn:
        rows = conn.execute(
            "SELECT record_key, field_digests FROM sync_snapshots WHERE sync_id = %s"
                " AND field_digests IS NOT NULL",
            (setup.sync_id,),
        ).fetchall()
    return {key: bytes(digests) for key, digests in rows}


def _snapshot_keys(setup: SyncSetup) -> set[str]:
    with transaction() as conn:
        rows = conn.execute(
            "SELECT record_key FROM sync_snapshots WHERE sync_id = %s", (setup.sync_id,)
        ).fetchall()
    return {row[0] for row in rows}


def _changed_fields(preview: Any) -> dict[str, list[str] | None]:
    return {s["key"]: s["changed_fields"] for s in preview["samples"]["changed"]}


def _received_digests(sink: FakeHttpSink) -> dict[str, bytes]:
    """The digests of the records the destination holds, as it received them."""
    return {key: record_digests(record) for key, record in sink.store.items()}


@pytest.fixture
def one_pass_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The runs planned in one pass (key, hash and row read together)."""
    planned: list[str] = []
    original = planner._pack_in_one_pass

    def counted(context: planner.RunContext, *args: Any) -> Any:
        planned.append(context.run_id)
        return original(context, *args)

    monkeypatch.setattr(planner, "_pack_in_one_pass", counted)
    return planned


def test_changed_fields_name_the_fields_that_differ_from_what_was_sent(
    client: FlaskClient, account: Any, warehouse: Warehouse, sink: FakeHttpSink,
    driver: EngineDriver, one_pass_runs: list[str],
) -> None:
    warehouse.insert(5)
    setup = make_sync(account.workspace_id, {"url": warehouse.url}, sink.url, mappings=MAPPINGS)
    first = driver.run(setup)
    assert first.status == "succeeded" and one_pass_runs == [first.id]
    # What the destination accepted, field by field, as it received it.
    assert _digests(setup) == _received_digests(sink)
    path = f"/syncs/{setup.sync_id}/preview"
    # One mapped field; a field and the template reading it; two columns that are read (a
    # template makes every column count) but not sent.
    warehouse.execute("UPDATE warehouse.people SET email = 'new1@example.com' WHERE id = 1")
    warehouse.execute("UPDATE warehouse.people SET score = 4 WHERE id = 2")
    warehouse.execute("UPDATE warehouse.people SET name = 'Renamed' WHERE id = 3")
    warehouse.execute("UPDATE warehouse.people SET updated_at = now() WHERE id = 4")

    preview = _preview(client, account, path)

    assert preview["counts"]["changed"] == 4
    assert _changed_fields(preview) == {
        "1": ["email"], "2": ["inverse", "score"], "3": [], "4": [],
    }

    second = driver.run(setup)
    assert second.status == "succeeded" and second.rows_changed == 4
    assert one_pass_runs == [first.id]  # the second run diffs: its batches carry digests too
    assert _digests(setup) == _received_digests(sink)
    preview = _preview(client, account, path)
    assert preview["counts"]["changed"] == 0
    assert preview["samples"]["changed"] == []

    # The digests are those of the last record accepted, not of the first.
    warehouse.execute("UPDATE warehouse.people SET score = 3 WHERE id = 1")
    assert _changed_fields(_preview(client, account, path)) == {"1": ["inverse", "score"]}
    # A record without digests (accepted before they were kept): which fields is not known.
    with transaction() as conn:
        conn.execute("UPDATE sync_snapshots SET field_digests = NULL"
                     " WHERE sync_id = %s AND record_key = '1'",
                     (setup.sync_id,))
    assert _changed_fields(_preview(client, account, path)) == {"1": None}


def test_a_field_the_mapping_newly_sends_is_changed(
    client: FlaskClient, account: Any, warehouse: Warehouse, sink: FakeHttpSink,
    driver: EngineDriver,
) -> None:
    warehouse.insert(3)
    mappings = [{"source": "id", "destination": "external_id", "key": True},
                {"source": "email", "destination": "email"}]
    setup = make_sync(account.workspace_id, {"url": warehouse.url}, sink.url, mappings=mappings)
    assert driver.run(setup).status == "succeeded"
    sync_service.update(account.workspace_id, setup.sync_id, {"fieldMappings": [
        *mappings, {"source": "name", "destination": "full_name"},
    ]})
    warehouse.execute("UPDATE warehouse.people SET email = 'new1@example.com' WHERE id = 1")

    preview = _preview(client, account, f"/syncs/{setup.sync_id}/preview")

    # A new mapping changes every record: each gains the field, and 1 its new email.
    assert _changed_fields(preview) == {
        "1": ["email", "full_name"], "2": ["full_name"], "3": ["full_name"],
    }


def test_removals_and_a_forgotten_snapshot_take_the_digests_with_them(
    account: Any, warehouse: Warehouse, sink: FakeHttpSink, driver: EngineDriver,
) -> None:
    warehouse.insert(4)
    setup = make_sync(account.workspace_id, {"url": warehouse.url}, sink.url, mode="mirror")
    assert driver.run(setup).status == "succeeded"
    assert set(_digests(setup)) == _snapshot_keys(setup) == {"1", "2", "3", "4"}
    warehouse.execute("DELETE FROM warehouse.people WHERE id = 2")

    run = driver.run(setup)

    assert run.status == "succeeded" and run.rows_removed == 1
    assert set(_digests(setup)) == _snapshot_keys(setup) == {"1", "3", "4"}
    assert _digests(setup) == _received_digests(sink)
    with transaction() as conn:  # as moving the sync to another destination does
        sync_repo.forget_snapshot(conn, setup.sync_id)
    assert _digests(setup) == {} and _snapshot_keys(setup) == set()
