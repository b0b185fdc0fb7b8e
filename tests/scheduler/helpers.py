"""Helpers for scheduler tests: read runs back from Postgres, move a sync's clock by hand, and
play the worker's part in a run's life."""

from __future__ import annotations

import datetime as dt

import psycopg

from shared.db import transaction
from shared.repositories import runs, syncs


def utc(*parts: int) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=dt.UTC)


def set_next_run_at(sync_id: str, at: dt.datetime | None) -> None:
    with transaction() as conn:
        syncs.set_next_run_at(conn, sync_id, at)


def load_sync(sync_id: str) -> syncs.Sync:
    with transaction() as conn:
        return syncs.get_by_id(conn, sync_id)


def runs_of(sync_id: str) -> list[runs.Run]:
    """The sync's runs, oldest first."""
    with transaction() as conn:
        found = runs.list_page(
            conn, load_sync(sync_id).workspace_id, sync_id=sync_id, status=None, after=None,
            limit=1000,
        )
    return sorted(found, key=lambda run: (run.created_at, run.id))


def set_run_status(run_id: str, status: str) -> None:
    """Play the worker's part: a run starts or ends (the engine is not under test here)."""
    with transaction() as conn:
        conn.execute(
            "UPDATE runs SET status = %s, started_at = coalesce(started_at, now()),"
            " finished_at = CASE WHEN %s IN ('succeeded', 'failed', 'cancelled') THEN now() END"
            " WHERE id = %s",
            (status, status, run_id),
        )


def finish_all_runs(sync_id: str) -> None:
    for run in runs_of(sync_id):
        if run.status in runs.ACTIVE:
            set_run_status(run.id, "succeeded")


def lock_sync_row(database_url: str, sync_id: str) -> psycopg.Connection:
    """A connection whose open transaction holds the sync's row, as a beat mid-tick does."""
    conn = psycopg.connect(database_url)
    conn.execute("SELECT id FROM syncs WHERE id = %s FOR UPDATE", (sync_id,))
    return conn
