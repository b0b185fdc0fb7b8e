"""The Celery beat schedule: a scheduler tick every few seconds and the reaper.

Beat only rings these two bells; the schedules themselves live in Postgres and are read by the
tick, so a schedule changed through the API takes effect at the next tick without a restart."""

from __future__ import annotations

from typing import Any

from shared.queue import REAP, SCHEDULE_TICK
from shared.settings import get_settings


def beat_schedule() -> dict[str, Any]:
    settings = get_settings()
    return {
        "retl-schedule-tick": {
            "task": SCHEDULE_TICK,
            "schedule": settings.beat_interval_s,
            # A tick left unconsumed by busy workers is superseded by the next one: drop it
            # rather than let a backlog of identical ticks build up.
            "options": {
                "queue": settings.control_queue, "expires": max(settings.beat_interval_s * 2, 1),
            },
        },
        "retl-reap": {
            "task": REAP,
            "schedule": settings.reaper_interval_s,
            "options": {
                "queue": settings.control_queue, "expires": max(settings.reaper_interval_s * 2, 1),
            },
        },
    }
