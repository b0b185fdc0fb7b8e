"""Cancel means stop, with a real `celery worker`: a run whose source query sleeps ends
`cancelled` once cancelled, its query stopped; a run writing to a slow destination stops at the
next batch, with what was written counted and in the snapshot."""

from __future__ import annotations

import time

import pytest

from shared.db import transaction
from shared.services import runs as run_service
from tests.engine.conftest import Warehouse, get_run, make_sync, wait_for_run
from tests.engine.test_workers import SlowSink, Workers, workers  # noqa: F401 - the fixture

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def _sleeping_source_queries(warehouse: Warehouse) -> int:
    return warehouse.conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND wait_event = 'PgSleep'"
        " AND application_name = 'retl-source' AND datname = current_database()"
    ).fetchone()[0]


def _wait_for(condition, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


def test_a_cancelled_run_with_a_sleeping_source_query_ends_cancelled(workers: Workers, workspace_id: str, warehouse: Warehouse) -> None:  # noqa: F811
    warehouse.insert(5)
    with SlowSink() as sink:
        setup = make_sync(workspace_id, {"url": warehouse.url}, sink.url,
                          query="SELECT id, email, name FROM warehouse.people, pg_sleep(3000) s")
        workers.start("planner")
        run_id = run_service.trigger(setup.workspace_id, [setup.sync_id], full_refresh=False)[0].id
        _wait_for(lambda: _sleeping_source_queries(warehouse) == 1)
        run_service.cancel(setup.workspace_id, run_id)
        run = wait_for_run(run_id, timeout_s=60)
        assert run.status == "cancelled" and run.error is None
        assert sink.store == {}
    _wait_for(lambda: _sleeping_source_queries(warehouse) == 0, timeout_s=30)


class SlowerSink(SlowSink):
    delay_s = 0.3


def test_a_cancelled_run_stops_writing_and_counts_what_it_wrote(workers: Workers, workspace_id: str, warehouse: Warehouse) -> None:  # noqa: F811
    warehouse.insert(300)
    with SlowerSink() as sink:
        setup = make_sync(workspace_id, {"url": warehouse.url}, sink.url)
        workers.start("writer")
        run_id = run_service.trigger(setup.workspace_id, [setup.sync_id], full_refresh=False)[0].id
        _wait_for(lambda: len(sink.received) >= 3)
        run_service.cancel(setup.workspace_id, run_id)
        run = wait_for_run(run_id, timeout_s=60)
        assert run.status == "cancelled"
        received = len(sink.store)
        assert 30 <= received < 300
        assert run.rows_written == received
        with transaction() as conn:
            snapshot = conn.execute(
                "SELECT count(*) FROM sync_snapshots WHERE sync_id = %s", (setup.sync_id,)
            ).fetchone()[0]
        assert snapshot == received
        time.sleep(1)  # nothing more arrives after the run ended
        assert len(sink.store) == received == get_run(run_id).rows_written
