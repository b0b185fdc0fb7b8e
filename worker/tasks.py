"""Celery tasks of the sync engine; each one calls one service in worker.runs."""

from __future__ import annotations

from celery import Task

from shared.queue import EXECUTE_RUN, FINALIZE_RUN, REAP, WRITE_BATCH, celery_app
from worker import runs

app = celery_app()


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
    return {
        "runs_enqueued": len(report.runs_enqueued),
        "batches_enqueued": report.batches_enqueued,
        "runs_finalized": len(report.runs_finalized),
    }
