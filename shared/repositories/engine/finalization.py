"""Finalization: the snapshot advances for what the destination accepted, failures become DLQ
entries, and the run ends."""

from __future__ import annotations

import psycopg

from shared.repositories.engine.planning import Failure


def accept_batch(
    conn: psycopg.Connection, run_id: str, batch_no: int, sync_id: str, operation: str,
    refused: list[str], *, has_hashes: bool = False, new_keys: bool = False,
    key_kind: str | None = None,
) -> None:
    """The destination accepted the batch's records except `refused`: the snapshot takes their
    hashes and field digests (or forgets the removed ones) and their open DLQ entries resolve —
    unless the run also recorded a failure for the key (a duplicate key), which keeps the entry
    open.

    `new_keys` (a one-pass batch of a run planned against an empty snapshot): the snapshot
    holds none of the keys, so they are inserted without the conflict check; if one is there
    after all this raises UniqueViolation, and the caller records the batch again without
    `new_keys`. `key_kind` is how the source typed the keys (see `set_key_kind`)."""
    # Driven by the batch's keys (one primary-key probe each): the staging tables are never
    # analysed, and a plan that scanned the run's whole staging per batch would be quadratic.
    accepted_digests = (
        "SELECT k.record_key, k.digests FROM run_batches b"
        " CROSS JOIN LATERAL unnest(b.record_keys, b.field_digests) AS k(record_key, digests)"
        " WHERE b.run_id = %(run)s AND b.batch_no = %(batch)s"
        " AND NOT (k.record_key = ANY(%(refused)s::text[]))"
    )
    accepted = f"SELECT record_key FROM ({accepted_digests}) AS accepted"
    params = {"run": run_id, "batch": batch_no, "refused": refused, "sync": sync_id,
              "kind": key_kind}
    upsert = "" if new_keys and has_hashes else (
        " ON CONFLICT (sync_id, record_key) DO UPDATE SET content_hash = EXCLUDED.content_hash,"
        " key_kind = EXCLUDED.key_kind, field_digests = EXCLUDED.field_digests"
        " WHERE sync_snapshots.content_hash <> EXCLUDED.content_hash"
        " OR sync_snapshots.key_kind IS DISTINCT FROM EXCLUDED.key_kind"
        " OR sync_snapshots.field_digests IS DISTINCT FROM EXCLUDED.field_digests"
    )
    # A one-pass batch carries its hashes; otherwise they are the run's staged operations'.
    # The field digests come with the batch either way (NULL in a batch stored before they were
    # kept: the snapshot then no longer says which fields the destination holds).
    if has_hashes:
        conn.execute(
            "INSERT INTO sync_snapshots (sync_id, record_key, content_hash, key_kind,"
            " field_digests)"
            " SELECT %(sync)s, k.record_key, k.content_hash, %(kind)s, k.digests"
            " FROM run_batches b CROSS JOIN LATERAL unnest(b.record_keys, b.content_hashes,"
            " b.field_digests) AS k(record_key, content_hash, digests)"
            " WHERE b.run_id = %(run)s AND b.batch_no = %(batch)s"
            " AND NOT (k.record_key = ANY(%(refused)s::text[]))" + upsert,
            params,
        )
    else:
        conn.execute(
            "INSERT INTO sync_snapshots (sync_id, record_key, content_hash, key_kind,"
            " field_digests)"
            " SELECT %(sync)s, o.record_key, o.content_hash, %(kind)s, a.digests"
            f" FROM ({accepted_digests}) AS a"
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
