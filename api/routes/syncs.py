"""Sync definitions: list, create, get, update, delete, toggle, and trigger runs."""

from __future__ import annotations

from flask import Blueprint, request

from api import schemas
from api.answers import sync_read
from api.auth import require_workspace, workspace_id
from api.http import body, many, one, paged, query
from api.routes import PREFIX
from shared.services import runs, syncs
from worker import preview

bp = Blueprint("syncs", __name__, url_prefix=PREFIX)
require_workspace(bp)

SYNC = "reverse_etl_sync"
RUN = "reverse_etl_run"
PREVIEW = "reverse_etl_preview"
_attributes = schemas.SyncAttributes()
_run_attributes = schemas.RunAttributes()
_preview_attributes = schemas.PreviewAttributes()


@bp.get("/syncs")
def list_syncs():
    args = query(schemas.SyncListQuery)
    return sync_read(lambda: paged(SYNC, _attributes, syncs.list_page(
        workspace_id(), destination_id=args.get("destination_id"), enabled=args.get("enabled"),
        cursor=args.get("cursor"), limit=args["limit"],
    )))


@bp.post("/syncs")
def create_sync():
    sync = syncs.create(workspace_id(), body(schemas.SyncBodySchema))
    return one(SYNC, sync.id, _attributes, sync, 201)


@bp.get("/syncs/<sync_id:sync_id>")
def get_sync(sync_id: str):
    query(schemas.EmptyQuery)
    return sync_read(lambda: one(SYNC, sync_id, _attributes, syncs.get(workspace_id(), sync_id)))


@bp.put("/syncs/<sync_id:sync_id>")
def update_sync(sync_id: str):
    # Partial at the top level only: a mapping that is sent must still be whole.
    top_level = tuple(schemas.SyncBodySchema().fields)
    sync = syncs.update(workspace_id(), sync_id, body(schemas.SyncBodySchema, partial=top_level))
    return one(SYNC, sync.id, _attributes, sync)


@bp.delete("/syncs/<sync_id:sync_id>")
def delete_sync(sync_id: str):
    sync = syncs.delete(workspace_id(), sync_id)
    deleted = {"deleted": True, "deleted_at": sync.deleted_at}
    return one(SYNC, sync.id, schemas.DeletedAttributes(), deleted)


@bp.post("/syncs/preview")
def preview_draft():
    """A sync not saved yet (the create body); `sample` in the query string."""
    sample = query(schemas.PreviewSampleQuery)["sample"]
    planned = preview.preview_draft(workspace_id(), body(schemas.SyncBodySchema), sample)
    return one(PREVIEW, None, _preview_attributes, planned)


@bp.post("/syncs/<sync_id:sync_id>/preview")
def preview_sync(sync_id: str):
    """`sample` in the query string or the (optional) body."""
    sample = query(schemas.PreviewSampleQuery)["sample"]
    if request.get_data(cache=True).strip():
        sample = body(schemas.PreviewBodySchema).get("sample", sample)
    planned = preview.preview_sync(workspace_id(), sync_id, sample)
    return one(PREVIEW, None, _preview_attributes, planned)


@bp.post("/sync/run")
def trigger_run():
    args = body(schemas.TriggerRunSchema)
    single = "syncId" in args
    queued = runs.trigger(
        workspace_id(), [args["syncId"]] if single else args["syncIds"], full_refresh=args["fullRefresh"]
    )
    if single:
        return one(RUN, queued[0].id, _run_attributes, queued[0], 202)
    return many(RUN, _run_attributes, queued), 202


@bp.post("/sync/toggle")
def toggle_sync():
    args = body(schemas.ToggleSchema)
    sync = syncs.toggle(workspace_id(), args["syncId"], args["enabled"])
    return one(SYNC, sync.id, _attributes, sync)
