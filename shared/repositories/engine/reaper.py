"""What the reaper looks for: runs and batches whose message was lost, runs left unfinished,
staging of finished runs."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import class_row


def stale_queued_runs(conn: psycopg.Connection, older_than_s: float) -> list[str]:
    """Queued runs whose doorbell may have been lost (never sent, or sent long ago). A run
    queued behind a running run of its sync is left alone: its own message is waiting (it
    retries until the sync is free), and ringing again would start a second waiting chain."""
    rows = conn.execute(
        "SELECT q.id FROM runs q WHERE q.status = 'queued' AND NOT q.cancel_requested"
        " AND (q.enqueued_at IS NULL OR q.enqueued_at < now() - make_interval(secs => %s))"
        " AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.sync_id = q.sync_id AND r.status = 'running')"
        " ORDER BY q.id LIMIT 500",
        (older_than_s,),
    ).fetchall()
    return [row[0] for row in rows]


def expired_planning_runs(conn: psycopg.Connection) -> list[str]:
    """Running runs whose planner stopped renewing its lease before it finished planning."""
    rows = conn.execute(
        "SELECT r.id FROM runs r LEFT JOIN run_progress p ON p.run_id = r.id"
        " WHERE r.status = 'running' AND r.lease_expires_at < now()"
        " AND coalesce(p.phase, 'planning') = 'planning' ORDER BY r.id LIMIT 500"
    ).fetchall()
    return [row[0] for row in rows]


@dataclass
class StrandedBatch:
    run_id: str
    batch_no: int
    fencing_token: int


def stranded_batches(conn: psycopg.Connection, older_than_s: float) -> list[StrandedBatch]:
    """Batches of running runs whose claimant stopped renewing its claim, that have waited
    unclaimed so long that their message was probably lost, or that were left to a follower
    whose promise ran out (it died, or it is busy with a long write). Their enqueue time is
    reset and they are rung from now on."""
    with conn.cursor(row_factory=class_row(StrandedBatch)) as cur:
        cur.execute(
            "UPDATE run_batches b SET enqueued_at = now(), rung = true"
            " FROM runs r, run_progress p"
            " WHERE r.id = b.run_id AND r.status = 'running' AND p.run_id = b.run_id AND ("
            "  (b.status = 'running' AND b.claimed_until < now())"
            "  OR (b.status = 'pending' AND b.enqueued_at < now() - make_interval(secs => %s))"
            "  OR (b.status = 'pending' AND NOT b.rung"
            "   AND (p.writer_until IS NULL OR p.writer_until < now())))"
            " RETURNING b.run_id, b.batch_no, r.fencing_token",
            (older_than_s,),
        )
        return cur.fetchall()


def complete_unfinalized_runs(conn: psycopg.Connection) -> list[str]:
    """Running runs whose batches are all finished but whose finalization did not happen."""
    rows = conn.execute(
        "SELECT p.run_id FROM run_progress p JOIN runs r ON r.id = p.run_id"
        " WHERE r.status = 'running' AND p.phase = 'writing'"
        " AND p.batches_done >= p.batches_total AND p.updated_at < now() - interval '5 seconds'"
    ).fetchall()
    return [row[0] for row in rows]


def purge_finished_staging(conn: psycopg.Connection, older_than_s: float) -> int:
    """Drop the staging of runs that ended a while ago (kept briefly for inspection). A held
    run's plan is kept while it may still be approved: until a newer run of its sync starts."""
    finished = [
        row[0] for row in conn.execute(
            "SELECT p.run_id FROM run_progress p JOIN runs r ON r.id = p.run_id"
            " WHERE r.status NOT IN ('queued', 'running')"
            " AND (r.status <> 'held' OR EXISTS (SELECT 1 FROM runs n WHERE n.sync_id = r.sync_id"
            "  AND n.id > r.id AND n.started_at IS NOT NULL))"
            " AND coalesce(p.finished_at, r.finished_at, p.updated_at)"
            "  < now() - make_interval(secs => %s)",
            (older_than_s,),
        )
    ]
    if finished:
        for table in ("run_ops", "run_batches", "run_failures", "held_batches", "run_progress"):
            conn.execute(f"DELETE FROM {table} WHERE run_id = ANY(%s)", (finished,))
    return len(finished)


def drop_abandoned_stages(conn: psycopg.Connection) -> int:
    """Drop the stages (`planning.run_stage`) of runs no longer running: a planner that died
    left them behind. A stage still locked by a session is left for a later sweep."""
    names = [
        row[0] for row in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'retl_staging' AND c.relkind = 'r' AND NOT EXISTS"
            "  (SELECT 1 FROM runs r WHERE r.id = c.relname AND r.status = 'running')"
            " ORDER BY 1 LIMIT 100"
        )
    ]
    dropped = 0
    for name in names:
        try:
            with conn.transaction():
                conn.execute("SET LOCAL lock_timeout = '100ms'")
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(
                    sql.Identifier("retl_staging", name)))
            dropped += 1
        except psycopg.errors.LockNotAvailable:
            continue
    return dropped
