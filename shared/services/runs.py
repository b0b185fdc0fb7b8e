"""Runs through the API: trigger (coalesced per sync), read, list, cancel, and approve a run
its sync's guard held."""

from __future__ import annotations

import datetime as dt

import psycopg

from shared import queue
from shared.db import read, transaction
from shared.errors import Conflict, NotFound
from shared.pagination import Page, decode_cursor, page_of
from shared.queue import enqueue_run
from shared.repositories import engine, runs, syncs


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
        if run.status not in (*runs.ACTIVE, "held"):
            raise Conflict(f"run {run_id} has already ended ({run.status})")
        if run.status == "held":
            engine.discard_plan(conn, run_id)
        return runs.request_cancel(conn, run_id)


def approve(workspace_id: str, run_id: str) -> runs.Run:
    """Write the plan a held run kept, exactly as it was planned (never planned again). Refused
    once a newer run of the sync has started (the plan is stale: that run planned against what
    the destination holds now), while another run of the sync is running, or when the plan was
    lost."""
    try:
        with transaction() as conn:
            run = runs.get(conn, workspace_id, run_id)
            if run is None:
                raise NotFound(f"no run {run_id}")
            run = runs.get_by_id(conn, run_id, for_update=True)
            if run.status != "held":
                raise Conflict(f"run {run_id} is not held ({run.status}): nothing to approve")
            if runs.newer_run_started(conn, run):
                raise Conflict(
                    f"a newer run of sync {run.sync_id} has started since run {run_id} was"
                    " planned: its plan is stale; cancel it and look at the newer run"
                )
            sync = syncs.get_by_id(conn, run.sync_id)
            if sync.deleted_at is not None or sync.updated_at > run.started_at:
                raise Conflict(
                    f"sync {run.sync_id} was edited or deleted after run {run_id} was planned:"
                    " its plan is stale; cancel it and trigger a new run"
                )
            released = engine.release_plan(conn, run_id)
            if released is None:
                raise Conflict(
                    f"the plan of run {run_id} was lost (the database restarted): cancel it and"
                    " trigger a new run"
                )
            approved = runs.get_by_id(conn, run_id)
    except psycopg.errors.UniqueViolation:
        raise Conflict(
            f"another run of the sync is running: approve run {run_id} once it has ended"
        ) from None
    release(run_id, released)
    return approved


def release(run_id: str, plan: engine.ReleasedPlan) -> None:
    """Ring the approved plan's batches (a lost message is found again by the reaper); a plan
    with nothing to write is finalized at once."""
    for batch_no in plan.batch_nos:
        queue.enqueue_batch(run_id, batch_no, plan.fencing_token)
    if not plan.batch_nos:
        queue.enqueue_finalize(run_id, plan.fencing_token)
