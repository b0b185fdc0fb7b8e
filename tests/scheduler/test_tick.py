"""The beat tick against Postgres with a controlled clock: due detection, exactly one run per
tick, catch-up after downtime, coalescing behind an active run, and API changes taking effect."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable

from scheduler.service import tick
from shared.db import transaction
from shared.repositories import runs, syncs
from shared.services import runs as run_service
from shared.services import syncs as sync_service
from tests.scheduler.helpers import (
    finish_all_runs,
    load_sync,
    lock_sync_row,
    runs_of,
    set_run_status,
    utc,
)

MakeSync = Callable[..., syncs.Sync]
SECOND = dt.timedelta(seconds=1)


def test_cron_sync_is_not_due_before_its_time_and_runs_once_at_it(make_sync: MakeSync) -> None:
    schedule = {"type": "cron", "expression": "15 */4 * * *", "timezone": "UTC"}
    sync = make_sync(schedule, next_run_at=utc(2024, 5, 1, 0, 15))

    assert tick(utc(2024, 5, 1, 0, 14, 59)) == []
    created = tick(utc(2024, 5, 1, 0, 15, 3))

    [run] = runs_of(sync.id)
    assert created == [run.id]
    assert (run.status, run.trigger, run.scheduled_for) == ("queued", "schedule", utc(2024, 5, 1, 0, 15))
    assert load_sync(sync.id).next_run_at == utc(2024, 5, 1, 4, 15)


def test_interval_sync_runs_every_interval_keeping_its_phase(make_sync: MakeSync) -> None:
    sync = make_sync({"type": "interval", "every": "15m"}, next_run_at=utc(2024, 5, 1, 10, 0))

    tick(utc(2024, 5, 1, 10, 0, 4))  # a beat tick a few seconds late does not shift the schedule
    assert load_sync(sync.id).next_run_at == utc(2024, 5, 1, 10, 15)
    finish_all_runs(sync.id)
    assert tick(utc(2024, 5, 1, 10, 14, 59)) == []
    tick(utc(2024, 5, 1, 10, 15, 2))

    assert [r.scheduled_for for r in runs_of(sync.id)] == [utc(2024, 5, 1, 10, 0), utc(2024, 5, 1, 10, 15)]
    assert load_sync(sync.id).next_run_at == utc(2024, 5, 1, 10, 30)


def test_manual_sync_has_no_next_run_and_is_never_scheduled(make_sync: MakeSync) -> None:
    sync = make_sync({"type": "manual"})

    assert sync.next_run_at is None
    assert tick(utc(2100, 1, 1)) == []
    assert runs_of(sync.id) == []


def test_new_schedule_gets_its_next_run_at_from_its_schedule(make_sync: MakeSync) -> None:
    before = dt.datetime.now(dt.UTC)
    sync = make_sync({"type": "interval", "every": "10m"})
    after = dt.datetime.now(dt.UTC)

    assert before + dt.timedelta(minutes=10) <= sync.next_run_at <= after + dt.timedelta(minutes=10)


def test_repeating_a_tick_for_the_same_time_creates_nothing(make_sync: MakeSync) -> None:
    sync = make_sync({"type": "interval", "every": "1h"}, next_run_at=utc(2024, 5, 1, 9))
    now = utc(2024, 5, 1, 9, 0, 1)

    assert len(tick(now)) == 1
    finish_all_runs(sync.id)
    assert tick(now) == []
    assert len(runs_of(sync.id)) == 1


def test_two_concurrent_ticks_create_exactly_one_run(make_sync: MakeSync) -> None:
    syncs_due = [
        make_sync({"type": "interval", "every": "5m"}, next_run_at=utc(2024, 5, 1, 9), name=f"s{i}")
        for i in range(5)
    ]
    now = utc(2024, 5, 1, 9, 0, 1)
    start = threading.Barrier(4)
    created: list[list[str]] = []
    errors: list[BaseException] = []

    def beat() -> None:
        try:
            start.wait()
            created.append(tick(now))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=beat) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    assert sorted(run_id for ids_ in created for run_id in ids_) == sorted(
        run.id for sync in syncs_due for run in runs_of(sync.id)
    )
    for sync in syncs_due:
        [run] = runs_of(sync.id)
        assert run.scheduled_for == utc(2024, 5, 1, 9)
        assert load_sync(sync.id).next_run_at == utc(2024, 5, 1, 9, 5)


def test_a_tick_skips_a_sync_another_beat_is_handling(make_sync: MakeSync, database_url: str) -> None:
    sync = make_sync({"type": "interval", "every": "5m"}, next_run_at=utc(2024, 5, 1, 9))
    other_beat = lock_sync_row(database_url, sync.id)
    try:
        assert tick(utc(2024, 5, 1, 9, 0, 1)) == []
    finally:
        other_beat.rollback()
        other_beat.close()

    assert len(tick(utc(2024, 5, 1, 9, 0, 2))) == 1
    assert len(runs_of(sync.id)) == 1


def test_a_tick_that_already_has_its_run_gets_no_second_one(make_sync: MakeSync) -> None:
    # The state a beat would find if the run of a tick were committed without its next_run_at:
    # the unique (sync_id, scheduled_for) constraint, not timing, keeps it to one run.
    sync = make_sync({"type": "interval", "every": "5m"}, next_run_at=utc(2024, 5, 1, 9))
    with transaction() as conn:
        run, _ = runs.insert_queued(
            conn, workspace_id=sync.workspace_id, sync_id=sync.id, trigger="schedule",
            scheduled_for=utc(2024, 5, 1, 9),
        )
    set_run_status(run.id, "succeeded")

    assert tick(utc(2024, 5, 1, 9, 0, 1)) == []
    assert [r.id for r in runs_of(sync.id)] == [run.id]
    assert load_sync(sync.id).next_run_at == utc(2024, 5, 1, 9, 5)


def test_after_downtime_a_missed_interval_sync_runs_once_then_follows_its_schedule(
    make_sync: MakeSync,
) -> None:
    sync = make_sync({"type": "interval", "every": "15m"}, next_run_at=utc(2024, 5, 1, 9))
    back_up = utc(2024, 5, 1, 14, 7)  # beat was down for five hours: twenty ticks missed

    tick(back_up)

    [run] = runs_of(sync.id)
    assert run.scheduled_for == utc(2024, 5, 1, 9)
    assert load_sync(sync.id).next_run_at == utc(2024, 5, 1, 14, 15)
    assert tick(back_up + SECOND) == []


def test_after_downtime_a_missed_cron_sync_runs_once_then_follows_its_schedule(
    make_sync: MakeSync,
) -> None:
    schedule = {"type": "cron", "expression": "0 * * * *", "timezone": "UTC"}
    sync = make_sync(schedule, next_run_at=utc(2024, 5, 1, 9))

    tick(utc(2024, 5, 3, 7, 30))  # two days down

    assert [r.scheduled_for for r in runs_of(sync.id)] == [utc(2024, 5, 1, 9)]
    assert load_sync(sync.id).next_run_at == utc(2024, 5, 3, 8)


def test_a_tick_while_a_run_is_running_queues_exactly_one_behind_it(make_sync: MakeSync) -> None:
    sync = make_sync({"type": "interval", "every": "1m"}, next_run_at=utc(2024, 5, 1, 9))
    [first] = tick(utc(2024, 5, 1, 9, 0, 1))
    set_run_status(first, "running")

    [behind] = tick(utc(2024, 5, 1, 9, 1, 1))
    # The run is still going after several more ticks: they all coalesce onto the queued one.
    for minute in (2, 3, 4):
        assert tick(utc(2024, 5, 1, 9, minute, 1)) == []

    statuses = {r.id: r.status for r in runs_of(sync.id)}
    assert statuses == {first: "running", behind: "queued"}
    assert load_sync(sync.id).next_run_at == utc(2024, 5, 1, 9, 5)


def test_runs_record_their_trigger_and_a_tick_coalesces_onto_a_queued_manual_run(
    make_sync: MakeSync,
) -> None:
    sync = make_sync({"type": "interval", "every": "1h"}, next_run_at=utc(2024, 5, 1, 9))
    [manual] = run_service.trigger(sync.workspace_id, [sync.id], full_refresh=False)

    assert tick(utc(2024, 5, 1, 9, 0, 1)) == []
    set_run_status(manual.id, "succeeded")
    [scheduled] = tick(utc(2024, 5, 1, 10, 0, 1))

    assert [(r.id, r.trigger) for r in runs_of(sync.id)] == [(manual.id, "manual"), (scheduled, "schedule")]


def test_pausing_stops_the_schedule_and_resuming_starts_it_from_now(make_sync: MakeSync) -> None:
    sync = make_sync({"type": "interval", "every": "5m"}, next_run_at=utc(2024, 5, 1, 9))

    paused = sync_service.toggle(sync.workspace_id, sync.id, False)
    assert paused.next_run_at is None
    assert tick(utc(2100, 1, 1)) == []

    resumed_at = dt.datetime.now(dt.UTC)
    resumed = sync_service.toggle(sync.workspace_id, sync.id, True)
    # No catch-up for the time it was paused: the next run is one interval after resuming.
    assert resumed.next_run_at >= resumed_at + dt.timedelta(minutes=5)
    assert tick(resumed_at) == []
    tick(resumed.next_run_at)
    assert [r.scheduled_for for r in runs_of(sync.id)] == [resumed.next_run_at]


def test_schedule_edits_take_effect_at_the_next_tick(make_sync: MakeSync) -> None:
    sync = make_sync({"type": "cron", "expression": "0 9 * * *", "timezone": "UTC"})

    edited = sync_service.update(sync.workspace_id, sync.id, {"schedule": {"type": "interval", "every": "2m"}})
    assert edited.schedule == {"type": "interval", "every": "2m"}
    tick(edited.next_run_at)
    finish_all_runs(sync.id)
    assert [r.scheduled_for for r in runs_of(sync.id)] == [edited.next_run_at]

    manual = sync_service.update(sync.workspace_id, sync.id, {"schedule": {"type": "manual"}})
    assert manual.next_run_at is None
    assert tick(utc(2100, 1, 1)) == []
    assert len(runs_of(sync.id)) == 1


def test_a_deleted_sync_is_no_longer_scheduled(make_sync: MakeSync) -> None:
    sync = make_sync({"type": "interval", "every": "5m"}, next_run_at=utc(2024, 5, 1, 9))

    sync_service.delete(sync.workspace_id, sync.id)

    assert tick(utc(2024, 5, 1, 9, 0, 1)) == []
    assert runs_of(sync.id) == []


def test_a_stored_schedule_that_can_no_longer_fire_is_unscheduled_without_stopping_others(
    make_sync: MakeSync,
) -> None:
    broken = make_sync({"type": "interval", "every": "5m"}, next_run_at=utc(2024, 5, 1, 9), name="broken")
    healthy = make_sync({"type": "interval", "every": "5m"}, next_run_at=utc(2024, 5, 1, 9), name="ok")
    with transaction() as conn:
        syncs.update(conn, broken.id, {"schedule": {"type": "cron", "expression": "0 9 * * *",
                                                    "timezone": "Mars/Olympus_Mons"}})

    created = tick(utc(2024, 5, 1, 9, 0, 1))

    assert [r.id for r in runs_of(healthy.id)] == created
    assert runs_of(broken.id) == []
    assert load_sync(broken.id).next_run_at is None
