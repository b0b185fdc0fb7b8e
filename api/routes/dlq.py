"""The dead-letter queue: list entries, stats, resolve (and replay)."""

from __future__ import annotations

from flask import Blueprint

from api import schemas
from api.auth import require_workspace, workspace_id
from api.http import body, one, paged, query
from api.routes import PREFIX
from shared.services import dlq

bp = Blueprint("dlq", __name__, url_prefix=PREFIX)
require_workspace(bp)

_attributes = schemas.DlqEntryAttributes()


@bp.get("/dlq")
def list_entries():
    args = query(schemas.DlqListQuery)
    page = dlq.list_page(
        workspace_id(), sync_id=args.get("sync_id"), resolved=args["resolved"],
        cursor=args.get("cursor"), limit=args["limit"],
    )
    return paged("reverse_etl_dlq_entry", _attributes, page)


@bp.get("/dlq/stats")
def stats():
    args = query(schemas.DlqStatsQuery)
    result = dlq.stats(workspace_id(), sync_id=args.get("sync_id"), since=args.get("since"))
    return one("reverse_etl_dlq_stats", None, schemas.DlqStatsAttributes(), result)


@bp.post("/dlq/resolve")
def resolve():
    args = body(schemas.ResolveSchema)
    matching = args.get("filter", {})
    result = dlq.resolve(
        workspace_id(), args.get("entryIds"), args["resolution"], args["replay"],
        sync_id=matching.get("syncId"), error_code=matching.get("errorCode"),
    )
    return one("reverse_etl_dlq_resolve", None, schemas.DlqResolveAttributes(), result)
