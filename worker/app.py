"""The Celery app as workers and beat run it: `celery -A worker.app worker|beat`.

Tasks live in `worker.tasks` (runs, batches, the reaper) and `scheduler.tasks` (due schedules);
each task calls one service."""

from __future__ import annotations

import logging
import os
import signal
import threading

import billiard
from celery.apps import worker as celery_worker_program
from celery.signals import setup_logging, task_prerun, worker_process_init, worker_shutting_down

from connectors import registry
from connectors.sources import duckdb as duckdb_source
from scheduler.beat import beat_schedule
from shared import db, logs
from shared.logs import install_redaction
from shared.queue import EXECUTE_RUN, WRITE_BATCH, celery_app
from shared.services.run_events import bind_run
from shared.settings import get_settings
from worker import runs

log = logging.getLogger(__name__)

install_redaction()
app = celery_app()
app.conf.include = ["worker.tasks", "scheduler.tasks"]
app.conf.beat_schedule = beat_schedule()

# Every connector module, loaded once here rather than by each forked child at its first run or
# batch (tens of milliseconds of imports on the critical path).
registry.destinations()
registry.sources()


# The signal a worker's main process sends its pool processes when it is told to stop.
STOP_SIGNAL = signal.SIGUSR2


def _stop_taking_work(*_: object) -> None:
    runs.stopping.set()


@worker_shutting_down.connect
def _stop_gracefully(how: str = "Warm", **_: object) -> None:
    """SIGTERM (an autoscaler scaling down): Celery takes no new message and waits for the
    running tasks. Each pool process is told to stop as well — writers hand their batches back
    at the next batch boundary, a planner its run at the next chunk, releasing claims and
    leases so another worker continues at once — and whatever still runs after
    RETL_WORKER_GRACE_SECONDS is ended by a cold shutdown (its messages are given back)."""
    if how != "Warm":
        return
    runs.stopping.set()  # a solo or threads pool runs its tasks in this process
    for child in billiard.active_children():
        try:
            os.kill(child.pid, STOP_SIGNAL)
        except (ProcessLookupError, TypeError):
            continue
    grace = get_settings().worker_grace_s
    timer = threading.Timer(grace, os.kill, (os.getpid(), signal.SIGQUIT))
    timer.daemon = True
    timer.start()


@worker_process_init.connect
def _fresh_pool_after_fork(**_: object) -> None:
    signal.signal(STOP_SIGNAL, _stop_taking_work)
    # A pool inherited from the parent process shares its sockets: every child opens its own.
    db.reset_pool()
    # What the first task of a child would otherwise pay for before its first batch: the pool
    # (its first connection opens in the background) and the DuckDB query parser.
    try:
        db.get_pool()
        duckdb_source.warm_up()
    except Exception as exc:  # only a head start: the first task opens what failed here
        log.warning("warming up the worker process failed: %s", exc)


@setup_logging.connect
def _retl_logging(**_: object) -> None:
    # Connected, so Celery leaves logging alone: retl's format and quiet levels hold for
    # Celery's own lines too (`celery -A worker.app worker` as well as `retl worker`). What
    # Celery prints from its signal handlers goes out in the same format.
    logs.configure()
    celery_worker_program.safe_say = logs.say


@task_prerun.connect
def _bind_log_context(task: object = None, args: tuple = (), **_: object) -> None:
    logs.clear()
    if getattr(task, "name", None) in (EXECUTE_RUN, WRITE_BATCH) and args:
        bind_run(str(args[0]))
