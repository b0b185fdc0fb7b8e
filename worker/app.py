"""The Celery app as workers and beat run it: `celery -A worker.app worker|beat`.

Tasks live in `worker.tasks` (runs, batches, the reaper) and `scheduler.tasks` (due schedules);
each task calls one service."""

from __future__ import annotations

from celery.signals import worker_process_init

from scheduler.beat import beat_schedule
from shared import db
from shared.queue import celery_app

app = celery_app()
app.conf.include = ["worker.tasks", "scheduler.tasks"]
app.conf.beat_schedule = beat_schedule()


@worker_process_init.connect
def _fresh_pool_after_fork(**_: object) -> None:
    # A pool inherited from the parent process shares its sockets: every child opens its own.
    db.reset_pool()
