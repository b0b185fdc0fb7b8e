"""Destinations and sources (the same routes for both), and destination discovery."""

from __future__ import annotations

import datetime as dt

from flask import Blueprint

from api import schemas
from api.auth import require_workspace, workspace_id
from api.http import body, many, one, paged, query
from api.routes import PREFIX
from shared.services import connections

_attributes = schemas.ConnectionAttributes()


def _dump(view: connections.ConnectionView) -> dict:
    record = view.record
    return {
        **record.__dict__,
        "config": view.config,
        "secrets_set": view.secrets_set,
        "objects_discoverable": view.objects_discoverable,
    }


def connection_blueprint(kind: str, plural: str, resource_type: str) -> Blueprint:
    bp = Blueprint(plural, __name__, url_prefix=PREFIX)
    require_workspace(bp)

    @bp.get(f"/{plural}", endpoint="list")
    def list_connections():
        args = query(schemas.ConnectionListQuery)
        page = connections.list_page(
            workspace_id(), kind, connector=args.get("connector"), cursor=args.get("cursor"),
            limit=args["limit"],
        )
        page.items = [_dump(v) for v in page.items]
        return paged(resource_type, _attributes, page, id_of=lambda v: v["id"])

    @bp.post(f"/{plural}", endpoint="create")
    def create_connection():
        args = body(schemas.ConnectionBodySchema)
        view = connections.create(workspace_id(), kind, args["name"], args["connector"], args["config"])
        return one(resource_type, view.record.id, _attributes, _dump(view), 201)

    @bp.get(f"/{plural}/<connection_id>", endpoint="get")
    def get_connection(connection_id: str):
        view = connections.get(workspace_id(), kind, connection_id)
        return one(resource_type, view.record.id, _attributes, _dump(view))

    @bp.put(f"/{plural}/<connection_id>", endpoint="update")
    def update_connection(connection_id: str):
        view = connections.update(workspace_id(), kind, connection_id, body(schemas.ConnectionUpdateSchema))
        return one(resource_type, view.record.id, _attributes, _dump(view))

    @bp.delete(f"/{plural}/<connection_id>", endpoint="delete")
    def delete_connection(connection_id: str):
        record = connections.delete(workspace_id(), kind, connection_id)
        return one(resource_type, record.id, schemas.DeletedAttributes(),
                   {"deleted": True, "deleted_at": dt.datetime.now(dt.UTC)})

    @bp.post(f"/{plural}/<connection_id>/test", endpoint="test")
    def test_connection(connection_id: str):
        view = connections.test(workspace_id(), kind, connection_id)
        return one(resource_type, view.record.id, _attributes, _dump(view))

    return bp


destinations_bp = connection_blueprint("destination", "destinations", "reverse_etl_destination")
sources_bp = connection_blueprint("source", "sources", "reverse_etl_source")

discovery_bp = Blueprint("discovery", __name__, url_prefix=PREFIX)
require_workspace(discovery_bp)


@discovery_bp.get("/objects")
def list_objects():
    args = query(schemas.ObjectsQuery)
    objects = connections.list_objects(workspace_id(), args["destination_id"], args.get("search"))
    return many("destination_object", schemas.ObjectAttributes(), objects, id_of=lambda o: o.api_name)


@discovery_bp.get("/fields")
def list_fields():
    args = query(schemas.FieldsQuery)
    found = connections.list_fields(workspace_id(), args["destination_id"], args["object_name"])
    return many("destination_field", schemas.FieldAttributes(), found, id_of=lambda f: f.name)
