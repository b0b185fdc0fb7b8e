"""Sync definitions: the rules a sync must satisfy, and its lifecycle through the API."""

from __future__ import annotations

import datetime as dt
from typing import Any

from connectors import registry
from shared import ids, schedules
from shared.db import read, transaction
from shared.errors import Conflict, Invalid, NotFound
from shared.pagination import Page, decode_cursor, page_of
from shared.repositories import connections, dlq, runs, syncs
from shared.services.connections import open_connector
from shared.settings import get_settings

MODES = ("upsert", "insert", "update", "delete", "mirror")
MODES_NEEDING_KEY = frozenset({"upsert", "update", "delete", "mirror"})

# API body field → column.
_COLUMNS = {
    "name": "name",
    "sourceQuery": "source_query",
    "destinationId": "destination_id",
    "sourceId": "source_id",
    "objectName": "object_name",
    "fieldMappings": "field_mappings",
    "syncMode": "sync_mode",
    "schedule": "schedule",
    "enabled": "enabled",
    "guard": "guard",
}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def next_run_at(schedule: dict[str, Any], enabled: bool, after: dt.datetime | None = None) -> dt.datetime | None:
    if not enabled:
        return None
    return schedules.next_fire(schedule, after or _now())


def _check(conn: Any, workspace_id: str, values: dict[str, Any]) -> None:
    """Rules that need the database or a connector: the body schema checked the rest."""
    destination = connections.get(conn, workspace_id, "destination", values["destination_id"])
    if destination is None:
        raise Invalid(f"no destination {values['destination_id']}", pointer="/destinationId")
    if connections.get(conn, workspace_id, "source", values["source_id"]) is None:
        raise Invalid(f"no source {values['source_id']}", pointer="/sourceId")
    cls = registry.destination_class(destination.connector)
    modes = cls.supported_modes_for(values["object_name"])
    if values["sync_mode"] not in modes:
        raise Invalid(
            f"{destination.connector} {values['object_name']} does not support sync mode"
            f" {values['sync_mode']!r}; it supports {', '.join(sorted(modes))}",
            pointer="/syncMode",
        )
    keys = [m for m in values["field_mappings"] if m.get("key")]
    if values["sync_mode"] in MODES_NEEDING_KEY and len(keys) != 1:
        raise Invalid(
            f"sync mode {values['sync_mode']} needs exactly one key mapping (\"key\": true)",
            pointer="/fieldMappings",
        )
    try:
        values["schedule"] = schedules.validate(values["schedule"], get_settings().min_schedule_interval_s)
    except schedules.ScheduleError as exc:
        raise Invalid(str(exc), pointer=f"/schedule/{exc.field}") from None


def _check_destination_fields(workspace_id: str, values: dict[str, Any]) -> None:
    """Refuse a mapping to a field the destination's discovery does not list (422 pointing at
    the mapping). Accepted unchecked when the destination lists no fields, creates fields on
    first write, or cannot be asked now (unreachable, credentials refused): the run reports
    what the destination then says."""
    with transaction() as conn:
        record = connections.get(conn, workspace_id, "destination", values.get("destination_id", ""))
    if record is None or registry.destination_class(record.connector).accepts_new_fields:
        return
    try:
        destination = open_connector(record)
        try:
            known = {f.name for f in destination.list_fields(values["object_name"])}
        finally:
            destination.close()
    except Exception:  # discovery failed: nothing to check against
        return
    if not known:
        return
    for index, mapping in enumerate(values["field_mappings"]):
        if mapping["destination"] not in known:
            raise Invalid(
                f"{record.connector} {values['object_name']} has no field"
                f" {mapping['destination']!r} (GET /api/reverse-etl/fields lists its fields)",
                pointer=f"/fieldMappings/{index}/destination",
            )


def _default_source_id(conn: Any, workspace_id: str) -> str:
    source = connections.first_source(conn, workspace_id)
    if source is None:
        raise Invalid(
            "the workspace has no source yet: create one (POST /api/reverse-etl/sources)"
            " or pass sourceId",
            pointer="/sourceId",
        )
    return source.id


def create(workspace_id: str, body: dict[str, Any]) -> syncs.Sync:
    values = {_COLUMNS[k]: v for k, v in body.items() if k in _COLUMNS}
    values.setdefault("schedule", {"type": "manual"})
    values.setdefault("enabled", True)
    _check_destination_fields(workspace_id, values)
    with transaction() as conn:
        if not values.get("source_id"):
            values["source_id"] = _default_source_id(conn, workspace_id)
        _check(conn, workspace_id, values)
        values["next_run_at"] = next_run_at(values["schedule"], values["enabled"])
        return syncs.insert(conn, {"id": ids.new_id(ids.SYNC), "workspace_id": workspace_id, **values})


def draft(workspace_id: str, body: dict[str, Any]) -> syncs.Sync:
    """The sync a create body describes, checked as `create` checks it, but not saved (for a
    preview): it has an id of its own, and no snapshot."""
    values = {_COLUMNS[k]: v for k, v in body.items() if k in _COLUMNS}
    values.setdefault("schedule", {"type": "manual"})
    values.setdefault("enabled", True)
    values.setdefault("guard", None)
    with transaction() as conn:
        if not values.get("source_id"):
            values["source_id"] = _default_source_id(conn, workspace_id)
        _check(conn, workspace_id, values)
    now = _now()
    return syncs.Sync(
        id=ids.new_id(ids.SYNC), workspace_id=workspace_id, next_run_at=None, created_at=now,
        updated_at=now, deleted_at=None, **values,
    )


def get(workspace_id: str, sync_id: str) -> syncs.Sync:
    with read() as conn:
        sync = syncs.get(conn, workspace_id, sync_id)
    if sync is None:
        raise NotFound(f"no sync {sync_id}")
    return sync


def list_page(
    workspace_id: str, *, destination_id: str | None, enabled: bool | None, cursor: str | None, limit: int
) -> Page[syncs.Sync]:
    after = decode_cursor(cursor)
    with read() as conn:
        rows = syncs.list_page(
            conn, workspace_id, destination_id=destination_id, enabled=enabled, after=after, limit=limit + 1
        )
    return page_of(rows, limit)


def update(workspace_id: str, sync_id: str, body: dict[str, Any]) -> syncs.Sync:
    """Partial update: the fields given replace the stored ones; the result is checked whole."""
    if body.keys() & {"fieldMappings", "objectName", "destinationId"}:
        stored = get(workspace_id, sync_id)
        changes = {_COLUMNS[k]: v for k, v in body.items() if k in _COLUMNS}
        _check_destination_fields(workspace_id, {**stored.__dict__, **changes})
    with transaction() as conn:
        sync = syncs.get(conn, workspace_id, sync_id, for_update=True)
        if sync is None:
            raise NotFound(f"no sync {sync_id}")
        changes = {_COLUMNS[k]: v for k, v in body.items() if k in _COLUMNS}
        if "source_id" in changes and not changes["source_id"]:
            changes["source_id"] = _default_source_id(conn, workspace_id)
        merged = {**sync.__dict__, **changes}
        _check(conn, workspace_id, merged)
        if "schedule" in changes:
            changes["schedule"] = merged["schedule"]
        if merged["destination_id"] != sync.destination_id:
            if runs.active_for_sync(conn, sync_id):
                raise Conflict(
                    "the sync has a queued or running run: cancel it or wait for it to end"
                    " before moving the sync to another destination",
                    pointer="/destinationId",
                )
            # The new destination holds none of what the old one was sent.
            syncs.forget_snapshot(conn, sync_id)
        if sync.enabled and not merged["enabled"]:
            # Paused: a scheduled run still waiting in the queue no longer runs.
            runs.cancel_queued_for_sync(conn, sync_id, trigger="schedule")
        # Only a real change of schedule or state moves the next run: re-sending the same
        # values must not delay a due (or overdue) sync.
        if (merged["schedule"], merged["enabled"]) != (sync.schedule, sync.enabled):
            changes["next_run_at"] = next_run_at(merged["schedule"], merged["enabled"])
        return syncs.update(conn, sync_id, changes) if changes else sync


def toggle(workspace_id: str, sync_id: str, enabled: bool) -> syncs.Sync:
    return update(workspace_id, sync_id, {"enabled": enabled})


def delete(workspace_id: str, sync_id: str) -> syncs.Sync:
    with transaction() as conn:
        sync = syncs.get(conn, workspace_id, sync_id, for_update=True)
        if sync is None:
            raise NotFound(f"no sync {sync_id}")
        # Queued runs of a deleted sync are cancelled; a running one finishes what it started.
        runs.cancel_queued_for_sync(conn, sync_id)
        # Nobody will fix or replay a deleted sync's records: its entries leave the open counts.
        dlq.resolve_open_for_sync(conn, sync_id, "sync_deleted")
        return syncs.soft_delete(conn, sync_id)
