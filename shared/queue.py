"""The Celery app every process shares, and the helpers that enqueue work by task name.

Postgres is the truth and a message is only a doorbell: if Redis loses one, the worker's reaper
finds the queued run or batch again and re-enqueues it."""

from __future__ import annotations

import logging
from functools import cache

from celery import Celery

from shared.settings import get_settings

log = logging.getLogger(__name__)

EXECUTE_RUN = "retl.execute_run"
WRITE_BATCH = "retl.write_batch"
REAP = "retl.reap"
FINALIZE_RUN = "retl.finalize_run"
SCHEDULE_TICK = "retl.schedule_tick"
DELIVER_ALERT = "retl.deliver_alert"


@cache
def celery_app() -> Celery:
    settings = get_settings()
    broker = settings.redis_url or "redis://127.0.0.1:6379/0"
    app = Celery("retl", broker=broker)
    app.conf.update(
        task_default_queue=settings.queue,
        # At-least-once: a task is acknowledged after it ran, and given back if its worker dies.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        # Longer than any batch or run phase; the reaper covers what is lost beyond it.
        broker_transport_options={"visibility_timeout": 3600},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
    )
    return app


# Message priorities on Redis, where 0 is served first (kombu's steps 0, 3, 6, 9; every worker
# pops a queue's priority lists in that order). Planning a run never waits behind the batches
# of another, and a run's first batches go ahead of the later batches of runs already writing,
# so a small run is not queued behind a large one.
RUN_PRIORITY = 0
FIRST_BATCHES_PRIORITY = 3
LATER_BATCHES_PRIORITY = 6


def send(
    task_name: str, *args: object, priority: int | None = None, countdown: float | None = None
) -> bool:
    """Enqueue a task; False (logged) when the broker is unreachable — the reaper retries."""
    try:
        celery_app().send_task(
            task_name, args=list(args), queue=get_settings().queue, priority=priority,
            countdown=countdown if countdown else None,
        )
        return True
    except Exception as exc:  # the run is in Postgres already; losing the doorbell is survivable
        log.warning("could not enqueue %s%r: %s", task_name, args, exc)
        return False


def enqueue_run(run_id: str) -> bool:
    return send(EXECUTE_RUN, run_id, priority=RUN_PRIORITY)


def send_control(task_name: str, *args: object) -> bool:
    """Enqueue a task on the control queue (schedule ticks, the reaper, alert deliveries)."""
    try:
        celery_app().send_task(task_name, args=list(args), queue=get_settings().control_queue)
        return True
    except Exception as exc:
        log.warning("could not enqueue %s: %s", task_name, exc)
        return False


def enqueue_batch(run_id: str, batch_no: int, token: int) -> bool:
    """Ring a batch of a plan that was approved (the engine's own doorbells are in
    worker.dispatch)."""
    return send(WRITE_BATCH, run_id, batch_no, token, priority=FIRST_BATCHES_PRIORITY)


def enqueue_finalize(run_id: str, token: int) -> bool:
    return send(FINALIZE_RUN, run_id, token)
