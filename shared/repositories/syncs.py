"""Sync definitions. Deleted syncs are kept (runs and DLQ entries refer to them) but hidden."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

COLUMNS = (
    "id, workspace_id, name, source_id, destination_id, object_name, source_query, field_mappings,"
    " sync_mode, enabled, schedule, next_run_at, created_at, updated_at, deleted_at, guard"
)
JSON_COLUMNS = {"field_mappings", "schedule", "guard"}


@dataclass
class Sync:
    id: str
    workspace_id: str
    name: str
    source_id: str
    destination_id: str
    object_name: str
    source_query: str
    field_mappings: list[dict[str, Any]]
    sync_mode: str
    enabled: bool
    schedule: dict[str, Any]
    next_run_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime
    deleted_at: dt.datetime | None
    # maxRemovedPercent / maxChangedPercent / minSourceRows as given; None: the default guard
    # (see shared.guards).
    guard: dict[str, Any] | None = None


def _adapt(column: str, value: Any) -> Any:
    return Jsonb(value) if column in JSON_COLUMNS and value is not None else value


def insert(conn: psycopg.Connection, values: dict[str, Any]) -> Sync:
    columns = ", ".join(values)
    placeholders = ", ".join(["%s"] * len(values))
    with conn.cursor(row_factory=class_row(Sync)) as cur:
        cur.execute(
            f"INSERT INTO syncs ({columns}) VALUES ({placeholders}) RETURNING {COLUMNS}",
            [_adapt(c, v) for c, v in values.items()],
        )
        return cur.fetchone()


def get(conn: psycopg.Connection, workspace_id: str, id: str, *, for_update: bool = False) -> Sync | None:
    lock = " FOR UPDATE" if for_update else ""
    with conn.cursor(row_factory=class_row(Sync)) as cur:
        cur.execute(
            f"SELECT {COLUMNS} FROM syncs WHERE id = %s AND workspace_id = %s"
            f" AND deleted_at IS NULL{lock}",
            (id, workspace_id),
        )
        return cur.fetchone()


def get_by_id(conn: psycopg.Connection, id: str) -> Sync | None:
    """Including deleted syncs: a worker finishing a run of a sync deleted meanwhile."""
    with conn.cursor(row_factory=class_row(Sync)) as cur:
        cur.execute(f"SELECT {COLUMNS} FROM syncs WHERE id = %s", (id,))
        return cur.fetchone()


def list_page(
    conn: psycopg.Connection, workspace_id: str, *, destination_id: str | None,
    enabled: bool | None, after: str | None, limit: int,
) -> list[Sync]:
    with conn.cursor(row_factory=class_row(Sync)) as cur:
        cur.execute(
            f"SELECT {COLUMNS} FROM syncs WHERE workspace_id = %s AND deleted_at IS NULL"
            " AND (%s::text IS NULL OR destination_id = %s)"
            " AND (%s::boolean IS NULL OR enabled = %s)"
            " AND (%s::text IS NULL OR id < %s)"
            " ORDER BY id DESC LIMIT %s",
            (workspace_id, destination_id, destination_id, enabled, enabled, after, after, limit),
        )
        return cur.fetchall()


def update(conn: psycopg.Connection, id: str, changes: dict[str, Any]) -> Sync:
    """Set `changes` (column names from this module, never user input)."""
    assignments = "".join(f"{column} = %s, " for column in changes)
    with conn.cursor(row_factory=class_row(Sync)) as cur:
        cur.execute(
            f"UPDATE syncs SET {assignments}updated_at = now() WHERE id = %s RETURNING {COLUMNS}",
            [*(_adapt(c, v) for c, v in changes.items()), id],
        )
        return cur.fetchone()


def soft_delete(conn: psycopg.Connection, id: str) -> Sync:
    with conn.cursor(row_factory=class_row(Sync)) as cur:
        cur.execute(
            "UPDATE syncs SET deleted_at = now(), enabled = false, next_run_at = NULL,"
            f" updated_at = now() WHERE id = %s RETURNING {COLUMNS}",
            (id,),
        )
        return cur.fetchone()


def due(conn: psycopg.Connection, now: dt.datetime, limit: int = 500) -> list[Sync]:
    """Enabled, scheduled syncs whose next run time has come, locked against other beats."""
    with conn.cursor(row_factory=class_row(Sync)) as cur:
        cur.execute(
            f"SELECT {COLUMNS} FROM syncs WHERE deleted_at IS NULL AND enabled"
            " AND next_run_at IS NOT NULL AND next_run_at <= %s"
            " ORDER BY next_run_at LIMIT %s FOR UPDATE SKIP LOCKED",
            (now, limit),
        )
        return cur.fetchall()


def set_next_run_at(conn: psycopg.Connection, id: str, next_run_at: dt.datetime | None) -> None:
    """Move a sync's next run time without touching `updated_at`: the scheduler is not an edit."""
    conn.execute("UPDATE syncs SET next_run_at = %s WHERE id = %s", (next_run_at, id))


def forget_snapshot(conn: psycopg.Connection, sync_id: str) -> None:
    """Forget what the sync's destination holds, so the next run sends every record."""
    conn.execute("DELETE FROM sync_snapshots WHERE sync_id = %s", (sync_id,))
