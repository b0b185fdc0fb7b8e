"""Faults survived by real worker processes on 127.0.0.1: a worker killed mid-run, Redis
restarted with its data wiped, every Postgres connection cut, a destination that never answers,
and a burst of concurrent triggers. Each asserts on what the receiver holds and on the run's
counts: written + failed = planned, nothing lost."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from shared.db import transaction
from shared.queue import celery_app
from shared.repositories import runs as runs_repo
from shared.settings import get_settings
from tests.engine.conftest import Warehouse, make_sync, wait_for_run
from tests.engine.test_workers import SlowSink, Workers, _trigger
from tests.faults.conftest import OwnRedis

pytestmark = [pytest.mark.slow, pytest.mark.faults, pytest.mark.timeout(150)]


def _reap() -> None:
    from worker import runs as engine

    engine.reap()


def _planned(run: runs_repo.Run) -> int:
    """The records a first run of an upsert sync planned to send."""
    return run.rows_added + run.rows_changed


def _wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_a_worker_killed_mid_run_of_20000_records_is_finished_by_the_other(
    workers: Workers, workspace_id: str, warehouse: Warehouse,
) -> None:
    warehouse.insert(20_000)
    with SlowSink() as sink:
        sink.delay_s = 0.01
        setup = make_sync(workspace_id, {"url": warehouse.url}, sink.url,
                          destination_config={"batchSize": 100})
        workers.start("doomed")
        workers.start("survivor")
        run_id = _trigger(setup)
        _wait_until(lambda: len(sink.received) >= 20, 60, "the run never started writing")
        workers.kill("doomed")
        assert len(sink.store) < 20_000
        run = wait_for_run(run_id, timeout_s=120, poll=_reap)
    assert run.status == "succeeded", run.error
    assert sorted(map(int, sink.store)) == list(range(1, 20_001))
    # Every record planned once: when the kill took the planner, its successor finds what was
    # written before in the snapshot (unchanged) and plans the rest (see "Graceful scale-down").
    assert _planned(run) + run.rows_unchanged == 20_000
    assert run.rows_written + run.rows_failed == _planned(run)
    assert run.rows_failed == 0
    # At least once: only what the killed worker had in flight may have arrived twice.
    assert sink.record_count - 20_000 <= 2 * 100


@pytest.fixture
def workers_on_own_redis(
    own_redis: OwnRedis, workers: Workers,
) -> Iterator[tuple[Workers, OwnRedis]]:
    """Workers, and this process, on a Redis the test may kill and wipe."""
    from worker import destinations

    def use(url: str) -> None:
        os.environ["RETL_REDIS_URL"] = url
        get_settings.cache_clear()
        celery_app.cache_clear()
        destinations.forget_all()

    shared_redis = os.environ["RETL_REDIS_URL"]
    use(own_redis.url)
    try:
        yield workers, own_redis
    finally:
        workers.stop_all()
        use(shared_redis)


def test_redis_restarted_empty_while_runs_are_queued_and_running_loses_no_run(
    workers_on_own_redis: tuple[Workers, OwnRedis], workspace_id: str, warehouse: Warehouse,
) -> None:
    workers, redis_server = workers_on_own_redis
    warehouse.insert(300)
    with SlowSink() as sink:
        sink.delay_s = 0.02
        setups = [
            make_sync(workspace_id, {"url": warehouse.url}, sink.url,
                      query=f"SELECT * FROM warehouse.people WHERE id % 3 = {part}")
            for part in range(3)
        ]
        workers.start("only")
        run_ids = [_trigger(setup) for setup in setups]
        _wait_until(lambda: len(sink.received) >= 2, 60, "no run started writing")
        redis_server.client().set("retl-test:before-the-wipe", "1")
        redis_server.kill()
        redis_server.start()
        assert redis_server.client().get("retl-test:before-the-wipe") is None
        runs = [wait_for_run(run_id, timeout_s=120, poll=_reap) for run_id in run_ids]
    assert [run.status for run in runs] == ["succeeded"] * 3, [run.error for run in runs]
    assert sorted(map(int, sink.store)) == list(range(1, 301))
    for run in runs:
        assert run.rows_written + run.rows_failed == _planned(run) == 100


def _wait_through_outages(run_id: str, timeout_s: float) -> runs_repo.Run:
    """`wait_for_run`, for a test whose own connections are cut too: a poll that meets a
    closed connection is tried again, as the next beat of a reaper would."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return wait_for_run(run_id, timeout_s=max(1.0, deadline - time.monotonic()),
                                poll=_reap)
        except psycopg.OperationalError:
            time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not finish")


def _cut_every_connection(database_url: str) -> int:
    name = database_url.rsplit("/", 1)[1].split("?", 1)[0]
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()", (name,),
        ).fetchall()
    return len(rows)


def _phase(run_id: str) -> str | None:
    with transaction() as conn:
        row = conn.execute("SELECT phase FROM run_progress WHERE run_id = %s", (run_id,)).fetchone()
    return None if row is None else row[0]


def test_every_postgres_connection_cut_while_a_run_writes_and_the_run_still_ends(
    workers: Workers, workspace_id: str, warehouse: Warehouse, database_url: str,
) -> None:
    warehouse.insert(2_000)
    with SlowSink() as sink:
        sink.delay_s = 0.02
        setup = make_sync(workspace_id, {"url": warehouse.url}, sink.url)
        workers.start("first")
        workers.start("second")
        run_id = _trigger(setup)
        _wait_until(lambda: _phase(run_id) == "writing", 60, "planning never ended")
        assert len(sink.store) < 2_000
        assert _cut_every_connection(database_url) > 0
        run = _wait_through_outages(run_id, timeout_s=120)
        if run.status == "failed":
            # A statement of the run's own bookkeeping was cut: the run ends with the database's
            # message (the server's, or libpq's when the server's last word was lost with the
            # socket), and the next run sends what it had not.
            assert "terminating connection" in run.error or "server closed the connection" in run.error
            run = _wait_through_outages(_trigger(setup), timeout_s=120)
    assert run.status == "succeeded", run.error
    assert sorted(map(int, sink.store)) == list(range(1, 2_001))
    assert run.rows_written + run.rows_failed == _planned(run)


class SilentServer:
    """Accepts connections and reads what comes, but never answers."""

    def __init__(self) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(64)
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}/records"
        self.connections: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        self._socket.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._socket.accept()
            except OSError:
                continue
            self.connections.append(conn)

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self.connections:
            conn.close()
        self._socket.close()


def test_a_destination_that_never_answers_times_out_and_holds_no_pool_process(
    workers: Workers, workspace_id: str, warehouse: Warehouse, sink,
) -> None:
    warehouse.insert(10)
    with SilentServer() as silent:
        stuck = make_sync(workspace_id, {"url": warehouse.url}, silent.url,
                          destination_config={"timeoutSeconds": 1})
        healthy = make_sync(workspace_id, {"url": warehouse.url}, sink.url)
        workers.start("only")
        stuck_run = wait_for_run(_trigger(stuck), timeout_s=120, poll=_reap)
        assert len(silent.connections) >= 2  # it was tried again
    assert stuck_run.rows_written == 0
    assert stuck_run.rows_written + stuck_run.rows_failed == _planned(stuck_run) == 10
    with transaction() as conn:
        codes = {row[0] for row in conn.execute(
            "SELECT error_code FROM dlq_entries WHERE sync_id = %s", (stuck.sync_id,))}
    assert codes == {"TIMEOUT"}
    # The same single pool process is free for the next run.
    healthy_run = wait_for_run(_trigger(healthy), timeout_s=60, poll=_reap)
    assert healthy_run.status == "succeeded", healthy_run.error
    assert len(sink.store) == 10


def test_fifty_concurrent_triggers_of_one_sync_make_one_queued_run(
    workspace_id: str, warehouse: Warehouse, sink,
) -> None:
    warehouse.insert(5)
    setup = make_sync(workspace_id, {"url": warehouse.url}, sink.url)
    answers: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(10)

    def trigger_five() -> None:
        start.wait()
        for _ in range(5):
            try:
                answers.append(_trigger(setup))
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

    threads = [threading.Thread(target=trigger_five) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(answers) == 50
    assert len(set(answers)) == 1  # coalesced: every trigger got the one queued run
    with transaction() as conn:
        count = conn.execute(
            "SELECT count(*) FROM runs WHERE sync_id = %s", (setup.sync_id,)).fetchone()[0]
    assert count == 1
