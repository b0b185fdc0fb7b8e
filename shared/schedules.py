"""Schedules: validation and the next time a schedule fires, in the schedule's own timezone."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

_INTERVAL = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
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
        return {"type": "cron", "expression": expression, "timezone": timezone}
    if kind == "interval":
        every = schedule.get("every")
        seconds = interval_seconds(every if isinstance(every, str) else "")
        if seconds < min_interval_s:
            raise ScheduleError("every", f"must be at least {int(min_interval_s)} seconds")
        return {"type": "interval", "every": every.strip()}
    raise ScheduleError("type", "must be one of cron, interval, manual")


def next_fire(schedule: dict[str, Any], after: dt.datetime) -> dt.datetime | None:
    """The first time strictly after `after` at which the schedule fires (UTC), None if manual."""
    kind = schedule.get("type")
    if kind == "cron":
        tz = zone(schedule.get("timezone") or "UTC")
        # Walk in local wall-clock time, then convert: this keeps 09:00 at 09:00 across DST.
        # A time skipped by spring-forward fires just after the gap (fold=0 keeps the offset from
        # before the change); a time repeated by fall-back fires at its first occurrence only.
        candidate = after.astimezone(tz).replace(tzinfo=None)
        while True:
            candidate = croniter(schedule["expression"], candidate).get_next(dt.datetime)
            fire = candidate.replace(tzinfo=tz, fold=0).astimezone(dt.UTC)
            if fire > after:
                return fire
    if kind == "interval":
        return after + dt.timedelta(seconds=interval_seconds(schedule["every"]))
    return None
