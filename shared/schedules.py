"""Schedules: validation and the next time a schedule fires, in the schedule's own timezone."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

_INTERVAL = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
# Longer intervals overflow date arithmetic and are better written as cron.
MAX_INTERVAL_S = 366 * 86400
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class ScheduleError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def interval_seconds(every: str) -> int:
    match = _INTERVAL.match(every or "")
    if not match:
        raise ScheduleError("every", "must be a number followed by s, m, h or d, e.g. '15m'")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ScheduleError("timezone", f"unknown timezone {name!r}") from None


def validate(schedule: dict[str, Any], min_interval_s: float) -> dict[str, Any]:
    """The schedule in canonical form; ScheduleError naming the bad field otherwise."""
    kind = schedule.get("type")
    if kind == "manual":
        return {"type": "manual"}
    if kind == "cron":
        expression = schedule.get("expression")
        if not isinstance(expression, str) or not croniter.is_valid(expression):
            raise ScheduleError("expression", f"not a valid cron expression: {expression!r}")
        if len(expression.split()) != 5:
            raise ScheduleError("expression", "use five fields: minute hour day month weekday")
        timezone = schedule.get("timezone") or "UTC"
        zone(timezone)
        canonical = {"type": "cron", "expression": expression, "timezone": timezone}
        # croniter accepts dates that never come (`0 0 31 2 *`); such a sync would never run.
        try:
            next_fire(canonical, dt.datetime.now(dt.UTC))
        except CroniterError:
            raise ScheduleError("expression", f"{expression!r} never fires") from None
        return canonical
    if kind == "interval":
        every = schedule.get("every")
        seconds = interval_seconds(every if isinstance(every, str) else "")
        if seconds < min_interval_s:
            raise ScheduleError("every", f"must be at least {int(min_interval_s)} seconds")
        if seconds > MAX_INTERVAL_S:
            raise ScheduleError("every", f"must be at most {MAX_INTERVAL_S // 86400}d")
        return {"type": "interval", "every": every.strip()}
    raise ScheduleError("type", "must be one of cron, interval, manual")


def next_fire(schedule: dict[str, Any], after: dt.datetime) -> dt.datetime | None:
    """The first time strictly after `after` at which the schedule fires (UTC), None if manual."""
    kind = schedule.get("type")
    if kind == "cron":
        tz = zone(schedule.get("timezone") or "UTC")
        # Walk in local wall-clock time, then convert: this keeps 09:00 at 09:00 across DST.
        # A wall time repeated by fall-back fires at its first occurrence only; one skipped by
        # spring-forward fires at the instant the clocks jump (see `_first_instant_at`).
        candidate = after.astimezone(tz).replace(tzinfo=None, fold=0)
        while True:
            candidate = croniter(schedule["expression"], candidate).get_next(dt.datetime)
            fire = _first_instant_at(candidate, tz)
            if fire > after:
                return fire
    if kind == "interval":
        return after + dt.timedelta(seconds=interval_seconds(schedule["every"]))
    return None


def next_fire_since(schedule: dict[str, Any], last_due: dt.datetime, now: dt.datetime) -> dt.datetime | None:
    """The next fire strictly after `now` of a schedule that was last due at `last_due`.

    Fires missed between the two are skipped, not replayed. Intervals keep their phase (a 15m
    schedule due at :00 stays on :00, :15, …) however late the tick that handled it ran."""
    if schedule.get("type") == "interval" and last_due <= now:
        every = dt.timedelta(seconds=interval_seconds(schedule["every"]))
        return last_due + every * ((now - last_due) // every + 1)
    return next_fire(schedule, now)


def _first_instant_at(wall: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    """The first UTC instant at which clocks in `tz` show `wall` or later.

    For an ordinary wall time that is the time itself (its first occurrence when fall-back
    repeats it). For a wall time skipped by spring-forward it is the instant of the jump, so a
    02:30 job in Berlin runs at 03:00 on that day rather than not at all or an hour late."""
    first = wall.replace(tzinfo=tz, fold=0).astimezone(dt.UTC)
    if first.astimezone(tz).replace(tzinfo=None) == wall:
        return first
    # In a gap, fold=1 reads the wall time with the offset after the jump (an instant before
    # it) and fold=0 with the offset before (an instant after it): the jump lies between.
    before = wall.replace(tzinfo=tz, fold=1).astimezone(dt.UTC)
    after = first
    second = dt.timedelta(seconds=1)
    while after - before > second:
        middle = before + ((after - before) // (2 * second)) * second
        if middle.astimezone(tz).replace(tzinfo=None) >= wall:
            after = middle
        else:
            before = middle
    return after
