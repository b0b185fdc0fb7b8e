"""What happens around a run besides the run itself: its start and end lines in the log, the
runs-finished metric, and the alerts its end raises. The engine calls `run_started` when it
takes a run and `run_ended` once the run's end is committed; neither ever fails the run."""

from __future__ import annotations

from functools import lru_cache

from shared import logs
from shared.db import transaction
from shared.metrics import RUNS_FINISHED
from shared.queue import DELIVER_ALERT, send_control
from shared.repositories import runs

log = logs.get_logger(__name__)


@lru_cache(maxsize=256)
def _ids_of(run_id: str) -> tuple[str, str] | None:
    """(sync id, destination id) of a run; a run's sync never changes, so kept per process."""
    with transaction() as conn:
        context = runs.context(conn, run_id)
    return None if context is None else (context.run.sync_id, context.destination_id)


def bind_run(run_id: str) -> None:
    """Bind run_id, sync_id and destination_id to every log line of the current task."""
    logs.clear()
    try:
        ids = _ids_of(run_id)
    except Exception:  # the log context never stops a task; the task reports the database
        ids = None
    sync_id, destination_id = ids or (None, None)
    logs.bind(run_id=run_id, sync_id=sync_id, destination_id=destination_id)


def run_started(run_id: str) -> None:
    try:
        with transaction() as conn:
            context = runs.context(conn, run_id)
        if context is None:
            return
        run = context.run
        log.info("run started", run_id=run.id, sync_id=run.sync_id, sync=context.sync_name,
                 destination_id=context.destination_id, connector=context.connector,
                 trigger=run.trigger, full_refresh=run.full_refresh)
    except Exception as exc:
        log.warning("logging the start of a run failed", run_id=run_id, error=str(exc))


def run_ended(run_id: str) -> None:
    """The run's end line, the runs-finished metric, and its alerts (queued for delivery)."""
    try:
        with transaction() as conn:
            context = runs.context(conn, run_id)
        if context is None:
            return
        run = context.run
        duration = (
            round((run.finished_at - run.started_at).total_seconds(), 3)
            if run.finished_at and run.started_at else None
        )
        (log.warning if run.status == "failed" else log.info)(
            "run ended", run_id=run.id, sync_id=run.sync_id, sync=context.sync_name,
            destination_id=context.destination_id, status=run.status,
            rows_read=run.rows_read, rows_written=run.rows_written, rows_failed=run.rows_failed,
            rows_added=run.rows_added, rows_changed=run.rows_changed,
            rows_removed=run.rows_removed, rows_unchanged=run.rows_unchanged,
            duration_s=duration, error=run.error,
        )
        RUNS_FINISHED.labels(run.status).inc()
    except Exception as exc:
        log.warning("logging the end of a run failed", run_id=run_id, error=str(exc))
    try:
        from shared.services import alerts

        for channel_id, alert in alerts.alerts_for_run(run_id):
            send_control(DELIVER_ALERT, channel_id, alert)
    except Exception as exc:  # an alert never fails the run it is about
        log.warning("raising the alerts of a run failed", run_id=run_id, error=str(exc))
