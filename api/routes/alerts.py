"""Alert channels: list, create, get, update, delete, and send a test alert."""

from __future__ import annotations

import datetime as dt

from flask import Blueprint

from api import schemas
from api.auth import require_workspace, workspace_id
from api.http import body, one, paged, query
from api.routes import PREFIX
from shared.services import alerts

bp = Blueprint("alerts", __name__, url_prefix=PREFIX)
require_workspace(bp)

ALERT = "reverse_etl_alert_channel"
_attributes = schemas.AlertChannelAttributes()


def _dump(view: alerts.ChannelView) -> dict:
    return {
        **view.record.__dict__,
        "config": view.config,
        "secrets_set": view.secrets_set,
        "dlq_threshold": view.dlq_threshold,
    }


@bp.get("/alerts")
def list_channels():
    args = query(schemas.PageQuery)
    page = alerts.list_page(workspace_id(), cursor=args.get("cursor"), limit=args["limit"])
    page.items = [_dump(v) for v in page.items]
    return paged(ALERT, _attributes, page, id_of=lambda v: v["id"])


@bp.post("/alerts")
def create_channel():
    view = alerts.create(workspace_id(), body(schemas.AlertChannelBodySchema))
    return one(ALERT, view.record.id, _attributes, _dump(view), 201)


@bp.get("/alerts/<channel_id>")
def get_channel(channel_id: str):
    view = alerts.get(workspace_id(), channel_id)
    return one(ALERT, view.record.id, _attributes, _dump(view))


@bp.put("/alerts/<channel_id>")
def update_channel(channel_id: str):
    view = alerts.update(workspace_id(), channel_id, body(schemas.AlertChannelUpdateSchema))
    return one(ALERT, view.record.id, _attributes, _dump(view))


@bp.delete("/alerts/<channel_id>")
def delete_channel(channel_id: str):
    record = alerts.delete(workspace_id(), channel_id)
    return one(ALERT, record.id, schemas.DeletedAttributes(),
               {"deleted": True, "deleted_at": dt.datetime.now(dt.UTC)})


@bp.post("/alerts/<channel_id>/test")
def test_channel(channel_id: str):
    view = alerts.send_test(workspace_id(), channel_id)
    return one(ALERT, view.record.id, _attributes, _dump(view))
