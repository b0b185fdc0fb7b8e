"""Workspaces and their API keys (only a hash of each key is stored)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import psycopg
from psycopg.rows import class_row

from shared import ids


@dataclass
class Workspace:
    id: str
    name: str
    created_at: dt.datetime


@dataclass
class ApiKey:
    id: str
    workspace_id: str
    display_hint: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None


def get_or_create_workspace(conn: psycopg.Connection, name: str) -> Workspace:
    conn.execute(
        "INSERT INTO workspaces (id, name) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
        (ids.new_id(ids.WORKSPACE), name),
    )
    with conn.cursor(row_factory=class_row(Workspace)) as cur:
        cur.execute("SELECT id, name, created_at FROM workspaces WHERE name = %s", (name,))
        return cur.fetchone()


def get_workspace(conn: psycopg.Connection, workspace_id: str) -> Workspace:
    with conn.cursor(row_factory=class_row(Workspace)) as cur:
        cur.execute("SELECT id, name, created_at FROM workspaces WHERE id = %s", (workspace_id,))
        return cur.fetchone()


def insert_api_key(
    conn: psycopg.Connection, workspace_id: str, key_hash: str, display_hint: str
) -> ApiKey:
    with conn.cursor(row_factory=class_row(ApiKey)) as cur:
        cur.execute(
            "INSERT INTO api_keys (id, workspace_id, key_hash, display_hint) VALUES (%s, %s, %s, %s)"
            " RETURNING id, workspace_id, display_hint, created_at, revoked_at",
            (ids.new_id(ids.API_KEY), workspace_id, key_hash, display_hint),
        )
        return cur.fetchone()


def workspace_for_key_hash(conn: psycopg.Connection, key_hash: str) -> tuple[str, int] | None:
    """The workspace of a live key and its syncs_version (see migration 0024), or None."""
    return conn.execute(
        "SELECT k.workspace_id, w.syncs_version FROM api_keys k"
        " JOIN workspaces w ON w.id = k.workspace_id"
        " WHERE k.key_hash = %s AND k.revoked_at IS NULL",
        (key_hash,),
    ).fetchone()


def lock_for_sync_changes(conn: psycopg.Connection, workspace_ids: list[str]) -> None:
    """Take, in id order, the row locks the syncs_version trigger (migration 0024) takes when
    a statement changes these workspaces' syncs. A transaction that changes syncs of several
    workspaces one statement at a time would otherwise take them in its own order, and two such
    transactions (two beats) could each wait for the other. FOR NO KEY UPDATE, as the trigger's
    UPDATE: inserts of runs and other rows that refer to a workspace are not held up."""
    conn.execute(
        "SELECT 1 FROM workspaces WHERE id = ANY(%s) ORDER BY id FOR NO KEY UPDATE",
        (workspace_ids,),
    )


def list_api_keys(conn: psycopg.Connection, workspace_id: str) -> list[ApiKey]:
    with conn.cursor(row_factory=class_row(ApiKey)) as cur:
        cur.execute(
            "SELECT id, workspace_id, display_hint, created_at, revoked_at FROM api_keys"
            " WHERE workspace_id = %s ORDER BY id DESC",
            (workspace_id,),
        )
        return cur.fetchall()


def revoke_api_key(conn: psycopg.Connection, workspace_id: str, key_id: str) -> ApiKey | None:
    with conn.cursor(row_factory=class_row(ApiKey)) as cur:
        cur.execute(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())"
            " WHERE id = %s AND workspace_id = %s"
            " RETURNING id, workspace_id, display_hint, created_at, revoked_at",
            (key_id, workspace_id),
        )
        return cur.fetchone()
