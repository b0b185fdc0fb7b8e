"""Fixtures for the engine's tests: a warehouse schema in Postgres as the source, a fake HTTP
receiver as the destination, syncs created through the services, and a driver that runs the
engine in this process (batches collected and written by the test, in one or more threads)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from shared.db import transaction
from shared.repositories import runs as runs_repo
from shared.services import connections, syncs
from shared.services import runs as run_service
from shared.services.auth import create_api_key
from tests.fakes.http_sink import FakeHttpSink


@pytest.fixture
def workspace_id() -> str:
    return create_api_key("engine").workspace_id


@pytest.fixture
def warehouse(warehouse_url: str, reader_url: str) -> Iterator[Warehouse]:
    with psycopg.connect(warehouse_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS warehouse CASCADE")
        conn.execute("CREATE SCHEMA warehouse")
        conn.execute(
            "CREATE TABLE warehouse.people (id integer, email text, name text, score numeric,"
            " updated_at timestamptz DEFAULT '2025-01-01T00:00:00Z')"
        )
        yield Warehouse(conn, reader_url, warehouse_url)


@dataclass
class Warehouse:
    conn: psycopg.Connection  # as the database's owner, who changes the data
    url: str  # as a role that can only read: what sources connect with
    admin_url: str

    def insert(self, count: int, start: int = 1) -> None:
        self.conn.execute(
            "INSERT INTO warehouse.people (id, email, name, score)"
            " SELECT i, 'user' || i || '@example.com', 'User ' || i, i * 1.5"
            " FROM generate_series(%s::int, %s::int) AS i",
            (start, start + count - 1),
        )

    def execute(self, statement: str, params: Any = None) -> None:
        self.conn.execute(statement, params)


@pytest.fixture
def sink() -> Iterator[FakeHttpSink]:
    with FakeHttpSink() as fake:
        yield fake


PEOPLE_MAPPINGS = [
    {"source": "id", "destination": "external_id", "key": True},
    {"source": "email", "destination": "email"},
    {"source": "name", "destination": "full_name"},
]


@dataclass
class SyncSetup:
    workspace_id: str
    sync_id: str
    source_id: str
    destination_id: str


def make_sync(
    workspace_id: str, source_config: dict[str, Any], sink_url: str, *, mode: str = "upsert",
    query: str = "SELECT * FROM warehouse.people", mappings: list[dict] | None = None,
    destination_config: dict[str, Any] | None = None, source_connector: str = "postgres",
) -> SyncSetup:
    source = connections.create(workspace_id, "source", "warehouse", source_connector, source_config)
    destination = connections.create(
        workspace_id, "destination", "sink", "http",
        {"url": sink_url, "batchSize": 10, "resultsPath": "results", **(destination_config or {})},
    )
    sync = syncs.create(workspace_id, {
        "name": "people", "sourceId": source.record.id, "destinationId": destination.record.id,
        "objectName": "records", "sourceQuery": query,
        "fieldMappings": mappings or PEOPLE_MAPPINGS, "syncMode": mode,
    })
    return SyncSetup(workspace_id, sync.id, source.record.id, destination.record.id)


@pytest.fixture
def people_sync(workspace_id: str, warehouse: Warehouse, sink: FakeHttpSink) -> Callable[..., SyncSetup]:
    def build(**options: Any) -> SyncSetup:
        return make_sync(workspace_id, {"url": warehouse.url}, sink.url, **options)

    return build


class EngineDriver:
    """Runs the engine in this process: batches the planner dispatches are collected here and
    written by `workers` threads, as several Celery workers would."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from worker import dispatch
        from worker import runs as engine

        self.engine = engine
        self.dispatch = dispatch
        self.pending: list[tuple[str, int, int]] = []
        # Batches parked (rung with a countdown): written once the test makes them due.
        self.parked: list[tuple[str, int, int]] = []
        self.lock = threading.Lock()
        monkeypatch.setattr(dispatch, "enqueue_batch", self._collect)
        monkeypatch.setattr(dispatch, "enqueue_run", lambda run_id, countdown=0.0: None)
        monkeypatch.setattr(run_service, "enqueue", lambda run_ids: None)

    def _collect(self, run_id: str, batch_no: int, token: int, countdown: float = 0.0) -> None:
        with self.lock:
            (self.parked if countdown else self.pending).append((run_id, batch_no, token))

    def wake_parked(self) -> int:
        """Make every parked batch due now and hand its doorbell to the writers; how many."""
        with self.lock:
            woken, self.parked = self.parked, []
            self.pending.extend(woken)
        with transaction() as conn:
            conn.execute(
                "UPDATE run_batches SET not_before = now() - interval '1 second'"
                " WHERE status = 'pending' AND not_before IS NOT NULL"
            )
        # The destinations' pauses (a Retry-After honoured fleet-wide) are over as well.
        from worker.destinations import redis_client

        client = redis_client()
        for key in client.scan_iter("retl:limit:*:paused"):
            client.delete(key)
        return len(woken)

    def drain(self, workers: int = 1) -> list[str]:
        """Write every collected batch (and any the reaper re-sends); the writers' ids."""
        writers: list[str] = []

        def work() -> None:
            while True:
                with self.lock:
                    if not self.pending:
                        return
                    job = self.pending.pop(0)
                self.engine.write_batch(*job)
                writers.append(threading.current_thread().name)

        threads = [threading.Thread(target=work, name=f"writer-{i}") for i in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        return writers

    def trigger(self, setup: SyncSetup, *, full_refresh: bool = False) -> str:
        return run_service.trigger(setup.workspace_id, [setup.sync_id], full_refresh=full_refresh)[0].id

    def run(self, setup: SyncSetup, *, full_refresh: bool = False, workers: int = 1) -> runs_repo.Run:
        run_id = self.trigger(setup, full_refresh=full_refresh)
        return self.execute(run_id, workers=workers)

    def execute(self, run_id: str, *, workers: int = 1) -> runs_repo.Run:
        assert self.engine.execute_run(run_id) is None
        self.drain(workers)
        return get_run(run_id)


def get_run(run_id: str) -> runs_repo.Run:
    with transaction() as conn:
        return runs_repo.get_by_id(conn, run_id)


def wait_for_run(run_id: str, timeout_s: float = 60, poll: Callable[[], None] | None = None) -> runs_repo.Run:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = get_run(run_id)
        if run.status in ("succeeded", "failed", "cancelled", "held"):
            return run
        if poll is not None:
            poll()
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not finish: {get_run(run_id)}")


@pytest.fixture
def driver(monkeypatch: pytest.MonkeyPatch) -> EngineDriver:
    return EngineDriver(monkeypatch)
