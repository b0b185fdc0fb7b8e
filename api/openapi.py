"""The OpenAPI document, generated from the marshmallow schemas the routes use."""

from __future__ import annotations

from functools import cache
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from api import schemas as s
from api.routes import PREFIX

# (method, path, summary, body schema, query schema, resource type, attributes schema, shape)
# shape: "one", "list" (no paging), "page" (cursor paging), "list|one" for trigger.
ENDPOINTS: list[tuple[str, str, str, Any, Any, str, Any, str]] = [
    ("get", "/syncs", "List syncs", None, s.SyncListQuery, "reverse_etl_sync", s.SyncAttributes, "page"),
    ("post", "/syncs", "Create sync", s.SyncBodySchema, None, "reverse_etl_sync", s.SyncAttributes, "one"),
    ("get", "/syncs/{id}", "Get sync", None, None, "reverse_etl_sync", s.SyncAttributes, "one"),
    ("put", "/syncs/{id}", "Update sync", s.SyncBodySchema, None, "reverse_etl_sync", s.SyncAttributes, "one"),
    ("delete", "/syncs/{id}", "Delete sync", None, None, "reverse_etl_sync", s.DeletedAttributes, "one"),
    ("post", "/syncs/{id}/preview", "Preview a run of a sync (nothing is written)", s.PreviewBodySchema, s.PreviewSampleQuery, "reverse_etl_preview", s.PreviewAttributes, "one"),
    ("post", "/syncs/preview", "Preview an unsaved sync (the create body)", s.SyncBodySchema, s.PreviewSampleQuery, "reverse_etl_preview", s.PreviewAttributes, "one"),
    ("post", "/sync/run", "Trigger sync run", s.TriggerRunSchema, None, "reverse_etl_run", s.RunAttributes, "one"),
    ("post", "/sync/toggle", "Toggle sync", s.ToggleSchema, None, "reverse_etl_sync", s.SyncAttributes, "one"),
    ("get", "/destinations", "List destinations", None, s.ConnectionListQuery, "reverse_etl_destination", s.ConnectionAttributes, "page"),
    ("post", "/destinations", "Create destination", s.ConnectionBodySchema, None, "reverse_etl_destination", s.ConnectionAttributes, "one"),
    ("get", "/destinations/{id}", "Get destination", None, None, "reverse_etl_destination", s.ConnectionAttributes, "one"),
    ("put", "/destinations/{id}", "Update destination", s.ConnectionUpdateSchema, None, "reverse_etl_destination", s.ConnectionAttributes, "one"),
    ("delete", "/destinations/{id}", "Delete destination", None, None, "reverse_etl_destination", s.DeletedAttributes, "one"),
    ("post", "/destinations/{id}/test", "Test destination credentials", None, None, "reverse_etl_destination", s.ConnectionAttributes, "one"),
    ("get", "/sources", "List sources", None, s.ConnectionListQuery, "reverse_etl_source", s.ConnectionAttributes, "page"),
    ("post", "/sources", "Create source", s.ConnectionBodySchema, None, "reverse_etl_source", s.ConnectionAttributes, "one"),
    ("get", "/sources/{id}", "Get source", None, None, "reverse_etl_source", s.ConnectionAttributes, "one"),
    ("put", "/sources/{id}", "Update source", s.ConnectionUpdateSchema, None, "reverse_etl_source", s.ConnectionAttributes, "one"),
    ("delete", "/sources/{id}", "Delete source", None, None, "reverse_etl_source", s.DeletedAttributes, "one"),
    ("post", "/sources/{id}/test", "Test source connection", None, None, "reverse_etl_source", s.ConnectionAttributes, "one"),
    ("get", "/objects", "List destination objects", None, s.ObjectsQuery, "destination_object", s.ObjectAttributes, "list"),
    ("get", "/fields", "List object fields", None, s.FieldsQuery, "destination_field", s.FieldAttributes, "list"),
    ("get", "/runs", "List sync runs", None, s.RunListQuery, "reverse_etl_run", s.RunAttributes, "page"),
    ("get", "/runs/{id}", "Get run", None, None, "reverse_etl_run", s.RunAttributes, "one"),
    ("post", "/runs/{id}/cancel", "Cancel run (a held run: discard its plan)", None, None, "reverse_etl_run", s.RunAttributes, "one"),
    ("post", "/runs/{id}/approve", "Approve a held run: write the plan it kept", None, None, "reverse_etl_run", s.RunAttributes, "one"),
    ("get", "/dlq", "List dead letter queue entries", None, s.DlqListQuery, "reverse_etl_dlq_entry", s.DlqEntryAttributes, "page"),
    ("get", "/dlq/stats", "DLQ statistics", None, s.DlqStatsQuery, "reverse_etl_dlq_stats", s.DlqStatsAttributes, "one"),
    ("post", "/dlq/resolve", "Resolve DLQ entries", s.ResolveSchema, None, "reverse_etl_dlq_resolve", s.DlqResolveAttributes, "one"),
    ("get", "/api-keys", "List API keys", None, None, "api_key", s.ApiKeyAttributes, "list"),
    ("post", "/api-keys", "Create API key", None, None, "api_key", s.ApiKeyAttributes, "one"),
    ("delete", "/api-keys/{id}", "Revoke API key", None, None, "api_key", s.ApiKeyAttributes, "one"),
]

_ERROR = {
    "type": "object",
    "properties": {
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "status": {"type": "string"},
                    "code": {"type": "string"},
                    "title": {"type": "string"},
                    "detail": {"type": "string"},
                    "source": {"type": "object", "properties": {
                        "pointer": {"type": "string"}, "parameter": {"type": "string"}}},
                },
            },
        }
    },
}


def _resource(kind: str, attributes: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "type": {"type": "string", "enum": [kind]},
            "attributes": {"$ref": f"#/components/schemas/{attributes}"},
        },
    }


def _envelope(kind: str, attributes: str, shape: str) -> dict[str, Any]:
    item = _resource(kind, attributes)
    if shape == "one":
        return {"type": "object", "properties": {"data": item}}
    envelope: dict[str, Any] = {"type": "object", "properties": {"data": {"type": "array", "items": item}}}
    if shape == "page":
        envelope["properties"]["meta"] = {
            "type": "object",
            "properties": {"page": {"type": "object", "properties": {
                "limit": {"type": "integer"}, "cursor": {"type": "string", "nullable": True}}}},
        }
    return envelope


@cache
def openapi_document() -> dict[str, Any]:
    spec = APISpec(
        title="retl",
        version="1.0.0",
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
        info={"description": "Reverse ETL: syncs, runs, destinations, sources and the DLQ."},
    )
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    spec.components.schema("Errors", _ERROR)
    registered: set[str] = set()
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, body, query, kind, attributes, shape in ENDPOINTS:
        name = attributes.__name__
        if name not in registered:
            spec.components.schema(name, schema=attributes)
            registered.add(name)
        operation: dict[str, Any] = {
            "summary": summary,
            "security": [{"bearer": []}],
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": _envelope(kind, name, shape)}}},
                "default": {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Errors"}}}},
            },
        }
        if "{id}" in path:
            operation["parameters"] = [{"in": "path", "name": "id", "required": True, "schema": {"type": "string"}}]
        if query is not None:
            operation.setdefault("parameters", []).append({"in": "query", "schema": query})
        if body is not None:
            # A saved sync's preview takes its body (the sample size) only when given.
            required = body is not s.PreviewBodySchema
            operation["requestBody"] = {"required": required, "content": {"application/json": {"schema": body}}}
        paths.setdefault(PREFIX + path, {})[method] = operation
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()
