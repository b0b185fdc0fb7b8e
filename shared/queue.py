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


def send(task_name: str, *args: object) -> bool:
    """Enqueue a task; False (logged) when the broker is unreachable — the reaper retries."""
    try:
        celery_app().send_task(task_name, args=list(args), queue=get_settings().queue)
        return True
    except Exception as exc:  # the run is in Postgres already; losing the doorbell is survivable
        log.warning("could not enqueue %s%r: %s", task_name, args, exc)
        return False


def enqueue_run(run_id: str) -> bool:
    return send(EXECUTE_RUN, run_id)


def enqueue_batch(run_id: str, batch_no: int, token: int) -> bool:
    return send(WRITE_BATCH, run_id, batch_no, token)


def enqueue_finalize(run_id: str, token: int) -> bool:
    return send(FINALIZE_RUN, run_id, token)
