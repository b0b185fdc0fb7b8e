"""The beat tick: queue one run for every sync whose schedule is due, then move its next run time.

Exactly once per tick: due syncs are read `FOR UPDATE SKIP LOCKED`, so a second beat never
handles a sync the first is handling; the run and the new `next_run_at` commit together, so a
beat that dies mid-tick leaves nothing half done; and `runs_one_per_tick` on
runs(sync_id, scheduled_for) refuses a second run for the same tick whatever happens."""

from __future__ import annotations

import datetime as dt

import psycopg
from croniter import CroniterError

from shared import logs, schedules
from shared.db import transaction
from shared.repositories import syncs, workspaces
from shared.services.runs import enqueue, queue_run

log = logs.get_logger(__name__)

# Syncs handled per transaction; a tick with more due goes on in further transactions.
BATCH_SIZE = 500


def tick(now: dt.datetime | None = None) -> list[str]:
    """Queue the runs due at `now` (default: the current time); the ids of the runs created.

    A sync that was due several times while beat was down runs once (for the tick it missed
    first) and then follows its schedule from `now`. A sync whose previous run is still active
    gets one run queued behind it, coalesced with a run already queued."""
    now = now or dt.datetime.now(dt.UTC)
    created: list[str] = []
    while True:
        with transaction() as conn:
            due = syncs.due(conn, now, limit=BATCH_SIZE)
            workspaces.lock_for_sync_changes(conn, sorted({sync.workspace_id for sync in due}))
            for sync in due:
                created.extend(_queue_tick(conn, sync, now))
        if len(due) < BATCH_SIZE:
            break
    # After commit: a worker must find the run in Postgres when the message arrives.
    enqueue(created)
    return created


def _queue_tick(conn: psycopg.Connection, sync: syncs.Sync, now: dt.datetime) -> list[str]:
    """Queue the run for the sync's due tick and schedule the next; the id of a new run."""
    scheduled_for = sync.next_run_at
    try:
        following = schedules.next_fire_since(sync.schedule, scheduled_for, now)
    except (schedules.ScheduleError, CroniterError) as exc:
        # Only a schedule stored before today's rules (or a vanished timezone) gets here.
        # Stop scheduling it rather than failing every tick for every sync.
        log.error("sync %s has an unusable schedule %r (%s); not scheduling it", sync.id,
                  sync.schedule, exc)
        syncs.set_next_run_at(conn, sync.id, None)
        return []
    run, is_new = queue_run(conn, sync, trigger="schedule", scheduled_for=scheduled_for)
    syncs.set_next_run_at(conn, sync.id, following)
    if run is None:
        log.debug("sync %s: the tick for %s already has its run", sync.id, scheduled_for)
        return []
    if not is_new:
        log.debug("sync %s: tick for %s coalesced onto queued run %s", sync.id, scheduled_for, run.id)
        return []
    log.info(
        "scheduled run queued", sync_id=sync.id, run_id=run.id,
        scheduled_for=scheduled_for.isoformat(), next_run_at=following.isoformat(),
    )
    return [run.id]
