"""Runs through the API: trigger (coalesced per sync), read, list and cancel."""

from __future__ import annotations

import datetime as dt

import psycopg

from shared.db import read, transaction
from shared.errors import Conflict, NotFound
from shared.pagination import Page, decode_cursor, page_of
from shared.queue import enqueue_run
from shared.repositories import runs, syncs


def queue_run(
    conn: psycopg.Connection, sync: syncs.Sync, *, trigger: str, full_refresh: bool = False,
    replay_keys: list[str] | None = None, scheduled_for: dt.datetime | None = None,
) -> tuple[runs.Run | None, bool]:
    """Inside the caller's transaction; the caller enqueues after commit (see `enqueue`)."""
    return runs.insert_queued(
        conn, workspace_id=sync.workspace_id, sync_id=sync.id, trigger=trigger,
        full_refresh=full_refresh, scheduled_for=scheduled_for, replay_keys=replay_keys,
    )


def enqueue(run_ids: list[str]) -> None:
    """Ring the doorbell for committed runs; a lost message is found again by the reaper."""
    sent = [run_id for run_id in run_ids if enqueue_run(run_id)]
    if sent:
        with transaction() as conn:
            runs.mark_enqueued(conn, sent)


def trigger(workspace_id: str, sync_ids: list[str], *, full_refresh: bool) -> list[runs.Run]:
    """One queued run per sync (the queued one if there is one already), in request order."""
    queued: list[runs.Run] = []
    created: list[str] = []
    with transaction() as conn:
        for index, sync_id in enumerate(dict.fromkeys(sync_ids)):
            sync = syncs.get(conn, workspace_id, sync_id, for_update=True)
            if sync is None:
                pointer = "/syncId" if len(sync_ids) == 1 else f"/syncIds/{index}"
                raise NotFound(f"no sync {sync_id}", pointer=pointer)
            run, is_new = queue_run(conn, sync, trigger="manual", full_refresh=full_refresh)
            queued.append(run)
            if is_new:
                created.append(run.id)
    enqueue(created)
    return queued


def get(workspace_id: str, run_id: str) -> runs.Run:
    with read() as conn:
        run = runs.get(conn, workspace_id, run_id)
    if run is None:
        raise NotFound(f"no run {run_id}")
    return run


def list_page(
    workspace_id: str, *, sync_id: str | None, status: str | None, cursor: str | None, limit: int
) -> Page[runs.Run]:
    after = decode_cursor(cursor)
    with read() as conn:
        rows = runs.list_page(conn, workspace_id, sync_id=sync_id, status=status, after=after, limit=limit + 1)
    return page_of(rows, limit)


def cancel(workspace_id: str, run_id: str) -> runs.Run:
    with transaction() as conn:
        run = runs.get(conn, workspace_id, run_id)
        if run is None:
            raise NotFound(f"no run {run_id}")
        if run.status not in runs.ACTIVE:
            raise Conflict(f"run {run_id} has already ended ({run.status})")
        return runs.request_cancel(conn, run_id)
