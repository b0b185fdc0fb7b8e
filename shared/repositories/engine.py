"""The sync engine's SQL: leases and fencing, staging and the set-based diff, batches, fan-in,
the snapshot, finalization and what the reaper looks for.

Every write a run makes after it was leased goes through `fence`, which locks the run row and
checks the fencing token, so a worker that lost its lease can no longer change anything."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import class_row


class LeaseLost(Exception):
    """The run is no longer this worker's: another took it over, or it ended."""


# -- leases --------------------------------------------------------------------------------------


@dataclass
class Lease:
    run_id: str
    sync_id: str
    workspace_id: str
    fencing_token: int
    full_refresh: bool
    replay_keys: list[str] | None


def take_lease(
    conn: psycopg.Connection, run_id: str, owner: str, lease_seconds: float
) -> Lease | None:
    """Start a queued run, or take over a running one whose planner's lease expired.

    Raises psycopg.errors.UniqueViolation when another run of the sync is running."""
    with conn.cursor(row_factory=class_row(Lease)) as cur:
        cur.execute(
            "UPDATE runs r SET status = 'running', lease_owner = %s,"
            " lease_expires_at = now() + make_interval(secs => %s),"
            " fencing_token = r.fencing_token + 1, started_at = coalesce(r.started_at, now()),"
            " rows_read = 0, rows_written = 0, rows_failed = 0, rows_added = 0,"
            " rows_changed = 0, rows_removed = 0, rows_unchanged = 0, updated_at = now()"
            " WHERE r.id = %s AND (r.status = 'queued'"
            "   OR (r.status = 'running' AND r.lease_expires_at < now() AND NOT EXISTS ("
            "       SELECT 1 FROM run_progress p WHERE p.run_id = r.id AND p.phase <> 'planning')))"
            " RETURNING r.id AS run_id, r.sync_id, r.workspace_id, r.fencing_token,"
            " r.full_refresh, r.replay_keys",
            (owner, lease_seconds, run_id),
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


# -- planning ------------------------------------------------------------------------------------


def reset_staging(conn: psycopg.Connection, run_id: str) -> None:
    """Forget whatever an earlier attempt at this run staged, and start its progress row."""
    for table in ("run_ops", "run_batches", "run_failures"):
        conn.execute(f"DELETE FROM {table} WHERE run_id = %s", (run_id,))
    conn.execute(
        "INSERT INTO run_progress (run_id) VALUES (%s) ON CONFLICT (run_id) DO UPDATE"
        " SET phase = 'planning', batches_total = NULL, batches_done = 0, abort_error = NULL,"
        " abort_code = NULL, finished_at = NULL, snapshot_was_empty = false, writer_until = NULL,"
        " backlog_rung_at = NULL, updated_at = now()",
        (run_id,),
    )


def create_stage(conn: psycopg.Connection) -> None:
    """A session-private table for (position, key, hash) of every row the source returned."""
    conn.execute("DROP TABLE IF EXISTS retl_stage")
    conn.execute(
        "CREATE TEMP TABLE retl_stage (seq bigint, record_key text, content_hash text)"
        " ON COMMIT PRESERVE ROWS"
    )


def copy_into_stage(
    conn: psycopg.Connection, chunks: Iterable[list[tuple[str | None, str]]], on_chunk=None
) -> int:
    """COPY the (key, hash) chunks into the stage in arrival order; the number of rows."""
    seq = 0
    with conn.cursor() as cur:
        with cur.copy("COPY retl_stage (seq, record_key, content_hash) FROM STDIN") as copy:
            for chunk in chunks:
                for key, content_hash in chunk:
                    seq += 1
                    copy.write_row((seq, key, content_hash))
                if on_chunk is not None:
                    on_chunk(seq)
    return seq


def restrict_stage_to_keys(conn: psycopg.Connection, keys: list[str]) -> None:
    """A replay: keep only the rows of the records asked for."""
    conn.execute(
        "DELETE FROM retl_stage WHERE record_key IS NULL OR NOT (record_key = ANY(%s::text[]))",
        (keys,),
    )


@dataclass
class Rejected:
    record_key: str
    error_code: str
    rows: int


def stage_rejects(conn: psycopg.Connection, run_id: str) -> list[Rejected]:
    """Rows with a null key (one failure, key '') and every later occurrence of a duplicate key
    become failures of the run; the rows that stay are the first occurrence of each key."""
    conn.execute("ANALYZE retl_stage")
    conn.execute(
        "CREATE TEMP TABLE retl_dups ON COMMIT DROP AS"
        " SELECT record_key, min(seq) AS first_seq, count(*) - 1 AS extra FROM retl_stage"
        " WHERE record_key IS NOT NULL GROUP BY record_key HAVING count(*) > 1"
    )
    conn.execute(
        "DELETE FROM retl_stage s USING retl_dups d"
        " WHERE s.record_key = d.record_key AND s.seq <> d.first_seq"
    )
    nulls = conn.execute("DELETE FROM retl_stage WHERE record_key IS NULL").rowcount
    conn.execute(
        "INSERT INTO run_failures (run_id, record_key, key_value, error_code, message, rows)"
        " SELECT %s, record_key, record_key, 'DUPLICATE_KEY',"
        "  'the key ' || record_key || ' appears ' || (extra + 1)"
        "  || ' times in the result; the first row was used', extra FROM retl_dups",
        (run_id,),
    )
    if nulls:
        conn.execute(
            "INSERT INTO run_failures (run_id, record_key, key_value, error_code, message, rows)"
            " VALUES (%s, '', NULL, 'NULL_KEY', %s, %s)",
            (run_id, f"{nulls} row(s) of the result have a null key and were not sent", nulls),
        )
    rows = conn.execute(
        "SELECT record_key, error_code, rows FROM run_failures WHERE run_id = %s", (run_id,)
    ).fetchall()
    return [Rejected(*row) for row in rows]


@dataclass
class DiffCounts:
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: int = 0
    outgoing: int = 0  # operations planned, deletes included
    deletes: int = 0


def diff_into_ops(
    conn: psycopg.Connection, *, run_id: str, sync_id: str, fingerprint: str, mode: str,
    resend_all: bool, detect_removed: bool, salted: bool,
) -> DiffCounts:
    """Classify the staged rows against the snapshot and stage the operations the mode sends.

    The snapshot holds the content hash salted with the mapping fingerprint, so a changed
    mapping makes every record `changed`; `salted` says the source salted the staged hashes
    itself, otherwise it happens here. `resend_all` (full refresh, replay) sends unchanged
    records too."""
    operation = {"mirror": "upsert", "upsert": "upsert", "insert": "insert",
                 "update": "update", "delete": "delete"}[mode]
    # Classify without materialising the join: one pass counts every class, a second stages
    # only the records that go out. The hash join of a large sync needs memory, not disk.
    conn.execute("SET LOCAL work_mem = '256MB'")
    content = "s.content_hash" if salted else "md5(s.content_hash || %(fp)s)"
    change = (
        "CASE WHEN p.record_key IS NULL THEN 'added'"
        f" WHEN p.content_hash = {content} THEN 'unchanged'"
        " ELSE 'changed' END"
    )
    joined = (
        " FROM retl_stage s LEFT JOIN sync_snapshots p"
        " ON p.sync_id = %(sync)s AND p.record_key = s.record_key"
    )
    params = {"fp": fingerprint, "sync": sync_id, "run": run_id, "op": operation}
    added, unchanged, total = conn.execute(
        "SELECT count(*) FILTER (WHERE p.record_key IS NULL),"
        f" count(*) FILTER (WHERE p.content_hash = {content}),"
        f" count(*){joined}",
        params,
    ).fetchone()
    counts = DiffCounts(added=added, unchanged=unchanged, changed=total - added - unchanged)
    if resend_all:
        sends = "true"
    elif mode == "insert":
        sends = "p.record_key IS NULL"
    else:
        sends = f"p.content_hash IS DISTINCT FROM {content}"
    counts.outgoing = conn.execute(
        "INSERT INTO run_ops (run_id, record_key, operation, change, content_hash)"
        f" SELECT %(run)s, s.record_key, %(op)s, {change}, {content}"
        f"{joined} WHERE {sends}",
        params,
    ).rowcount
    if detect_removed:
        counts.removed = counts.deletes = conn.execute(
            "INSERT INTO run_ops (run_id, record_key, operation, change, content_hash)"
            " SELECT %s, p.record_key, 'delete', 'removed', NULL FROM sync_snapshots p"
            " WHERE p.sync_id = %s AND NOT EXISTS"
            "  (SELECT 1 FROM retl_stage s WHERE s.record_key = p.record_key)",
            (run_id, sync_id),
        ).rowcount
        counts.outgoing += counts.deletes
    elif mode == "delete":
        counts.deletes = counts.outgoing
    return counts


def snapshot_is_empty(conn: psycopg.Connection, sync_id: str) -> bool:
    """No record of the sync was ever accepted: every row of its result is new."""
    row = conn.execute(
        "SELECT NOT EXISTS (SELECT 1 FROM sync_snapshots WHERE sync_id = %s)", (sync_id,)
    ).fetchone()
    return bool(row[0])


def mark_snapshot_empty(conn: psycopg.Connection, run_id: str) -> None:
    """The sync's snapshot was empty when this run was planned: its one-pass batches hold
    records the snapshot has never seen (see `accept_batch`)."""
    conn.execute(
        "UPDATE run_progress SET snapshot_was_empty = true WHERE run_id = %s", (run_id,)
    )


def create_seen(conn: psycopg.Connection) -> None:
    """A session-private table of the keys a one-pass read has staged (first occurrences)."""
    conn.execute("DROP TABLE IF EXISTS retl_seen")
    conn.execute(
        "CREATE TEMP TABLE retl_seen (record_key text PRIMARY KEY, content_hash text)"
        " ON COMMIT PRESERVE ROWS"
    )


@dataclass
class StagedRows:
    added: int
    changed: int
    unchanged: int
    batch_stored: bool
    # Keys staged by this call, in order, when some of the keys given were staged already
    # (duplicates); None when every key was new.
    staged_keys: list[str] | None


def stage_rows_and_batch(
    conn: psycopg.Connection, *, run_id: str, sync_id: str, operation: str, keys: list[str],
    hashes: list[str], batch_no: int | None, batch_keys: list[str] | None,
    batch_hashes: list[str] | None, payload: bytes | None, keys_unseen: bool = False,
    snapshot_empty: bool = False,
) -> StagedRows:
    """One pass over the source, for rows that all go out: mark their keys seen (`create_seen`,
    same session), classify them against the snapshot and store their batch with its content
    hashes (salted), in one statement.

    The first occurrence of a key wins (ON CONFLICT DO NOTHING, in the order given); when a key
    was seen before, the batch is not stored and the caller gets the keys that were staged,
    to drop the later occurrences and store the batch itself. `batch_keys` and `batch_hashes`
    None: the batch holds every row given (the usual case; the arrays are sent once).

    It relaxes its transaction (`relax`) itself: one round trip fewer per batch.

    `keys_unseen`: the caller expects none of the keys to be seen yet (no duplicates so far),
    so they are inserted without the conflict check, which costs about a third of the
    statement; a key seen after all raises UniqueViolation, and the caller rolls back and
    stages the rows again without it.

    `snapshot_empty`: the sync's snapshot was empty when this planning began (a first run), so
    every key staged first is added and the snapshot is not looked up — about half of the
    statement's work. It holds for the whole run: the snapshot gains only keys of this run's
    batches, each of which the seen keys let through once."""
    if snapshot_empty:
        counts = " SELECT (SELECT count(*) FROM fresh), 0, 0,"
    else:
        counts = (
            ", classified AS ("
            " SELECT CASE WHEN p.record_key IS NULL THEN 'added'"
            "  WHEN p.content_hash = f.content_hash THEN 'unchanged' ELSE 'changed' END AS change"
            " FROM fresh f LEFT JOIN sync_snapshots p"
            "  ON p.sync_id = %(sync)s AND p.record_key = f.record_key)"
            " SELECT (SELECT count(*) FILTER (WHERE change = 'added') FROM classified),"
            " (SELECT count(*) FILTER (WHERE change = 'changed') FROM classified),"
            " (SELECT count(*) FILTER (WHERE change = 'unchanged') FROM classified),"
        )
    row = conn.execute(
        "WITH fresh AS ("
        " INSERT INTO retl_seen (record_key, content_hash)"
        " SELECT u.k, u.h FROM unnest(%(keys)b::text[], %(hashes)b::text[])"
        "  WITH ORDINALITY AS u(k, h, n)"
        " ORDER BY u.n" + ("" if keys_unseen else " ON CONFLICT (record_key) DO NOTHING")
        + " RETURNING record_key, content_hash),"
        " stored AS ("
        " INSERT INTO run_batches (run_id, batch_no, operation, record_keys, content_hashes,"
        "  payload)"
        " SELECT %(run)s, %(batch)s, %(op)s, coalesce(%(bkeys)b, %(keys)b),"
        "  coalesce(%(bhashes)b, %(hashes)b), %(payload)b"
        " WHERE %(store)s AND (SELECT count(*) FROM fresh) = %(n)s RETURNING 1)"
        + counts
        + " (SELECT count(*) FROM stored) > 0,"
        " (SELECT CASE WHEN count(*) < %(n)s THEN array_agg(record_key) END FROM fresh),"
        " set_config('synchronous_commit', 'off', true)",
        {"run": run_id, "sync": sync_id, "op": operation, "keys": keys, "hashes": hashes,
         "batch": batch_no, "bkeys": batch_keys, "bhashes": batch_hashes,
         "payload": payload, "store": batch_no is not None, "n": len(keys)},
    ).fetchone()
    return StagedRows(row[0], row[1], row[2], row[3], row[4])


def stage_removed(conn: psycopg.Connection, run_id: str, sync_id: str) -> int:
    """Mirror after a one-pass read (same session as `create_seen`): what the snapshot holds
    and the result no longer does is staged as a removal; the number staged."""
    return conn.execute(
        "INSERT INTO run_ops (run_id, record_key, operation, change, content_hash)"
        " SELECT %s, p.record_key, 'delete', 'removed', NULL FROM sync_snapshots p"
        " WHERE p.sync_id = %s AND NOT EXISTS"
        "  (SELECT 1 FROM retl_seen s WHERE s.record_key = p.record_key)",
        (run_id, sync_id),
    ).rowcount


def add_rejects(
    conn: psycopg.Connection, run_id: str, *, duplicates: dict[str, int], null_keys: int
) -> None:
    """Failures for the later occurrences of duplicate keys (key -> extra rows) and for rows
    with a null key (one failure, key ''), worded as `stage_rejects` words them."""
    if duplicates:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO run_failures (run_id, record_key, key_value, error_code, message, rows)"
                " VALUES (%s, %s, %s, 'DUPLICATE_KEY', %s, %s) ON CONFLICT (run_id, record_key)"
                " DO UPDATE SET error_code = 'DUPLICATE_KEY', message = EXCLUDED.message,"
                " rows = EXCLUDED.rows",
                [
                    (run_id, key, key, f"the key {key} appears {extra + 1} times in the result;"
                     " the first row was used", extra)
                    for key, extra in duplicates.items()
                ],
            )
    if null_keys:
        conn.execute(
            "INSERT INTO run_failures (run_id, record_key, key_value, error_code, message, rows)"
            " VALUES (%s, '', NULL, 'NULL_KEY', %s, %s) ON CONFLICT (run_id, record_key)"
            " DO UPDATE SET message = EXCLUDED.message, rows = EXCLUDED.rows",
            (run_id, f"{null_keys} row(s) of the result have a null key and were not sent",
             null_keys),
        )


def outgoing_keys(conn: psycopg.Connection, run_id: str) -> list[str]:
    """Keys of the records whose content must be read again to be sent (not the removals)."""
    rows = conn.execute(
        "SELECT record_key FROM run_ops WHERE run_id = %s AND change <> 'removed'", (run_id,)
    ).fetchall()
    return [row[0] for row in rows]


def removed_keys(conn: psycopg.Connection, run_id: str) -> list[str]:
    rows = conn.execute(
        "SELECT record_key FROM run_ops WHERE run_id = %s AND change = 'removed'"
        " ORDER BY record_key",
        (run_id,),
    ).fetchall()
    return [row[0] for row in rows]


def set_plan_counts(
    conn: psycopg.Connection, run_id: str, *, read: int, counts: DiffCounts, failed: int
) -> None:
    conn.execute(
        "UPDATE runs SET rows_read = %s, rows_added = %s, rows_changed = %s,"
        " rows_unchanged = %s, rows_removed = %s, rows_failed = rows_failed + %s,"
        " updated_at = now() WHERE id = %s",
        (read, counts.added, counts.changed, counts.unchanged, counts.removed, failed, run_id),
    )


def set_removed(conn: psycopg.Connection, run_id: str, removed: int) -> None:
    conn.execute(
        "UPDATE runs SET rows_removed = %s, updated_at = now() WHERE id = %s", (removed, run_id)
    )


def set_rows_read(conn: psycopg.Connection, run_id: str, read: int) -> None:
    conn.execute("UPDATE runs SET rows_read = %s, updated_at = now() WHERE id = %s", (read, run_id))


@dataclass
class Failure:
    record_key: str
    key_value: str | None
    error_code: str
    message: str


def add_failures(conn: psycopg.Connection, run_id: str, failures: list[Failure]) -> None:
    """Record refused records; a record refused twice in a run keeps its latest reason."""
    if not failures:
        return
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO run_failures (run_id, record_key, key_value, error_code, message)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (run_id, record_key) DO UPDATE"
            " SET error_code = EXCLUDED.error_code, message = EXCLUDED.message",
            [(run_id, f.record_key, f.key_value, f.error_code, f.message) for f in failures],
        )


def add_counts(conn: psycopg.Connection, run_id: str, *, written: int = 0, failed: int = 0) -> None:
    if written or failed:
        conn.execute(
            "UPDATE runs SET rows_written = rows_written + %s, rows_failed = rows_failed + %s,"
            " updated_at = now() WHERE id = %s",
            (written, failed, run_id),
        )


# -- batches -------------------------------------------------------------------------------------


def insert_batch(
    conn: psycopg.Connection, run_id: str, batch_no: int, operation: str, keys: list[str],
    payload: bytes, hashes: list[str] | None = None,
) -> None:
    """Store a batch; `hashes` (aligned with `keys`) when its hashes are not in run_ops."""
    conn.execute(
        # %b: binary arrays skip the per-element quoting of the text format.
        "INSERT INTO run_batches (run_id, batch_no, operation, record_keys, content_hashes,"
        " payload) VALUES (%s, %s, %s, %b, %b, %b)",
        (run_id, batch_no, operation, keys, hashes, payload),
    )


@dataclass
class ClaimedBatch:
    run_id: str
    batch_no: int
    operation: str
    payload: bytes
    attempts: int


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
    " RETURNING b.run_id, b.batch_no, b.operation, b.payload, b.attempts,"
    " r.cancel_requested OR p.abort_error IS NOT NULL, b.content_hashes IS NOT NULL,"
    " p.snapshot_was_empty"
)


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
    return FencedClaim(ClaimedBatch(*row[:5]), bool(row[5]), bool(row[6]), bool(row[7]))


def claim_batch_fenced(
    conn: psycopg.Connection, run_id: str, batch_no: int, token: int, owner: str,
    claim_seconds: float,
) -> FencedClaim | None:
    """Claim batch `batch_no` for the holder of `token`, in one statement: None when the token
    is stale or the batch is finished or held by another worker (a claim that ran out is
    taken over)."""
    return _claim(
        conn,
        "b.batch_no = %(batch)s AND (b.status = 'pending'"
        " OR (b.status = 'running' AND b.claimed_until < now()))",
        {"owner": owner, "claim_s": claim_seconds, "run": run_id, "batch": batch_no,
         "token": token},
    )


# -- writers following the planner ---------------------------------------------------------------
#
# A writer that has written a batch of a run still being planned may follow the planner: it
# promises (run_progress.writer_until) to take the batches stored from then on, the planner
# stores those without ringing their doorbells (rung false) and wakes the follower with a
# NOTIFY instead, and the follower claims the run's pending batches in order. A message costs
# about 2 ms of CPU across the broker, Celery's parent and the pool process; a follower's
# claim, a fraction. When batches wait for the followers, the planner rings again, so a slow
# destination still gets as many writers as the fleet has.
#
# Safety: the planner decides under the progress row's lock (`fence_last_storing`), and a
# follower withdraws its promise under the same lock after finding no batch left to it
# (`retire_follower`): either it sees the batch, or the planner sees no promise and rings. A
# follower that dies leaves its promise to run out; the reaper rings what it left.

# Batches left to followers and not yet taken, beyond which the planner rings again — at most
# once every BACKLOG_RING_EVERY_S: each writer it adds follows too, so a run gains a writer a
# second for as long as its followers fall behind, and a worker with no process free is not
# sent a message per batch that it could only take once the batches are written.
FOLLOWED_BACKLOG = 2
BACKLOG_RING_EVERY_S = 1.0


def followers_channel(run_id: str) -> str:
    return f"retl_batches_{run_id}"


def fence_last_storing(
    conn: psycopg.Connection, run_id: str, token: int, batch_no: int, *, read: int | None,
    added: int, changed: int, unchanged: int, failed: int,
) -> bool:
    """`fence_last` for the planner's transaction that stored batch `batch_no`, deciding in the
    same statement whether the batch is left to the run's followers: when a writer follows the
    run and keeps up (or another writer was called lately), the batch is stored with no
    doorbell and the followers are woken at commit (True); else the caller rings it (False).
    The run's row is locked first, then its progress row, the order of every writer; a
    retiring follower takes the progress row's lock before it looks (`retire_follower`).
    Raises LeaseLost if the token is stale."""
    row = conn.execute(
        "WITH fenced AS (" + _FENCE_LAST + "), "
        + _FOLLOWED.format(promise_filter=" AND EXISTS (SELECT 1 FROM fenced)")
        + " SELECT EXISTS (SELECT 1 FROM fenced), " + _WOKEN,
        {"run": run_id, "token": token, "batch": batch_no, "read": read, "added": added,
         "changed": changed, "unchanged": unchanged, "written": 0, "failed": failed,
         "backlog": FOLLOWED_BACKLOG, "every": BACKLOG_RING_EVERY_S,
         "channel": followers_channel(run_id)},
    ).fetchone()
    if not row[0]:
        raise LeaseLost(run_id)
    return bool(row[1])


# Whether followers take batch %(batch)s of run %(run)s (see `fence_last_storing`): the
# statement's CTEs, then what it answers, the number of followers' wake-ups sent (0 or 1).
_FOLLOWED = (
    "promise AS ("
    " SELECT writer_until > clock_timestamp() AS held,"
    "  coalesce(backlog_rung_at > clock_timestamp() - make_interval(secs => %(every)s),"
    "   false) AS rang_lately"
    " FROM run_progress WHERE run_id = %(run)s{promise_filter} FOR UPDATE),"
    " decision AS ("
    " SELECT p.held, p.held AND (p.rang_lately OR (SELECT count(*) FROM run_batches w"
    "  WHERE w.run_id = %(run)s AND w.status = 'pending' AND NOT w.rung) < %(backlog)s)"
    "  AS follow FROM promise p),"
    " followed AS ("
    " UPDATE run_batches SET rung = false FROM decision"
    " WHERE decision.follow AND run_id = %(run)s AND batch_no = %(batch)s RETURNING 1),"
    " backlog_rung AS ("
    " UPDATE run_progress SET backlog_rung_at = clock_timestamp() FROM decision"
    " WHERE decision.held AND NOT decision.follow AND run_id = %(run)s RETURNING 1)"
)
_WOKEN = "(SELECT count(*) FROM (SELECT pg_notify(%(channel)s, '') FROM followed) AS woken)"


def claim_next_pending(
    conn: psycopg.Connection, run_id: str, token: int, owner: str, claim_seconds: float,
    unrung_only: bool = False,
) -> FencedClaim | None:
    """The run's first pending batch, claimed for the holder of `token` (whether or not it was
    rung: a doorbell that finds its batch taken costs little; `unrung_only`: only one left to
    followers); None when there is none free (or the token is stale)."""
    return read_claim(
        send_claim_next_pending(conn, run_id, token, owner, claim_seconds, unrung_only)
    )


def send_claim_next_pending(
    conn: psycopg.Connection, run_id: str, token: int, owner: str, claim_seconds: float,
    unrung_only: bool = False,
) -> psycopg.Cursor:
    """`claim_next_pending` with its answer left unread, for `read_claim`: in a pipeline it
    travels with the answers of the statements sent after it. Skips locked batches, so it
    never waits for another claim."""
    return _send_claim(
        conn,
        "b.batch_no = (SELECT u.batch_no FROM run_batches u"
        "  WHERE u.run_id = %(run)s AND u.status = 'pending'"
        + (" AND NOT u.rung" if unrung_only else "")
        + "  ORDER BY u.batch_no LIMIT 1 FOR UPDATE SKIP LOCKED) AND b.status = 'pending'",
        {"owner": owner, "claim_s": claim_seconds, "run": run_id, "token": token},
    )


def promise_to_follow(conn: psycopg.Connection, run_id: str, token: int, seconds: float) -> bool:
    """Promise to take the run's next batches for `seconds` from now; False (no promise) when
    the run is no longer being planned by the holder of `token`."""
    row = conn.execute(
        "UPDATE run_progress p SET writer_until = now() + make_interval(secs => %s)"
        " FROM runs r WHERE p.run_id = %s AND p.phase = 'planning'"
        " AND r.id = p.run_id AND r.fencing_token = %s AND r.status = 'running'"
        " RETURNING 1",
        (seconds, run_id, token),
    ).fetchone()
    return row is not None


def retire_follower(conn: psycopg.Connection, run_id: str) -> bool:
    """Withdraw the run's promise unless a batch is left to followers; True when withdrawn (the
    planner rings its next batch). The lock is taken before the look: a batch stored before it
    is seen, and one stored after it finds no promise."""
    conn.execute("SELECT 1 FROM run_progress WHERE run_id = %s FOR UPDATE", (run_id,))
    left = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM run_batches"
        " WHERE run_id = %s AND status = 'pending' AND NOT rung)",
        (run_id,),
    ).fetchone()[0]
    if left:
        return False
    conn.execute("UPDATE run_progress SET writer_until = NULL WHERE run_id = %s", (run_id,))
    return True


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
            "SELECT phase, batches_total, batches_done, abort_error, abort_code"
            " FROM run_progress WHERE run_id = %s",
            (run_id,),
        )
        return cur.fetchone()


def planning_done(conn: psycopg.Connection, run_id: str, batches_total: int) -> Progress:
    """Every batch is stored: the run's phase moves on, and its followers are woken to take what
    is left to them and stop."""
    conn.execute("SELECT pg_notify(%s, '')", (followers_channel(run_id),))
    with conn.cursor(row_factory=class_row(Progress)) as cur:
        cur.execute(
            "UPDATE run_progress SET phase = 'writing', batches_total = %s, updated_at = now()"
            " WHERE run_id = %s"
            " RETURNING phase, batches_total, batches_done, abort_error, abort_code",
            (batches_total, run_id),
        )
        return cur.fetchone()


# -- finalization --------------------------------------------------------------------------------


def accept_batch(
    conn: psycopg.Connection, run_id: str, batch_no: int, sync_id: str, operation: str,
    refused: list[str], *, has_hashes: bool = False, new_keys: bool = False,
) -> None:
    """The destination accepted the batch's records except `refused`: the snapshot takes their
    hashes (or forgets the removed ones) and their open DLQ entries resolve — unless the run
    also recorded a failure for the key (a duplicate key), which keeps the entry open.

    `new_keys` (a one-pass batch of a run planned against an empty snapshot): the snapshot
    holds none of the keys, so they are inserted without the conflict check; if one is there
    after all this raises UniqueViolation, and the caller records the batch again without
    `new_keys`."""
    # Driven by the batch's keys (one primary-key probe each): the staging tables are never
    # analysed, and a plan that scanned the run's whole staging per batch would be quadratic.
    accepted = (
        "SELECT k.record_key FROM run_batches b"
        " CROSS JOIN LATERAL unnest(b.record_keys) AS k(record_key)"
        " WHERE b.run_id = %(run)s AND b.batch_no = %(batch)s"
        " AND NOT (k.record_key = ANY(%(refused)s::text[]))"
    )
    params = {"run": run_id, "batch": batch_no, "refused": refused, "sync": sync_id}
    upsert = "" if new_keys and has_hashes else (
        " ON CONFLICT (sync_id, record_key) DO UPDATE SET content_hash = EXCLUDED.content_hash"
        " WHERE sync_snapshots.content_hash <> EXCLUDED.content_hash"
    )
    # A one-pass batch carries its hashes; otherwise they are the run's staged operations'.
    if has_hashes:
        conn.execute(
            "INSERT INTO sync_snapshots (sync_id, record_key, content_hash)"
            " SELECT %(sync)s, k.record_key, k.content_hash FROM run_batches b CROSS JOIN LATERAL"
            " unnest(b.record_keys, b.content_hashes) AS k(record_key, content_hash)"
            " WHERE b.run_id = %(run)s AND b.batch_no = %(batch)s"
            " AND NOT (k.record_key = ANY(%(refused)s::text[]))" + upsert,
            params,
        )
    else:
        conn.execute(
            "INSERT INTO sync_snapshots (sync_id, record_key, content_hash)"
            f" SELECT %(sync)s, o.record_key, o.content_hash FROM ({accepted}) AS a"
            " JOIN run_ops o ON o.run_id = %(run)s AND o.record_key = a.record_key"
            " WHERE o.change <> 'removed'" + upsert,
            params,
        )
    if operation == "delete":
        conn.execute(
            f"DELETE FROM sync_snapshots s USING ({accepted}) AS a, run_ops o"
            " WHERE o.run_id = %(run)s AND o.record_key = a.record_key"
            " AND o.change = 'removed' AND s.sync_id = %(sync)s AND s.record_key = a.record_key",
            params,
        )
    conn.execute(
        "UPDATE dlq_entries d SET resolved = true, resolved_at = now(),"
        " resolution = 'auto_resolved'"
        " WHERE d.sync_id = %(sync)s AND NOT d.resolved"
        f" AND d.record_key IN ({accepted})"
        " AND NOT EXISTS (SELECT 1 FROM run_failures f"
        "  WHERE f.run_id = %(run)s AND f.record_key = d.record_key)",
        params,
    )


def resolve_null_key_entry(conn: psycopg.Connection, sync_id: str) -> None:
    """A full read found no null keys any more: the entry standing for them resolves."""
    conn.execute(
        "UPDATE dlq_entries SET resolved = true, resolved_at = now(),"
        " resolution = 'auto_resolved' WHERE sync_id = %s AND NOT resolved AND record_key = ''",
        (sync_id,),
    )


def run_failures(conn: psycopg.Connection, run_id: str) -> list[Failure]:
    rows = conn.execute(
        "SELECT record_key, key_value, error_code, message FROM run_failures WHERE run_id = %s"
        " ORDER BY record_key",
        (run_id,),
    ).fetchall()
    return [Failure(*row) for row in rows]


def end_run(
    conn: psycopg.Connection, run_id: str, token: int, status: str, error: str | None
) -> bool:
    row = conn.execute(
        "UPDATE runs SET status = %s, error = %s, finished_at = now(), lease_owner = NULL,"
        " lease_expires_at = NULL, updated_at = now()"
        " WHERE id = %s AND fencing_token = %s AND status = 'running' RETURNING 1",
        (status, error, run_id, token),
    ).fetchone()
    conn.execute(
        "UPDATE run_progress SET phase = 'finished', finished_at = now(), updated_at = now()"
        " WHERE run_id = %s",
        (run_id,),
    )
    return row is not None


def current_token(conn: psycopg.Connection, run_id: str) -> int | None:
    row = conn.execute(
        "SELECT fencing_token FROM runs WHERE id = %s AND status = 'running'", (run_id,)
    ).fetchone()
    return None if row is None else row[0]


# -- reaper --------------------------------------------------------------------------------------


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
    """Drop the staging of runs that ended a while ago (kept briefly for inspection)."""
    finished = [
        row[0] for row in conn.execute(
            "SELECT p.run_id FROM run_progress p JOIN runs r ON r.id = p.run_id"
            " WHERE r.status NOT IN ('queued', 'running')"
            " AND coalesce(p.finished_at, r.finished_at, p.updated_at)"
            "  < now() - make_interval(secs => %s)",
            (older_than_s,),
        )
    ]
    if finished:
        for table in ("run_ops", "run_batches", "run_failures", "run_progress"):
            conn.execute(f"DELETE FROM {table} WHERE run_id = ANY(%s)", (finished,))
    return len(finished)
