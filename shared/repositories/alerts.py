"""Alert channels (table `alert_channels`); URLs and headers are stored encrypted."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import class_row

COLUMNS = (
    "id, workspace_id, name, kind, config_encrypted, events, dlq_threshold, enabled,"
    " last_delivery_at, last_delivery_status, last_delivery_error, created_at, updated_at"
)


@dataclass
class AlertChannel:
    id: str
    workspace_id: str
    name: str
    kind: str
    config_encrypted: str
    events: list[str]
    dlq_threshold: int | None
    enabled: bool
    last_delivery_at: dt.datetime | None
    last_delivery_status: str | None
    last_delivery_error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


def insert(conn: psycopg.Connection, values: dict[str, Any]) -> AlertChannel:
    """Insert `values` (column → value; columns are names from this module, never user input)."""
    columns = ", ".join(values)
    with conn.cursor(row_factory=class_row(AlertChannel)) as cur:
        cur.execute(
            f"INSERT INTO alert_channels ({columns}) VALUES ({', '.join(['%s'] * len(values))})"
            f" RETURNING {COLUMNS}",
            tuple(values.values()),
        )
        return cur.fetchone()


def get(conn: psycopg.Connection, workspace_id: str, id: str) -> AlertChannel | None:
    with conn.cursor(row_factory=class_row(AlertChannel)) as cur:
        cur.execute(
            f"SELECT {COLUMNS} FROM alert_channels WHERE id = %s AND workspace_id = %s",
            (id, workspace_id),
        )
        return cur.fetchone()


def get_by_id(conn: psycopg.Connection, id: str) -> AlertChannel | None:
    """For the delivery task, which acts on ids a workspace-checked service gave it."""
    with conn.cursor(row_factory=class_row(AlertChannel)) as cur:
        cur.execute(f"SELECT {COLUMNS} FROM alert_channels WHERE id = %s", (id,))
        return cur.fetchone()


def list_page(
    conn: psycopg.Connection, workspace_id: str, *, after: str | None, limit: int
) -> list[AlertChannel]:
    """Newest first; `after` is the last id of the previous page."""
    with conn.cursor(row_factory=class_row(AlertChannel)) as cur:
        cur.execute(
            f"SELECT {COLUMNS} FROM alert_channels WHERE workspace_id = %s"
            " AND (%s::text IS NULL OR id < %s) ORDER BY id DESC LIMIT %s",
            (workspace_id, after, after, limit),
        )
        return cur.fetchall()


def enabled_for_workspace(conn: psycopg.Connection, workspace_id: str) -> list[AlertChannel]:
    with conn.cursor(row_factory=class_row(AlertChannel)) as cur:
        cur.execute(
            f"SELECT {COLUMNS} FROM alert_channels WHERE workspace_id = %s AND enabled"
            " ORDER BY id",
            (workspace_id,),
        )
        return cur.fetchall()


def update(conn: psycopg.Connection, id: str, changes: dict[str, Any]) -> AlertChannel:
    """Set `changes` (column → value; columns are names from this module, never user input)."""
    assignments = ", ".join(f"{column} = %s" for column in changes)
    with conn.cursor(row_factory=class_row(AlertChannel)) as cur:
        cur.execute(
            f"UPDATE alert_channels SET {assignments}, updated_at = now() WHERE id = %s"
            f" RETURNING {COLUMNS}",
            (*changes.values(), id),
        )
        return cur.fetchone()


def record_delivery(conn: psycopg.Connection, id: str, status: str, error: str | None) -> None:
    conn.execute(
        "UPDATE alert_channels SET last_delivery_at = now(), last_delivery_status = %s,"
        " last_delivery_error = %s WHERE id = %s",
        (status, error, id),
    )


def delete(conn: psycopg.Connection, id: str) -> None:
    conn.execute("DELETE FROM alert_channels WHERE id = %s", (id,))


def open_dlq_counts(
    conn: psycopg.Connection, sync_id: str, since: dt.datetime
) -> tuple[int, int]:
    """The sync's open DLQ entries at `since` (those first seen before it and not resolved
    before it) and now."""
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE first_seen_at < %s AND (NOT resolved OR resolved_at >= %s)),"
        " count(*) FILTER (WHERE NOT resolved)"
        " FROM dlq_entries WHERE sync_id = %s",
        (since, since, sync_id),
    ).fetchone()
    return row[0], row[1]
