"""Leases and fencing: a run is taken by one worker at a time, and every later write checks
the fencing token, so a worker that lost its lease can no longer change anything."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import psycopg
from psycopg.rows import class_row


class LeaseLost(Exception):
    """The run is no longer this worker's: another took it over, or it ended."""




@dataclass
class Lease:
    run_id: str
    sync_id: str
    workspace_id: str
    fencing_token: int
    full_refresh: bool
    replay_keys: list[str] | None


def take_lease(
    conn: psycopg.Connection, run_id: str, owner: str, lease_seconds: float,
    max_running_per_workspace: int = 0,
) -> Lease | None:
    """Start a queued run, or take over a running one whose planner's lease expired. With
    `max_running_per_workspace`, a queued run starts only while its workspace has fewer runs
    running (decided under a lock of the workspace, so two workers cannot both take the last
    place); None then, and it stays queued.

    Raises psycopg.errors.UniqueViolation when another run of the sync is running."""
    cap = ""
    if max_running_per_workspace > 0:
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('retl:workspace-runs:' || workspace_id))"
            " FROM runs WHERE id = %s",
            (run_id,),
        )
        cap = (
            " AND (r.status = 'running' OR (SELECT count(*) FROM runs o"
            "  WHERE o.workspace_id = r.workspace_id AND o.status = 'running') < %(cap)s)"
        )
    with conn.cursor(row_factory=class_row(Lease)) as cur:
        cur.execute(
            "UPDATE runs r SET status = 'running', lease_owner = %(owner)s,"
            " lease_expires_at = now() + make_interval(secs => %(lease)s),"
            " fencing_token = r.fencing_token + 1, started_at = coalesce(r.started_at, now()),"
            " rows_read = 0, rows_written = 0, rows_failed = 0, rows_added = 0,"
            " rows_changed = 0, rows_removed = 0, rows_unchanged = 0, updated_at = now()"
            " WHERE r.id = %(run)s AND (r.status = 'queued'"
            "   OR (r.status = 'running' AND r.lease_expires_at < now() AND NOT EXISTS ("
            "       SELECT 1 FROM run_progress p WHERE p.run_id = r.id AND p.phase <> 'planning')))"
            + cap
            + " RETURNING r.id AS run_id, r.sync_id, r.workspace_id, r.fencing_token,"
            " r.full_refresh, r.replay_keys",
            {"owner": owner, "lease": lease_seconds, "run": run_id,
             "cap": max_running_per_workspace},
        )
        return cur.fetchone()


@dataclass
class RunState:
    status: str
    lease_expires_at: dt.datetime | None
    seconds_left: float
    cancel_requested: bool
    phase: str | None


def run_state(conn: psycopg.Connection, run_id: str) -> RunState | None:
    with conn.cursor(row_factory=class_row(RunState)) as cur:
        cur.execute(
            "SELECT r.status, r.lease_expires_at,"
            " greatest(0, extract(epoch FROM r.lease_expires_at - now()))::float8 AS seconds_left,"
            " r.cancel_requested, p.phase"
            " FROM runs r LEFT JOIN run_progress p ON p.run_id = r.id WHERE r.id = %s",
            (run_id,),
        )
        return cur.fetchone()


def heartbeat(
    conn: psycopg.Connection, run_id: str, token: int, lease_seconds: float
) -> bool | None:
    """Extend the lease; None when it was lost, else whether a cancel was requested."""
    row = conn.execute(
        "UPDATE runs SET lease_expires_at = now() + make_interval(secs => %s)"
        " WHERE id = %s AND fencing_token = %s AND status = 'running' RETURNING cancel_requested",
        (lease_seconds, run_id, token),
    ).fetchone()
    return None if row is None else bool(row[0])


def fence(conn: psycopg.Connection, run_id: str, token: int, *, durable: bool = False) -> bool:
    """Lock the run row for this transaction, or raise LeaseLost if the token is stale.
    Returns whether a cancel was requested.

    Unless `durable`, the transaction commits without waiting for its WAL flush: what it
    writes is staging (UNLOGGED, emptied by a crash, after which the reaper redoes the run)
    and running counters, so a crash can only cost work, never correctness. Finalization,
    which moves the snapshot and the DLQ, is durable."""
    if not durable:
        conn.execute("SET LOCAL synchronous_commit TO off")
    row = conn.execute(
        "SELECT cancel_requested FROM runs WHERE id = %s AND fencing_token = %s"
        " AND status = 'running' FOR NO KEY UPDATE",
        (run_id, token),
    ).fetchone()
    if row is None:
        raise LeaseLost(run_id)
    return bool(row[0])


def relax(conn: psycopg.Connection) -> None:
    """Commit this transaction without waiting for its WAL flush (see `fence`)."""
    conn.execute("SET LOCAL synchronous_commit TO off")


def fence_last(
    conn: psycopg.Connection, run_id: str, token: int, *, read: int | None = None,
    added: int = 0, changed: int = 0, unchanged: int = 0, written: int = 0, failed: int = 0,
) -> bool:
    """The fence as the transaction's last run-row statement, adding to the run's counters:
    raise LeaseLost if the token is stale, else whether a cancel was requested.

    The row lock is held from here to the commit only, so the planner and the writers of a
    run do not queue behind each other's longer statements. It guards what the transaction
    wrote before as well as `fence` does: a takeover bumps the token by updating this row, so
    it either committed before (the token does not match and everything rolls back) or waits
    for this commit."""
    row = conn.execute(
        _FENCE_LAST,
        {"read": read, "added": added, "changed": changed, "unchanged": unchanged,
         "written": written, "failed": failed, "run": run_id, "token": token},
    ).fetchone()
    if row is None:
        raise LeaseLost(run_id)
    return bool(row[0])


_FENCE_LAST = (
    "UPDATE runs SET rows_read = coalesce(%(read)s, rows_read),"
    " rows_added = rows_added + %(added)s, rows_changed = rows_changed + %(changed)s,"
    " rows_unchanged = rows_unchanged + %(unchanged)s, rows_written = rows_written + %(written)s,"
    " rows_failed = rows_failed + %(failed)s, updated_at = now()"
    " WHERE id = %(run)s AND fencing_token = %(token)s AND status = 'running'"
    " RETURNING cancel_requested"
)


def next_queued_run(conn: psycopg.Connection, workspace_id: str) -> str | None:
    """The workspace's oldest queued run whose sync has no run running: the one to start when
    a place under the workspace's cap frees."""
    row = conn.execute(
        "SELECT q.id FROM runs q WHERE q.workspace_id = %s AND q.status = 'queued'"
        " AND NOT q.cancel_requested AND NOT EXISTS (SELECT 1 FROM runs r"
        "  WHERE r.sync_id = q.sync_id AND r.status = 'running')"
        " ORDER BY q.id LIMIT 1",
        (workspace_id,),
    ).fetchone()
    return None if row is None else row[0]


def release_lease(
    conn: psycopg.Connection, run_id: str, token: int, wait_s: float = 0.0
) -> int | None:
    """The planner hands its run back (its worker is stopping, or the destination asked to
    wait): the lease ends in `wait_s`, with no owner, so the next worker to take the run
    (`take_lease`) plans it again from then, with a new token that fences everything the old
    one stored. A wait is counted: the run's waits so far, or None when the run was no longer
    this token's."""
    row = conn.execute(
        "UPDATE runs SET lease_expires_at = now() + make_interval(secs => %(wait)s),"
        " lease_owner = NULL, plan_waits = plan_waits + (%(wait)s > 0)::int, updated_at = now()"
        " WHERE id = %(run)s AND fencing_token = %(token)s AND status = 'running'"
        " RETURNING plan_waits",
        {"wait": wait_s, "run": run_id, "token": token},
    ).fetchone()
    return None if row is None else row[0]


def current_token(conn: psycopg.Connection, run_id: str) -> int | None:
    row = conn.execute(
        "SELECT fencing_token FROM runs WHERE id = %s AND status = 'running'", (run_id,)
    ).fetchone()
    return None if row is None else row[0]
