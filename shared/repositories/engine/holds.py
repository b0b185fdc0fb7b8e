"""Held runs: a plan that crossed its sync's guard is kept, unwritten, in held_batches until it
is approved (moved to run_batches, where writers take it) or cancelled (dropped)."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg


def insert_held_batch(
    conn: psycopg.Connection, run_id: str, batch_no: int, operation: str, keys: list[str],
    payload: bytes, hashes: list[str] | None = None, digests: list[bytes] | None = None,
) -> None:
    """Store a batch of a plan that may not be written before it is approved."""
    conn.execute(
        "INSERT INTO held_batches (run_id, batch_no, operation, record_keys, content_hashes,"
        " field_digests, payload) VALUES (%s, %s, %s, %b, %b, %b, %b)",
        (run_id, batch_no, operation, keys, hashes, digests, payload),
    )


def snapshot_size(conn: psycopg.Connection, sync_id: str) -> int:
    """How many records the destination holds for the sync, per its snapshot."""
    row = conn.execute(
        "SELECT count(*) FROM sync_snapshots WHERE sync_id = %s", (sync_id,)
    ).fetchone()
    return int(row[0])


def hold_run(
    conn: psycopg.Connection, run_id: str, token: int, batches_total: int, error: str
) -> bool:
    """End the planning of a run as `held` with its plan of `batches_total` batches kept; False
    when the token is stale. The caller fences first (durably)."""
    conn.execute(
        "UPDATE run_progress SET phase = 'writing', batches_total = %s, writer_until = NULL,"
        " updated_at = now() WHERE run_id = %s",
        (batches_total, run_id),
    )
    row = conn.execute(
        "UPDATE runs SET status = 'held', error = %s, finished_at = now(), lease_owner = NULL,"
        " lease_expires_at = NULL, updated_at = now()"
        " WHERE id = %s AND fencing_token = %s AND status = 'running' RETURNING 1",
        (error, run_id, token),
    ).fetchone()
    return row is not None


@dataclass
class ReleasedPlan:
    fencing_token: int
    batch_nos: list[int]


def release_plan(conn: psycopg.Connection, run_id: str) -> ReleasedPlan | None:
    """Approve a held run: it is running again under a new token, with its kept batches moved
    where writers take them. None (the caller rolls back) when the plan was lost: a database
    restart empties the run's staging.

    Raises psycopg.errors.UniqueViolation when another run of the sync is running."""
    kept = conn.execute(
        "SELECT batches_total FROM run_progress WHERE run_id = %s AND phase = 'writing'",
        (run_id,),
    ).fetchone()
    if kept is None or kept[0] is None:
        return None
    row = conn.execute(
        "UPDATE runs SET status = 'running', fencing_token = fencing_token + 1, error = NULL,"
        " finished_at = NULL, updated_at = now() WHERE id = %s AND status = 'held'"
        " RETURNING fencing_token",
        (run_id,),
    ).fetchone()
    if row is None:
        return None
    moved = conn.execute(
        "WITH held AS (DELETE FROM held_batches WHERE run_id = %s RETURNING *)"
        " INSERT INTO run_batches (run_id, batch_no, operation, record_keys, content_hashes,"
        "  field_digests, payload) SELECT run_id, batch_no, operation, record_keys,"
        "  content_hashes, field_digests, payload FROM held RETURNING batch_no",
        (run_id,),
    ).fetchall()
    if len(moved) != kept[0]:
        return None
    conn.execute("UPDATE run_progress SET updated_at = now() WHERE run_id = %s", (run_id,))
    return ReleasedPlan(row[0], sorted(r[0] for r in moved))


def discard_plan(conn: psycopg.Connection, run_id: str) -> None:
    conn.execute("DELETE FROM held_batches WHERE run_id = %s", (run_id,))
