"""Runs of syncs: creation (coalesced per sync), reads and listings."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from shared import ids

COLUMNS = (
    "id, workspace_id, sync_id, status, trigger, full_refresh, scheduled_for, replay_keys,"
    " rows_read, rows_written, rows_failed, rows_added, rows_changed, rows_removed,"
    " rows_unchanged, error, cancel_requested, lease_owner, lease_expires_at, fencing_token,"
    " enqueued_at, created_at, started_at, finished_at, updated_at,"
    # When the run's first parked batch is due (see the engine's `park_batch`), or when a run
    # handed back before planning (its destination asked to wait) is taken again: the run
    # waits for its destination until then. NULL when it is not waiting.
    " CASE WHEN runs.status = 'running' THEN coalesce((SELECT min(b.not_before)"
    "  FROM run_batches b WHERE b.run_id = runs.id AND b.status = 'pending'"
    "  AND b.not_before > now()), CASE WHEN runs.lease_owner IS NULL"
    "  AND runs.lease_expires_at > now() THEN runs.lease_expires_at END)"
    " END AS waiting_until"
)
ACTIVE = ("queued", "running")


@dataclass
class Run:
    id: str
    workspace_id: str
    sync_id: str
    status: str
    trigger: str
    full_refresh: bool
    scheduled_for: dt.datetime | None
    replay_keys: list[str] | None
    rows_read: int
    rows_written: int
    rows_failed: int
    rows_added: int
    rows_changed: int
    rows_removed: int
    rows_unchanged: int
    error: str | None
    cancel_requested: bool
    lease_owner: str | None
    lease_expires_at: dt.datetime | None
    fencing_token: int
    enqueued_at: dt.datetime | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    updated_at: dt.datetime
    waiting_until: dt.datetime | None = None


def insert_queued(
    conn: psycopg.Connection, *, workspace_id: str, sync_id: str, trigger: str,
    full_refresh: bool = False, scheduled_for: dt.datetime | None = None,
    replay_keys: list[str] | None = None,
) -> tuple[Run | None, bool]:
    """Queue a run of the sync, or return the one already queued (created=False).

    A full refresh or a replay asked while a run is queued upgrades that queued run (full
    refresh wins; replay keys are merged, and a plain run already covers every key), so the
    caller always gets a run that does at least what it asked for. Answers (None, False) only
    for a scheduled tick that already has its run."""
    replay = Jsonb(replay_keys) if replay_keys is not None else None
    with conn.cursor(row_factory=class_row(Run)) as cur:
        # The queued run may start between our insert and update; then a new one can be queued.
        for _ in range(3):
            cur.execute(
                "INSERT INTO runs (id, workspace_id, sync_id, trigger, full_refresh,"
                " scheduled_for, replay_keys) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                f" ON CONFLICT DO NOTHING RETURNING {COLUMNS}",
                (ids.new_id(ids.RUN), workspace_id, sync_id, trigger, full_refresh,
                 scheduled_for, replay),
            )
            created = cur.fetchone()
            if created is not None:
                return created, True
            cur.execute(
                "UPDATE runs SET full_refresh = full_refresh OR %s,"
                " replay_keys = CASE WHEN replay_keys IS NULL OR %s::jsonb IS NULL THEN NULL"
                "   ELSE (SELECT jsonb_agg(DISTINCT k) FROM"
                "         jsonb_array_elements(replay_keys || %s::jsonb) AS k) END,"
                " updated_at = now()"
                f" WHERE sync_id = %s AND status = 'queued' RETURNING {COLUMNS}",
                (full_refresh, replay, replay, sync_id),
            )
            existing = cur.fetchone()
            if existing is not None:
                return existing, False
            if scheduled_for is not None:
                return None, False
    raise RuntimeError(f"could not queue a run of {sync_id}")


def get(conn: psycopg.Connection, workspace_id: str, id: str) -> Run | None:
    with conn.cursor(row_factory=class_row(Run)) as cur:
        cur.execute(f"SELECT {COLUMNS} FROM runs WHERE id = %s AND workspace_id = %s", (id, workspace_id))
        return cur.fetchone()


def get_by_id(conn: psycopg.Connection, id: str, *, for_update: bool = False) -> Run | None:
    lock = " FOR UPDATE" if for_update else ""
    with conn.cursor(row_factory=class_row(Run)) as cur:
        cur.execute(f"SELECT {COLUMNS} FROM runs WHERE id = %s{lock}", (id,))
        return cur.fetchone()


def list_page(
    conn: psycopg.Connection, workspace_id: str, *, sync_id: str | None, status: str | None,
    after: str | None, limit: int,
) -> list[Run]:
    with conn.cursor(row_factory=class_row(Run)) as cur:
        cur.execute(
            f"SELECT {COLUMNS} FROM runs WHERE workspace_id = %s"
            " AND (%s::text IS NULL OR sync_id = %s)"
            " AND (%s::text IS NULL OR status = %s)"
            " AND (%s::text IS NULL OR id < %s)"
            " ORDER BY id DESC LIMIT %s",
            (workspace_id, sync_id, sync_id, status, status, after, after, limit),
        )
        return cur.fetchall()


def mark_enqueued(conn: psycopg.Connection, ids_: list[str]) -> None:
    conn.execute("UPDATE runs SET enqueued_at = now() WHERE id = ANY(%s)", (ids_,))


def request_cancel(conn: psycopg.Connection, id: str) -> Run:
    """A queued or held run is cancelled at once; a running one is asked to stop at its next
    batch."""
    with conn.cursor(row_factory=class_row(Run)) as cur:
        cur.execute(
            "UPDATE runs SET cancel_requested = true,"
            " status = CASE WHEN status IN ('queued', 'held') THEN 'cancelled' ELSE status END,"
            " finished_at = CASE WHEN status IN ('queued', 'held') THEN now()"
            "  ELSE finished_at END,"
            f" updated_at = now() WHERE id = %s RETURNING {COLUMNS}",
            (id,),
        )
        return cur.fetchone()


def newer_run_started(conn: psycopg.Connection, run: Run) -> bool:
    """Whether a run of the same sync created after `run` has started (ids sort by time)."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM runs WHERE sync_id = %s AND id > %s"
        " AND started_at IS NOT NULL)",
        (run.sync_id, run.id),
    ).fetchone()
    return bool(row[0])


def cancel_requested(conn: psycopg.Connection, id: str) -> bool:
    row = conn.execute("SELECT cancel_requested FROM runs WHERE id = %s", (id,)).fetchone()
    return bool(row and row[0])


def stored_batches(conn: psycopg.Connection, id: str) -> int:
    """How many batches the run's planner has stored."""
    row = conn.execute("SELECT count(*) FROM run_batches WHERE run_id = %s", (id,)).fetchone()
    return int(row[0])


def latest_for_sync(conn: psycopg.Connection, sync_id: str) -> Run | None:
    with conn.cursor(row_factory=class_row(Run)) as cur:
        cur.execute(f"SELECT {COLUMNS} FROM runs WHERE sync_id = %s ORDER BY id DESC LIMIT 1", (sync_id,))
        return cur.fetchone()


def cancel_queued_for_sync(conn: psycopg.Connection, sync_id: str, trigger: str | None = None) -> None:
    """Cancel the sync's queued run (only when it has `trigger`, if given)."""
    conn.execute(
        "UPDATE runs SET status = 'cancelled', cancel_requested = true, finished_at = now(),"
        " updated_at = now() WHERE sync_id = %s AND status = 'queued'"
        " AND (%s::text IS NULL OR trigger = %s)",
        (sync_id, trigger, trigger),
    )


def active_for_sync(conn: psycopg.Connection, sync_id: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM runs WHERE sync_id = %s AND status IN ('queued', 'running') LIMIT 1",
        (sync_id,),
    ).fetchone()
    return row is not None


def count_by_status(conn: psycopg.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall())


@dataclass
class Backlog:
    batches_waiting: int
    runs_queued: int


def backlog(conn: psycopg.Connection) -> Backlog:
    """Work waiting for a worker across the fleet: stored batches not yet written, queued runs."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM run_batches WHERE status = 'pending'),"
        " (SELECT count(*) FROM runs WHERE status = 'queued')"
    ).fetchone()
    return Backlog(row[0], row[1])


@dataclass
class RunContext:
    """What a log line or an alert tells about a run besides its own row."""

    run: Run
    sync_name: str
    destination_id: str
    connector: str | None  # None when the destination was deleted


def context(conn: psycopg.Connection, run_id: str) -> RunContext | None:
    with conn.cursor(row_factory=class_row(Run)) as cur:
        cur.execute(f"SELECT {COLUMNS} FROM runs WHERE id = %s", (run_id,))
        run = cur.fetchone()
    if run is None:
        return None
    row = conn.execute(
        "SELECT s.name, s.destination_id, c.connector FROM syncs s"
        " LEFT JOIN connections c ON c.id = s.destination_id WHERE s.id = %s",
        (run.sync_id,),
    ).fetchone()
    return RunContext(run, row[0], row[1], row[2])


def previous_outcome(conn: psycopg.Connection, sync_id: str, run_id: str) -> str | None:
    """The status of the sync's last run that ended `succeeded` or `failed` before `run_id`
    (cancelled runs say nothing about the sync's health); None when there is none."""
    row = conn.execute(
        "SELECT status FROM runs WHERE sync_id = %s AND id <> %s"
        " AND status IN ('succeeded', 'failed') AND finished_at IS NOT NULL"
        " AND finished_at <= (SELECT coalesce(finished_at, now()) FROM runs WHERE id = %s)"
        " ORDER BY finished_at DESC, id DESC LIMIT 1",
        (sync_id, run_id, run_id),
    ).fetchone()
    return row[0] if row else None
