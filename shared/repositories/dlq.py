"""Dead-letter queue entries: one open entry per (sync, record key)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from shared import ids

COLUMNS = (
    "id, workspace_id, sync_id, run_id, record_key, record_keys, error_code, message, attempts,"
    " first_seen_at, last_seen_at, resolved, resolved_at, resolution"
)


@dataclass
class DlqEntry:
    id: str
    workspace_id: str
    sync_id: str
    run_id: str
    record_key: str
    record_keys: dict[str, Any]
    error_code: str
    message: str
    attempts: int
    first_seen_at: dt.datetime
    last_seen_at: dt.datetime
    resolved: bool
    resolved_at: dt.datetime | None
    resolution: str | None


def list_page(
    conn: psycopg.Connection, workspace_id: str, *, sync_id: str | None, resolved: bool,
    after: str | None, limit: int,
) -> list[DlqEntry]:
    with conn.cursor(row_factory=class_row(DlqEntry)) as cur:
        cur.execute(
            f"SELECT {COLUMNS} FROM dlq_entries WHERE workspace_id = %s AND resolved = %s"
            " AND (%s::text IS NULL OR sync_id = %s)"
            " AND (%s::text IS NULL OR id < %s)"
            " ORDER BY id DESC LIMIT %s",
            (workspace_id, resolved, sync_id, sync_id, after, after, limit),
        )
        return cur.fetchall()


@dataclass
class DlqStats:
    open_count: int
    resolved_count: int
    by_error_code: dict[str, int]


def stats(
    conn: psycopg.Connection, workspace_id: str, *, sync_id: str | None, since: dt.datetime | None
) -> DlqStats:
    """Counts of entries first seen at or after `since`; by_error_code counts open entries."""
    rows = conn.execute(
        "SELECT resolved, error_code, count(*) FROM dlq_entries WHERE workspace_id = %s"
        " AND (%s::text IS NULL OR sync_id = %s)"
        " AND (%s::timestamptz IS NULL OR first_seen_at >= %s)"
        " GROUP BY resolved, error_code",
        (workspace_id, sync_id, sync_id, since, since),
    ).fetchall()
    open_count = sum(n for resolved, _, n in rows if not resolved)
    resolved_count = sum(n for resolved, _, n in rows if resolved)
    by_code = {code: n for resolved, code, n in rows if not resolved}
    return DlqStats(open_count, resolved_count, dict(sorted(by_code.items())))


def entries_by_ids(
    conn: psycopg.Connection, workspace_id: str, entry_ids: list[str]
) -> list[DlqEntry]:
    with conn.cursor(row_factory=class_row(DlqEntry)) as cur:
        cur.execute(
            f"SELECT {COLUMNS} FROM dlq_entries WHERE workspace_id = %s AND id = ANY(%s)"
            " ORDER BY id FOR UPDATE",
            (workspace_id, entry_ids),
        )
        return cur.fetchall()


def open_entries_matching(
    conn: psycopg.Connection, workspace_id: str, *, sync_id: str | None, error_code: str | None
) -> list[DlqEntry]:
    with conn.cursor(row_factory=class_row(DlqEntry)) as cur:
        cur.execute(
            f"SELECT {COLUMNS} FROM dlq_entries WHERE workspace_id = %s AND NOT resolved"
            " AND (%s::text IS NULL OR sync_id = %s)"
            " AND (%s::text IS NULL OR error_code = %s)"
            " ORDER BY id FOR UPDATE",
            (workspace_id, sync_id, sync_id, error_code, error_code),
        )
        return cur.fetchall()


def resolve_open_for_sync(conn: psycopg.Connection, sync_id: str, resolution: str) -> int:
    """Resolve every open entry of the sync; how many were open."""
    return conn.execute(
        "UPDATE dlq_entries SET resolved = true, resolved_at = now(), resolution = %s"
        " WHERE sync_id = %s AND NOT resolved",
        (resolution, sync_id),
    ).rowcount


def resolve(conn: psycopg.Connection, entry_ids: list[str], resolution: str) -> dt.datetime:
    row = conn.execute(
        "UPDATE dlq_entries SET resolved = true, resolved_at = now(), resolution = %s"
        " WHERE id = ANY(%s) AND NOT resolved RETURNING resolved_at",
        (resolution, entry_ids),
    ).fetchone()
    return row[0] if row else conn.execute("SELECT now()").fetchone()[0]


def open_count_by_code(conn: psycopg.Connection) -> dict[str, int]:
    return dict(conn.execute(
        "SELECT error_code, count(*) FROM dlq_entries WHERE NOT resolved GROUP BY error_code"
    ).fetchall())


@dataclass
class FailedRecord:
    """A record a run could not deliver, as the DLQ keeps it."""

    record_key: str
    record_keys: dict[str, Any]
    error_code: str
    message: str


def upsert_open(
    conn: psycopg.Connection, *, workspace_id: str, sync_id: str, run_id: str,
    failures: list[FailedRecord],
) -> None:
    """One open entry per (sync, record key): a new failure opens one, a repeated failure
    updates the open one (latest run, code and message) and counts one more attempt."""
    if not failures:
        return
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO dlq_entries (id, workspace_id, sync_id, run_id, record_key, record_keys,"
            " error_code, message) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (sync_id, record_key) WHERE NOT resolved DO UPDATE"
            " SET run_id = EXCLUDED.run_id, error_code = EXCLUDED.error_code,"
            " message = EXCLUDED.message, record_keys = EXCLUDED.record_keys,"
            " attempts = dlq_entries.attempts + 1, last_seen_at = now()"
            " WHERE dlq_entries.run_id <> EXCLUDED.run_id"
            "  OR dlq_entries.error_code <> EXCLUDED.error_code",
            [
                (ids.new_id(ids.DLQ_ENTRY), workspace_id, sync_id, run_id, f.record_key,
                 Jsonb(f.record_keys), f.error_code, f.message)
                for f in failures
            ],
        )
