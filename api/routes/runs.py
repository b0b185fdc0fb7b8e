"""Runs: list, get, cancel, approve a held run."""

from __future__ import annotations

from flask import Blueprint

from api import schemas
from api.auth import require_workspace, workspace_id
from api.http import one, paged, query
from api.routes import PREFIX
from shared.services import runs

bp = Blueprint("runs", __name__, url_prefix=PREFIX)
require_workspace(bp)

RUN = "reverse_etl_run"
_attributes = schemas.RunAttributes()


@bp.get("/runs")
def list_runs():
    args = query(schemas.RunListQuery)
    page = runs.list_page(
        workspace_id(), sync_id=args.get("sync_id"), status=args.get("status"),
        cursor=args.get("cursor"), limit=args["limit"],
    )
    return paged(RUN, _attributes, page)


@bp.get("/runs/<run_id>")
def get_run(run_id: str):
    query(schemas.EmptyQuery)
    run = runs.get(workspace_id(), run_id)
    return one(RUN, run.id, _attributes, run)


@bp.post("/runs/<run_id>/cancel")
def cancel_run(run_id: str):
    run = runs.cancel(workspace_id(), run_id)
    return one(RUN, run.id, _attributes, run, 202)


@bp.post("/runs/<run_id>/approve")
def approve_run(run_id: str):
    run = runs.approve(workspace_id(), run_id)
    return one(RUN, run.id, _attributes, run, 202)
