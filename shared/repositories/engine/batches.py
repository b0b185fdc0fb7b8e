"""Batches: stored, claimed by one writer at a time (fenced), renewed while written, and their
outcome recorded with the run's progress."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import class_row


def insert_batch(
    conn: psycopg.Connection, run_id: str, batch_no: int, operation: str, keys: list[str],
    payload: bytes, hashes: list[str] | None = None, digests: list[bytes] | None = None,
) -> None:
    """Store a batch; `hashes` (aligned with `keys`) when its hashes are not in run_ops, and
    the field digests of its records (aligned with `keys`; None for deletes)."""
    conn.execute(
        # %b: binary arrays skip the per-element quoting of the text format.
        "INSERT INTO run_batches (run_id, batch_no, operation, record_keys, content_hashes,"
        " field_digests, payload) VALUES (%s, %s, %s, %b, %b, %b, %b)",
        (run_id, batch_no, operation, keys, hashes, digests, payload),
    )


@dataclass
class ClaimedBatch:
    run_id: str
    batch_no: int
    operation: str
    payload: bytes
    attempts: int
    tries: int = 0  # write attempts spent before this claim (across parkings)
    parkings: int = 0  # claims that ended by handing the batch back (`park_batch`)


def batch_status(conn: psycopg.Connection, run_id: str, batch_no: int) -> str | None:
    row = conn.execute(
        "SELECT status FROM run_batches WHERE run_id = %s AND batch_no = %s", (run_id, batch_no)
    ).fetchone()
    return None if row is None else row[0]


def claim_batch(
    conn: psycopg.Connection, run_id: str, batch_no: int, owner: str, claim_seconds: float
) -> ClaimedBatch | None:
    """Take a pending batch, or one whose claimant stopped renewing its claim; None when it is
    finished or another worker holds it."""
    with conn.cursor(row_factory=class_row(ClaimedBatch)) as cur:
        cur.execute(
            "UPDATE run_batches SET status = 'running', attempts = attempts + 1,"
            " claimed_by = %s, claimed_until = now() + make_interval(secs => %s)"
            " WHERE run_id = %s AND batch_no = %s AND (status = 'pending'"
            "  OR (status = 'running' AND claimed_until < now()))"
            " RETURNING run_id, batch_no, operation, payload, attempts",
            (owner, claim_seconds, run_id, batch_no),
        )
        return cur.fetchone()


@dataclass
class FencedClaim:
    batch: ClaimedBatch
    stop: bool  # a cancel was requested, or an earlier batch aborted the run
    has_hashes: bool  # the batch carries its records' content hashes (a one-pass batch)
    fresh_snapshot: bool = False  # the snapshot was empty when the run was planned
    key_kind: str | None = None  # how the source typed the run's keys (`set_key_kind`)


# The claim of one batch by the holder of a token: it only marks who writes the batch; its
# outcome is fenced again when recorded (`record_batch`). Answered in binary: the payload comes
# back as stored, not as hex text that Postgres writes out and psycopg reads back, both for
# every byte of it.
_CLAIM = (
    "UPDATE run_batches b SET status = 'running', attempts = b.attempts + 1,"
    " claimed_by = %(owner)s, claimed_until = now() + make_interval(secs => %(claim_s)s)"
    " FROM runs r, run_progress p"
    " WHERE b.run_id = %(run)s AND {which}"
    " AND r.id = b.run_id AND r.fencing_token = %(token)s AND r.status = 'running'"
    " AND p.run_id = b.run_id"
    " RETURNING b.run_id, b.batch_no, b.operation, b.payload, b.attempts, b.tries, b.parkings,"
    " r.cancel_requested OR p.abort_error IS NOT NULL, b.content_hashes IS NOT NULL,"
    " p.snapshot_was_empty, p.key_kind"
)

# A pending batch that may be claimed now: not parked, or parked and due (`park_batch`).
DUE = "(b.not_before IS NULL OR b.not_before <= now())"


def _claim(conn: psycopg.Connection, which: str, params: dict[str, Any]) -> FencedClaim | None:
    return read_claim(_send_claim(conn, which, params))


def _send_claim(conn: psycopg.Connection, which: str, params: dict[str, Any]) -> psycopg.Cursor:
    cur = conn.cursor(binary=True)
    cur.execute(_CLAIM.format(which=which), params)
    return cur


def read_claim(cur: psycopg.Cursor) -> FencedClaim | None:
    """The answer of a claim sent earlier (`send_claim_next_pending`)."""
    with cur:
        row = cur.fetchone()
    if row is None:
        return None
    return FencedClaim(ClaimedBatch(*row[:7]), bool(row[7]), bool(row[8]), bool(row[9]), row[10])


def claim_batch_fenced(
    conn: psycopg.Connection, run_id: str, batch_no: int, token: int, owner: str,
    claim_seconds: float,
) -> FencedClaim | None:
    """Claim batch `batch_no` for the holder of `token`, in one statement: None when the token
    is stale or the batch is finished or held by another worker (a claim that ran out is
    taken over)."""
    return _claim(
        conn,
        f"b.batch_no = %(batch)s AND ((b.status = 'pending' AND {DUE})"
        " OR (b.status = 'running' AND b.claimed_until < now()))",
        {"owner": owner, "claim_s": claim_seconds, "run": run_id, "batch": batch_no,
         "token": token},
    )


def park_batch(
    conn: psycopg.Connection, run_id: str, batch_no: int, attempts: int, token: int, *,
    wait_s: float, tries: int, error: str | None,
) -> bool:
    """Hand a claimed batch back, not to be claimed for `wait_s` seconds (0: at once), with the
    write attempts it has spent and the destination's last answer; its doorbell is rung for
    when it is due (`enqueued_at`, which the reaper also goes by). False when this claim or the
    run's token no longer holds it."""
    row = conn.execute(
        "UPDATE run_batches b SET status = 'pending', claimed_by = NULL, claimed_until = NULL,"
        " not_before = CASE WHEN %(wait)s > 0 THEN now() + make_interval(secs => %(wait)s) END,"
        " enqueued_at = now() + make_interval(secs => %(wait)s), rung = true,"
        " tries = %(tries)s, parkings = b.parkings + 1,"
        " last_error = coalesce(%(error)s, b.last_error)"
        " FROM runs r WHERE b.run_id = %(run)s AND b.batch_no = %(batch)s"
        " AND b.status = 'running' AND b.attempts = %(attempts)s"
        " AND r.id = b.run_id AND r.fencing_token = %(token)s AND r.status = 'running'"
        " AND set_config('synchronous_commit', 'off', true) = 'off'"
        " RETURNING 1",
        {"run": run_id, "batch": batch_no, "attempts": attempts, "token": token,
         "wait": wait_s, "tries": tries, "error": error},
    ).fetchone()
    return row is not None


def renew_claim(
    conn: psycopg.Connection, run_id: str, batch_no: int, attempts: int, claim_seconds: float
) -> bool:
    row = conn.execute(
        "UPDATE run_batches SET claimed_until = now() + make_interval(secs => %s)"
        " WHERE run_id = %s AND batch_no = %s AND attempts = %s AND status = 'running'"
        " RETURNING 1",
        (claim_seconds, run_id, batch_no, attempts),
    ).fetchone()
    return row is not None


def record_batch(
    conn: psycopg.Connection, run_id: str, batch_no: int, attempts: int, token: int, *,
    status: str, rows_ok: int, rows_failed: int, abort: tuple[str, str] | None = None,
) -> Progress | None:
    """Record a claimed batch's outcome in one statement: mark it done or skipped if this claim
    (attempts) still holds it, add its rows to the run's counters under the fence, count it
    done (keeping the first abort reason) and relax the transaction (`relax`). The run's
    progress after it, or None when the claim or the lease was lost (the caller rolls back).

    Each step runs only if the one before it found its row, in the order the planner and
    finalize lock them: the batch, the run's row, then its progress row. The run's row is
    locked by this statement, near the end of the transaction, as `fence_last` does."""
    with conn.cursor(row_factory=class_row(Progress)) as cur:
        cur.execute(
            "WITH b AS ("
            " UPDATE run_batches SET status = %(status)s, rows_ok = %(ok)s,"
            " rows_failed = %(failed)s, finished_at = now(), payload = ''::bytea"
            " WHERE run_id = %(run)s AND batch_no = %(batch)s AND status IN ('pending', 'running')"
            " AND attempts = %(attempts)s RETURNING 1"
            "), r AS ("
            " UPDATE runs SET rows_written = rows_written + %(ok)s,"
            " rows_failed = rows_failed + %(failed)s, updated_at = now()"
            " WHERE id = %(run)s AND fencing_token = %(token)s AND status = 'running'"
            " AND EXISTS (SELECT 1 FROM b) RETURNING 1"
            ")"
            " UPDATE run_progress SET batches_done = batches_done + 1,"
            " abort_error = coalesce(abort_error, %(error)s),"
            " abort_code = coalesce(abort_code, %(code)s), updated_at = now()"
            " WHERE run_id = %(run)s AND EXISTS (SELECT 1 FROM r)"
            " AND set_config('synchronous_commit', 'off', true) = 'off'"
            " RETURNING phase, batches_total, batches_done, abort_error, abort_code",
            {"status": status, "ok": rows_ok, "failed": rows_failed, "run": run_id,
             "batch": batch_no, "attempts": attempts, "token": token,
             "code": abort[0] if abort else None, "error": abort[1] if abort else None},
        )
        return cur.fetchone()


@dataclass
class Progress:
    phase: str
    batches_total: int | None
    batches_done: int
    abort_error: str | None
    abort_code: str | None
    key_kind: str | None = None

    @property
    def complete(self) -> bool:
        return (
            self.phase == "writing"
            and self.batches_total is not None
            and self.batches_done >= self.batches_total
        )


def progress(conn: psycopg.Connection, run_id: str) -> Progress | None:
    with conn.cursor(row_factory=class_row(Progress)) as cur:
        cur.execute(
            "SELECT phase, batches_total, batches_done, abort_error, abort_code, key_kind"
            " FROM run_progress WHERE run_id = %s",
            (run_id,),
        )
        return cur.fetchone()
