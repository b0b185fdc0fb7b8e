"""Ringing the doorbells of the engine's Celery tasks, and who this worker is.

Kept apart so that tests (and the benchmark) can drive batches themselves by replacing
`enqueue_batch` and `enqueue_run`."""

from __future__ import annotations

import os
import socket

from shared.queue import EXECUTE_RUN, WRITE_BATCH, send


def worker_id() -> str:
    """Who holds a lease or a claim: host and process, so a takeover is traceable."""
    return f"{socket.gethostname()}:{os.getpid()}"


def enqueue_batch(run_id: str, batch_no: int, token: int) -> None:
    """Ring the doorbell of one batch; a lost message is found again by the reaper."""
    send(WRITE_BATCH, run_id, batch_no, token)


def enqueue_run(run_id: str) -> None:
    send(EXECUTE_RUN, run_id)
