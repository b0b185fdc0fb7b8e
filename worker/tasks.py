"""Celery tasks of the sync engine; each one calls one service in worker.runs."""

from __future__ import annotations

from typing import Any

from celery import Task

from shared import logs
from shared.queue import DELIVER_ALERT, EXECUTE_RUN, FINALIZE_RUN, REAP, WRITE_BATCH, celery_app
from shared.services import alerts
from worker import runs

app = celery_app()
log = logs.get_logger(__name__)


@app.task(name=EXECUTE_RUN, bind=True, max_retries=None)
def execute_run(self: Task, run_id: str) -> None:
    retry_in = runs.execute_run(run_id)
    if retry_in is not None:
        # The run must wait (its sync has another run going, or a planner's lease has not run
        # out yet): ask again later rather than block a worker.
        raise self.retry(countdown=retry_in)


@app.task(name=WRITE_BATCH)
def write_batch(run_id: str, batch_no: int, token: int) -> str:
    return runs.write_batch(run_id, batch_no, token).status


@app.task(name=FINALIZE_RUN)
def finalize_run(run_id: str, token: int) -> str | None:
    """An approved plan with no batch to write (the reaper would find it too, later)."""
    return runs.finalize(run_id, token)


@app.task(name=REAP)
def reap() -> dict[str, int]:
    report = runs.reap()
    if report.runs_enqueued or report.batches_enqueued or report.runs_finalized:
        # A pass that found nothing says nothing; one that found lost work says what it did.
        log.info("reaper found lost work", runs_enqueued=len(report.runs_enqueued),
                 batches_enqueued=report.batches_enqueued,
                 runs_finalized=len(report.runs_finalized))
    return {
        "runs_enqueued": len(report.runs_enqueued),
        "batches_enqueued": report.batches_enqueued,
        "runs_finalized": len(report.runs_finalized),
    }


@app.task(name=DELIVER_ALERT, bind=True, max_retries=None)
def deliver_alert(self: Task, channel_id: str, alert: dict[str, Any]) -> None:
    retry_in = alerts.deliver(channel_id, alert, attempt=self.request.retries)
    if retry_in is not None:
        raise self.retry(countdown=retry_in)
