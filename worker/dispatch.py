"""Ringing the doorbells of the engine's Celery tasks, and who this worker is.

Kept apart so that tests (and the benchmark) can drive batches themselves by replacing
`enqueue_batch` and `enqueue_run`."""

from __future__ import annotations

import os
import socket

from shared.queue import (
    EXECUTE_RUN,
    FIRST_BATCHES_PRIORITY,
    LATER_BATCHES_PRIORITY,
    RUN_PRIORITY,
    WRITE_BATCH,
    send,
)

# A run's batches up to this number are its first ones (see `shared.queue`'s priorities): a
# run of a few hundred records never queues behind the later batches of a large one.
FIRST_BATCHES = 10


def worker_id() -> str:
    """Who holds a lease or a claim: host and process, so a takeover is traceable."""
    return f"{socket.gethostname()}:{os.getpid()}"


def enqueue_batch(run_id: str, batch_no: int, token: int, countdown: float = 0.0) -> None:
    """Ring the doorbell of one batch (after `countdown` seconds: a parked batch, when it is
    due); a lost message is found again by the reaper."""
    priority = FIRST_BATCHES_PRIORITY if batch_no <= FIRST_BATCHES else LATER_BATCHES_PRIORITY
    send(WRITE_BATCH, run_id, batch_no, token, priority=priority, countdown=countdown)


def enqueue_run(run_id: str, countdown: float = 0.0) -> None:
    send(EXECUTE_RUN, run_id, priority=RUN_PRIORITY, countdown=countdown)
