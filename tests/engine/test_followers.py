"""Writers following the planner: a writer of a run still being planned takes the batches
stored after its own without their doorbells, gives up after RETL_WRITER_FOLLOW_SECONDS
without one (the planner rings again), and neither side can leave a batch without a writer."""

from __future__ import annotations

import threading
import time
from collections import Counter

import psycopg
import pytest

from connectors.sources.postgres import PostgresSource
from shared import db
from shared.db import transaction
from shared.repositories import engine as repo
from tests.engine.conftest import EngineDriver, Warehouse, get_run
from tests.fakes.http_sink import FakeHttpSink


def _sent(sink: FakeHttpSink) -> Counter[str]:
    return Counter(str(r["external_id"]) for batch in sink.received for r in batch.records)


def _drained_with_every_row_sent_once(
    driver: EngineDriver, run_id: str, sink: FakeHttpSink, rows: int
) -> None:
    """Write the batches whose doorbells were rung; the run succeeds, every row sent once."""
    driver.drain()
    run = get_run(run_id)
    assert run.status == "succeeded"
    assert _sent(sink) == Counter(str(i) for i in range(1, rows + 1))


def _slow_source(
    monkeypatch: pytest.MonkeyPatch, pauses: dict[int, float], every: float,
    gate: threading.Event | None = None,
) -> None:
    """The source yields a chunk every `every` seconds, waits `pauses[n]` before chunk n, and
    holds its second chunk until `gate` is set."""
    original = PostgresSource.stream_rows_with_hashes

    def slow(self, *args, **kwargs):
        for number, chunk in enumerate(original(self, *args, **kwargs)):
            if number == 1 and gate is not None:
                assert gate.wait(timeout=10)
            time.sleep(pauses.get(number, every))
            yield chunk

    monkeypatch.setattr(PostgresSource, "stream_rows_with_hashes", slow)
    monkeypatch.setattr("worker.planner.ROW_CHUNK", 10)


def _plan_in_background(driver: EngineDriver, run_id: str) -> threading.Thread:
    planner = threading.Thread(target=driver.engine.execute_run, args=(run_id,))
    planner.start()
    return planner


def _first_doorbell(driver: EngineDriver, timeout_s: float = 10) -> tuple[str, int, int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with driver.lock:
            if driver.pending:
                return driver.pending.pop(0)
        time.sleep(0.01)
    raise AssertionError("the planner rang no doorbell")


def _writer_until(run_id: str) -> object:
    with transaction() as conn:
        return conn.execute(
            "SELECT writer_until FROM run_progress WHERE run_id = %s", (run_id,)
        ).fetchone()[0]


def _rung(run_id: str) -> dict[int, bool]:
    with transaction() as conn:
        return dict(conn.execute(
            "SELECT batch_no, rung FROM run_batches WHERE run_id = %s ORDER BY batch_no",
            (run_id,),
        ).fetchall())


def test_a_writer_follows_the_planner_and_takes_its_batches_without_doorbells(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    warehouse.insert(95)
    promised = threading.Event()
    # A batch every 0.08 s, well within the 0.3 s a follower waits; the second one only once
    # the writer of the first has promised to follow.
    _slow_source(monkeypatch, {}, every=0.08, gate=promised)
    run_id = driver.trigger(people_sync())
    planner = _plan_in_background(driver, run_id)
    first = _first_doorbell(driver)
    assert first[1] == 1
    reports = []
    writer = threading.Thread(target=lambda: reports.append(driver.engine.write_batch(*first)))
    writer.start()  # writes batch 1, then follows to the end
    deadline = time.monotonic() + 10
    while _writer_until(run_id) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    promised.set()
    planner.join(timeout=30)
    writer.join(timeout=30)
    assert [report.status for report in reports] == ["written"]
    run = get_run(run_id)
    assert run.status == "succeeded"
    assert _sent(sink) == Counter(str(i) for i in range(1, 96))  # every row once
    assert (run.rows_written, run.rows_failed) == (95, 0)
    rung = _rung(run_id)
    assert len(rung) == 10 and rung[1] is True
    assert not any(rung[n] for n in range(2, 11)), "batches stored while it followed: no doorbell"
    assert driver.pending == []


def test_a_follower_gives_up_when_the_planner_pauses_and_the_planner_rings_again(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    warehouse.insert(60)
    _slow_source(monkeypatch, {3: 1.2}, every=0.05)  # a pause of four follow periods
    run_id = driver.trigger(people_sync())
    planner = _plan_in_background(driver, run_id)
    driver.engine.write_batch(*_first_doorbell(driver))  # returns once it has given up
    assert _writer_until(run_id) is None  # the promise is withdrawn
    planner.join(timeout=30)
    rung = _rung(run_id)
    assert rung[4] is True, "the first batch after the pause has its doorbell again"
    assert 4 in [batch for _, batch, _ in driver.pending]
    _drained_with_every_row_sent_once(driver, run_id, sink, 60)


def _batch(conn: psycopg.Connection, run_id: str, batch_no: int, *, rung: bool) -> None:
    conn.execute(
        "INSERT INTO run_batches (run_id, batch_no, operation, record_keys, payload, rung)"
        " VALUES (%s, %s, 'upsert', '{}', ''::bytea, %s)",
        (run_id, batch_no, rung),
    )


@pytest.fixture
def leased(driver: EngineDriver, people_sync) -> tuple[str, int]:
    """A run taken by a planner (its lease and fencing token) that has stored nothing yet."""
    run_id = driver.trigger(people_sync())
    with transaction() as conn:
        lease = repo.take_lease(conn, run_id, "a-planner", 60)
        repo.reset_staging(conn, run_id)
    assert lease is not None
    return run_id, lease.fencing_token


def _promise(run_id: str, promise_s: float | None, backlog_rung_s_ago: float | None = None) -> None:
    with transaction() as conn:
        conn.execute(
            "UPDATE run_progress SET writer_until = now() + make_interval(secs => %s),"
            " backlog_rung_at = now() - make_interval(secs => %s) WHERE run_id = %s",
            (promise_s, backlog_rung_s_ago, run_id),
        )


def _backlog_rung_at(run_id: str) -> object:
    with transaction() as conn:
        return conn.execute(
            "SELECT backlog_rung_at FROM run_progress WHERE run_id = %s", (run_id,)
        ).fetchone()[0]


def _store(conn: psycopg.Connection, run_id: str, token: int, batch_no: int) -> bool:
    """What the planner does in the transaction that stores a batch."""
    _batch(conn, run_id, batch_no, rung=True)
    return repo.fence_last_storing(
        conn, run_id, token, batch_no, read=None, added=0, changed=0, unchanged=0, failed=0
    )


@pytest.mark.parametrize(("promise_s", "left_to_followers", "rung_s_ago", "followed"), [
    (None, 0, None, False),  # nobody follows
    (-1.0, 0, None, False),  # the follower's promise ran out (it died, or a write is long)
    (5.0, 0, None, True),
    (5.0, 1, None, True),
    (5.0, 2, None, False),  # followers fall behind: another writer is called
    (5.0, 2, 5.0, False),  # ... and again once BACKLOG_RING_EVERY_S has passed
    (5.0, 2, 0.01, True),  # ... but not more often than that
])
def test_the_planner_leaves_a_batch_to_followers_only_under_a_live_promise_they_keep_up_with(
    leased: tuple[str, int], promise_s: float | None, left_to_followers: int,
    rung_s_ago: float | None, followed: bool,
) -> None:
    run_id, token = leased
    _promise(run_id, promise_s, rung_s_ago)
    with transaction() as conn:
        for batch_no in range(1, left_to_followers + 1):
            _batch(conn, run_id, batch_no, rung=False)
    rung_before = _backlog_rung_at(run_id)
    with db.connect(autocommit=True) as listener:
        listener.execute(f'LISTEN "{repo.followers_channel(run_id)}"')
        with transaction() as conn:
            assert _store(conn, run_id, token, 9) is followed
        woken = list(listener.notifies(timeout=0.2, stop_after=1))
    assert bool(woken) is followed
    assert _rung(run_id)[9] is (not followed)
    # A ring for the backlog (a follower exists, the batch is rung) is remembered.
    backlog_ring = promise_s is not None and promise_s > 0 and not followed
    assert (_backlog_rung_at(run_id) != rung_before) is backlog_ring


def test_a_planner_whose_lease_was_taken_stores_nothing(leased: tuple[str, int]) -> None:
    run_id, token = leased
    _promise(run_id, 5.0)
    with pytest.raises(repo.LeaseLost), transaction() as conn:
        _store(conn, run_id, token - 1, 9)
    assert _rung(run_id) == {}


def test_a_follower_keeps_its_promise_while_a_batch_is_left_to_it(leased: tuple[str, int]) -> None:
    run_id, _ = leased
    _promise(run_id, 5.0)
    with transaction() as conn:
        _batch(conn, run_id, 1, rung=True)  # has its doorbell: not the follower's
        _batch(conn, run_id, 2, rung=False)
    with transaction() as conn:
        assert repo.retire_follower(conn, run_id) is False
    assert _writer_until(run_id) is not None
    with transaction() as conn:
        conn.execute("UPDATE run_batches SET status = 'done' WHERE batch_no = 2")
    with transaction() as conn:
        assert repo.retire_follower(conn, run_id) is True
    assert _writer_until(run_id) is None


def test_a_batch_stored_while_the_follower_retires_is_seen_by_one_of_them(
    leased: tuple[str, int],
) -> None:
    """Both orders of the race, forced: the follower's look waits for the planner's commit, or
    the planner's decision waits for the follower's withdrawal."""
    run_id, token = leased
    _promise(run_id, 5.0)

    # The planner holds the lock first: the follower, once it gets it, sees the batch.
    retired: list[bool] = []
    with transaction() as planner:
        assert _store(planner, run_id, token, 1) is True

        def retire() -> None:
            with transaction() as conn:
                retired.append(repo.retire_follower(conn, run_id))

        follower = threading.Thread(target=retire)
        follower.start()
        time.sleep(0.3)
        assert retired == [], "the follower waits for the planner's transaction"
    follower.join(timeout=5)
    assert retired == [False]

    with transaction() as conn:
        conn.execute("UPDATE run_batches SET status = 'done' WHERE batch_no = 1")

    # The follower holds the lock first: the planner, once it gets it, finds no promise.
    decided: list[bool] = []
    with transaction() as follower_conn:
        assert repo.retire_follower(follower_conn, run_id) is True

        def store() -> None:
            with transaction() as conn:
                decided.append(_store(conn, run_id, token, 2))

        planner_thread = threading.Thread(target=store)
        planner_thread.start()
        time.sleep(0.3)
        assert decided == [], "the planner waits for the follower's transaction"
    planner_thread.join(timeout=5)
    assert decided == [False]
    assert _rung(run_id)[2] is True


def test_the_reaper_rings_what_a_dead_follower_left_at_once(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink) -> None:
    warehouse.insert(30)
    run_id = driver.trigger(people_sync())
    driver.engine.execute_run(run_id)
    driver.pending = [job for job in driver.pending if job[1] == 1]
    with transaction() as conn:  # batches 2 and 3 were left to a follower that died
        conn.execute(
            "UPDATE run_batches SET rung = false WHERE run_id = %s AND batch_no IN (2, 3)",
            (run_id,),
        )
        conn.execute(
            "UPDATE run_progress SET writer_until = now() - interval '1 second' WHERE run_id = %s",
            (run_id,),
        )
    report = driver.engine.reap()
    assert report.batches_enqueued == 2
    assert sorted(batch for _, batch, _ in driver.pending) == [1, 2, 3]
    assert _rung(run_id) == {1: True, 2: True, 3: True}
    driver.drain()
    run = get_run(run_id)
    assert run.status == "succeeded"
    assert (run.rows_written, len(sink.store)) == (30, 30)


def test_a_follower_hands_a_long_run_back_to_the_queue(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    warehouse.insert(95)
    monkeypatch.setattr("worker.runs.WRITER_TURN_S", 0.25)
    _slow_source(monkeypatch, {}, every=0.08)
    run_id = driver.trigger(people_sync())
    planner = _plan_in_background(driver, run_id)
    driver.engine.write_batch(*_first_doorbell(driver))  # follows a while, then stops
    planner.join(timeout=30)
    assert _writer_until(run_id) is None
    rung = _rung(run_id)
    assert rung[10] is True, "the run's last batches were rung again"
    assert 10 in [batch for _, batch, _ in driver.pending]
    _drained_with_every_row_sent_once(driver, run_id, sink, 95)


def test_the_planner_writes_what_its_followers_left_once_planning_is_over(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    warehouse.insert(95)
    run_id = driver.trigger(people_sync())
    original = PostgresSource.stream_rows_with_hashes

    def with_a_stalled_follower(self, *args, **kwargs):
        for number, chunk in enumerate(original(self, *args, **kwargs)):
            if number == 1:  # a writer promises to follow, then never takes a batch
                with transaction() as conn:
                    conn.execute(
                        "UPDATE run_progress SET writer_until = now() + interval '1 hour'"
                        " WHERE run_id = %s", (run_id,),
                    )
            yield chunk

    monkeypatch.setattr(PostgresSource, "stream_rows_with_hashes", with_a_stalled_follower)
    monkeypatch.setattr("worker.planner.ROW_CHUNK", 10)
    assert driver.engine.execute_run(run_id) is None
    rung = _rung(run_id)
    assert sum(rung.values()) <= 3, "under the promise, one ring for the backlog in a second"
    with transaction() as conn:
        status = dict(conn.execute(
            "SELECT batch_no, status FROM run_batches WHERE run_id = %s", (run_id,)
        ).fetchall())
    left_to_followers = [n for n, was_rung in rung.items() if not was_rung]
    assert len(left_to_followers) >= 7
    assert all(status[n] == "done" for n in left_to_followers), "the planner wrote them"
    _drained_with_every_row_sent_once(driver, run_id, sink, 95)


@pytest.fixture
def following_off(monkeypatch: pytest.MonkeyPatch):
    from shared.settings import get_settings

    monkeypatch.setenv("RETL_WRITER_FOLLOW_SECONDS", "0")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


def test_with_following_off_every_batch_has_its_doorbell(following_off, driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    warehouse.insert(40)
    _slow_source(monkeypatch, {}, every=0.05)
    run_id = driver.trigger(people_sync())
    planner = _plan_in_background(driver, run_id)
    driver.engine.write_batch(*_first_doorbell(driver))  # writes batch 1 only
    planner.join(timeout=30)
    assert _writer_until(run_id) is None
    assert _rung(run_id) == {1: True, 2: True, 3: True, 4: True}
    assert sorted(batch for _, batch, _ in driver.pending) == [2, 3, 4]
    _drained_with_every_row_sent_once(driver, run_id, sink, 40)
