"""Sources and destinations (table `connections`); configs are stored encrypted."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import class_row

COLUMNS = (
    "id, workspace_id, kind, name, connector, config_encrypted, status, status_message,"
    " checked_at, created_at, updated_at"
)


@dataclass
class Connection:
    id: str
    workspace_id: str
    kind: str
    name: str
    connector: str
    config_encrypted: str
    status: str
    status_message: str | None
    checked_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime


def insert(
    conn: psycopg.Connection, *, id: str, workspace_id: str, kind: str, name: str,
    connector: str, config_encrypted: str,
) -> Connection:
    with conn.cursor(row_factory=class_row(Connection)) as cur:
        cur.execute(
            "INSERT INTO connections (id, workspace_id, kind, name, connector, config_encrypted)"
            f" VALUES (%s, %s, %s, %s, %s, %s) RETURNING {COLUMNS}",
            (id, workspace_id, kind, name, connector, config_encrypted),
        )
        return cur.fetchone()


def get(conn: psycopg.Connection, workspace_id: str, kind: str, id: str) -> Connection | None:
    with conn.cursor(row_factory=class_row(Connection)) as cur:
        cur.execute(
            f"SELECT {COLUMNS} FROM connections WHERE id = %s AND workspace_id = %s AND kind = %s",
            (id, workspace_id, kind),
        )
        return cur.fetchone()


def get_by_id(conn: psycopg.Connection, id: str) -> Connection | None:
    """For workers, which act on ids they were given by a workspace-checked service."""
    with conn.cursor(row_factory=class_row(Connection)) as cur:
        cur.execute(f"SELECT {COLUMNS} FROM connections WHERE id = %s", (id,))
        return cur.fetchone()


def list_page(
    conn: psycopg.Connection, workspace_id: str, kind: str, *, connector: str | None,
    after: str | None, limit: int,
) -> list[Connection]:
    """Newest first; `after` is the last id of the previous page."""
    with conn.cursor(row_factory=class_row(Connection)) as cur:
        cur.execute(
            f"SELECT {COLUMNS} FROM connections WHERE workspace_id = %s AND kind = %s"
            " AND (%s::text IS NULL OR connector = %s)"
            " AND (%s::text IS NULL OR id < %s)"
            " ORDER BY id DESC LIMIT %s",
            (workspace_id, kind, connector, connector, after, after, limit),
        )
        return cur.fetchall()


def first_source(conn: psycopg.Connection, workspace_id: str) -> Connection | None:
    with conn.cursor(row_factory=class_row(Connection)) as cur:
        cur.execute(
            f"SELECT {COLUMNS} FROM connections WHERE workspace_id = %s AND kind = 'source'"
            " ORDER BY id LIMIT 1",
            (workspace_id,),
        )
        return cur.fetchone()


def update(conn: psycopg.Connection, id: str, changes: dict[str, Any]) -> Connection:
    """Set `changes` (column → value; columns are names from this module, never user input)."""
    assignments = ", ".join(f"{column} = %s" for column in changes)
    with conn.cursor(row_factory=class_row(Connection)) as cur:
        cur.execute(
            f"UPDATE connections SET {assignments}, updated_at = now() WHERE id = %s"
            f" RETURNING {COLUMNS}",
            (*changes.values(), id),
        )
        return cur.fetchone()


def set_status(conn: psycopg.Connection, id: str, status: str, message: str | None) -> None:
    conn.execute(
        "UPDATE connections SET status = %s, status_message = %s, checked_at = now() WHERE id = %s",
        (status, message, id),
    )


def is_used_by_syncs(conn: psycopg.Connection, id: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM syncs WHERE (source_id = %s OR destination_id = %s) AND deleted_at IS NULL"
        " LIMIT 1",
        (id, id),
    ).fetchone()
    return row is not None


def delete(conn: psycopg.Connection, id: str) -> None:
    conn.execute("DELETE FROM connections WHERE id = %s", (id,))
