"""The Celery task beat sends every few seconds: queue the runs of due schedules."""

from __future__ import annotations

from scheduler import service
from shared.queue import SCHEDULE_TICK, celery_app


@celery_app().task(name=SCHEDULE_TICK)
def schedule_tick() -> list[str]:
    return service.tick()
