"""Cron schedules in real timezones, through daylight-saving changes, by pure computation and by
driving beat ticks through the changes with a controlled clock."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from zoneinfo import ZoneInfo

import pytest

from scheduler.beat import beat_schedule
from scheduler.service import tick
from shared import schedules
from shared.queue import REAP, SCHEDULE_TICK
from shared.repositories import syncs
from shared.settings import get_settings
from tests.scheduler.helpers import finish_all_runs, load_sync, runs_of, utc

MakeSync = Callable[..., syncs.Sync]
BERLIN = ZoneInfo("Europe/Berlin")


def berlin_cron(expression: str) -> dict[str, str]:
    return {"type": "cron", "expression": expression, "timezone": "Europe/Berlin"}


def drive_beat(sync_id: str, start: dt.datetime, end: dt.datetime, step: dt.timedelta) -> list[dt.datetime]:
    """Tick every `step` from `start` to `end`, each run finishing before the next tick; the
    times the runs were scheduled for."""
    now = start
    while now <= end:
        tick(now)
        finish_all_runs(sync_id)
        now += step
    return [run.scheduled_for for run in runs_of(sync_id)]


def test_nine_oclock_in_berlin_fires_at_nine_local_on_both_sides_of_spring_forward(
    make_sync: MakeSync,
) -> None:
    schedule = berlin_cron("0 9 * * *")
    sync = make_sync(schedule, next_run_at=schedules.next_fire(schedule, utc(2024, 3, 29, 12)))

    fired = drive_beat(sync.id, utc(2024, 3, 29, 12), utc(2024, 4, 1, 12), dt.timedelta(minutes=10))

    # CET (UTC+1) until 31 March 02:00, CEST (UTC+2) after.
    assert fired == [utc(2024, 3, 30, 8), utc(2024, 3, 31, 7), utc(2024, 4, 1, 7)]
    assert {f.astimezone(BERLIN).strftime("%H:%M") for f in fired} == {"09:00"}


def test_nine_oclock_in_berlin_fires_at_nine_local_on_both_sides_of_fall_back(
    make_sync: MakeSync,
) -> None:
    schedule = berlin_cron("0 9 * * *")
    sync = make_sync(schedule, next_run_at=schedules.next_fire(schedule, utc(2024, 10, 25, 12)))

    fired = drive_beat(sync.id, utc(2024, 10, 25, 12), utc(2024, 10, 28, 12), dt.timedelta(minutes=10))

    # CEST until 27 October 03:00, then CET: the day is 25 hours long, nine o'clock comes once.
    assert fired == [utc(2024, 10, 26, 7), utc(2024, 10, 27, 8), utc(2024, 10, 28, 8)]
    assert {f.astimezone(BERLIN).strftime("%H:%M") for f in fired} == {"09:00"}


def test_a_time_inside_the_spring_gap_fires_once_when_the_clocks_jump(make_sync: MakeSync) -> None:
    schedule = berlin_cron("30 2 * * *")  # 02:30 does not exist in Berlin on 31 March 2024
    sync = make_sync(schedule, next_run_at=schedules.next_fire(schedule, utc(2024, 3, 30, 12)))

    fired = drive_beat(sync.id, utc(2024, 3, 30, 12), utc(2024, 4, 1, 12), dt.timedelta(minutes=10))

    assert fired == [utc(2024, 3, 31, 1), utc(2024, 4, 1, 0, 30)]
    assert [f.astimezone(BERLIN).strftime("%H:%M") for f in fired] == ["03:00", "02:30"]


def test_a_time_in_the_repeated_fall_back_hour_fires_once_at_its_first_occurrence(
    make_sync: MakeSync,
) -> None:
    schedule = berlin_cron("30 2 * * *")  # 02:30 happens twice in Berlin on 27 October 2024
    sync = make_sync(schedule, next_run_at=schedules.next_fire(schedule, utc(2024, 10, 26, 12)))

    fired = drive_beat(sync.id, utc(2024, 10, 26, 12), utc(2024, 10, 28, 12), dt.timedelta(minutes=10))

    assert fired == [utc(2024, 10, 27, 0, 30), utc(2024, 10, 28, 1, 30)]
    assert load_sync(sync.id).next_run_at == utc(2024, 10, 29, 1, 30)


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        (utc(2024, 3, 31, 0, 59), utc(2024, 3, 31, 1, 0)),  # 01:59 CET: the gap's slots at 03:00 CEST
        (utc(2024, 3, 31, 1, 0), utc(2024, 3, 31, 1, 15)),  # not again: 03:15 CEST next
        (utc(2024, 10, 27, 0, 45), utc(2024, 10, 27, 2, 0)),  # 02:45 CEST, then 03:00 CET
    ],
)
def test_quarter_hourly_berlin_cron_across_the_changes(after: dt.datetime, expected: dt.datetime) -> None:
    assert schedules.next_fire(berlin_cron("*/15 * * * *"), after) == expected


def test_timezones_other_than_berlin_and_utc_are_honoured() -> None:
    schedule = {"type": "cron", "expression": "0 9 * * 1-5", "timezone": "America/New_York"}
    # Friday 8 March 2024 09:00 EST, then Monday 11 March 09:00 EDT (US change on the 10th).
    assert schedules.next_fire(schedule, utc(2024, 3, 8, 0)) == utc(2024, 3, 8, 14)
    assert schedules.next_fire(schedule, utc(2024, 3, 8, 14)) == utc(2024, 3, 11, 13)


def test_schedule_validation_names_the_bad_field() -> None:
    cases = {
        "expression": {"type": "cron", "expression": "0 0 31 2 *"},  # 31 February never comes
        "timezone": {"type": "cron", "expression": "0 9 * * *", "timezone": "Europe/Atlantis"},
        "every": {"type": "interval", "every": "30s"},  # below the 60 s minimum
        "type": {"type": "hourly"},
    }
    for field, schedule in cases.items():
        with pytest.raises(schedules.ScheduleError) as raised:
            schedules.validate(schedule, 60)
        assert raised.value.field == field
    assert schedules.validate({"type": "interval", "every": " 2h "}, 60) == {"type": "interval", "every": "2h"}


def test_beat_sends_the_tick_and_the_reaper_at_their_configured_intervals() -> None:
    settings = get_settings()
    entries = {entry["task"]: entry for entry in beat_schedule().values()}

    assert entries[SCHEDULE_TICK]["schedule"] == settings.beat_interval_s
    assert entries[REAP]["schedule"] == settings.reaper_interval_s
    assert {entry["options"]["queue"] for entry in entries.values()} == {settings.control_queue}
