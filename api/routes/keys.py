"""API keys of the calling workspace: list, create (the key is shown once), revoke."""

from __future__ import annotations

from flask import Blueprint

from api import schemas
from api.auth import require_workspace, workspace_id
from api.http import body, many, one
from api.routes import PREFIX
from shared.services import auth

bp = Blueprint("api_keys", __name__, url_prefix=PREFIX)
require_workspace(bp)

KEY = "api_key"
_attributes = schemas.ApiKeyAttributes()


@bp.get("/api-keys")
def list_keys():
    return many(KEY, _attributes, auth.list_api_keys(workspace_id()))


@bp.post("/api-keys")
def create_key():
    body(schemas.ApiKeyBodySchema)
    issued = auth.create_api_key_in(workspace_id())
    return one(KEY, issued.key_id, _attributes, issued, 201)


@bp.delete("/api-keys/<key_id>")
def revoke_key(key_id: str):
    key = auth.revoke_api_key(workspace_id(), key_id)
    return one(KEY, key.id, _attributes, key)
