"""Scheduler fixtures: a workspace with a source and an HTTP destination, and syncs on any
schedule with their next run time placed where the test wants it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from shared.db import transaction
from shared.repositories import syncs, workspaces
from shared.services import connections
from shared.services import syncs as sync_service
from tests.scheduler.helpers import load_sync, set_next_run_at


@pytest.fixture
def workspace_id() -> str:
    with transaction() as conn:
        return workspaces.get_or_create_workspace(conn, "acme").id


@pytest.fixture
def make_sync(workspace_id: str) -> Callable[..., syncs.Sync]:
    """A sync on `schedule`; with `next_run_at`, its next run time is set to that instant."""
    source = connections.create(workspace_id, "source", "warehouse", "duckdb", {"path": ":memory:"})
    destination = connections.create(
        workspace_id, "destination", "hook", "http", {"url": "http://127.0.0.1:9/x"}
    )

    def make(
        schedule: dict[str, Any], *, next_run_at: dt.datetime | None = None, name: str = "people"
    ) -> syncs.Sync:
        sync = sync_service.create(workspace_id, {
            "name": name,
            "sourceId": source.record.id,
            "destinationId": destination.record.id,
            "sourceQuery": "SELECT 1 AS id",
            "objectName": "people",
            "fieldMappings": [{"source": "id", "destination": "id", "key": True}],
            "syncMode": "upsert",
            "schedule": schedule,
        })
        if next_run_at is not None:
            set_next_run_at(sync.id, next_run_at)
        return load_sync(sync.id)

    return make
