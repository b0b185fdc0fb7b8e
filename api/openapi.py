"""The OpenAPI document, generated from the marshmallow schemas the routes use."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from api import schemas as s
from api.routes import PREFIX


@dataclass(frozen=True)
class Operation:
    """One documented operation. `shape`: "one", "list" (no paging), "page" (cursor paging),
    "run" for the trigger (one run for syncId, a list for syncIds). `errors`: statuses beyond
    those every operation, its body, its query and its path id already bring (see `_errors`)."""

    method: str
    path: str
    summary: str
    kind: str
    attributes: Any
    shape: str = "one"
    status: int = 200
    body: Any = None
    query: Any = None
    errors: tuple[int, ...] = ()


ENDPOINTS: list[Operation] = [
    Operation("get", "/syncs", "List syncs", "reverse_etl_sync", s.SyncAttributes, "page", query=s.SyncListQuery),
    Operation("post", "/syncs", "Create sync", "reverse_etl_sync", s.SyncAttributes, status=201, body=s.SyncBodySchema),
    Operation("get", "/syncs/{id}", "Get sync", "reverse_etl_sync", s.SyncAttributes, query=s.EmptyQuery),
    Operation("put", "/syncs/{id}", "Update sync (any subset of the create fields)", "reverse_etl_sync",
              s.SyncAttributes, body="SyncUpdate", errors=(409,)),
    Operation("delete", "/syncs/{id}", "Delete sync", "reverse_etl_sync", s.DeletedAttributes),
    Operation("post", "/syncs/{id}/preview", "Preview a run of a sync (nothing is written)",
              "reverse_etl_preview", s.PreviewAttributes, body=s.PreviewBodySchema,
              query=s.PreviewSampleQuery),
    Operation("post", "/syncs/preview", "Preview an unsaved sync (the create body)",
              "reverse_etl_preview", s.PreviewAttributes, body=s.SyncBodySchema,
              query=s.PreviewSampleQuery),
    Operation("post", "/sync/run", "Trigger sync run (one run for syncId, a list for syncIds)", "reverse_etl_run",
              s.RunAttributes, "run", status=202, body=s.TriggerRunSchema, errors=(404,)),
    Operation("post", "/sync/toggle", "Toggle sync", "reverse_etl_sync", s.SyncAttributes, body=s.ToggleSchema,
              errors=(404,)),
    Operation("get", "/destinations", "List destinations", "reverse_etl_destination", s.ConnectionAttributes,
              "page", query=s.ConnectionListQuery),
    Operation("post", "/destinations", "Create destination", "reverse_etl_destination", s.ConnectionAttributes,
              status=201, body=s.ConnectionBodySchema),
    Operation("get", "/destinations/{id}", "Get destination", "reverse_etl_destination", s.ConnectionAttributes),
    Operation("put", "/destinations/{id}", "Update destination", "reverse_etl_destination",
              s.ConnectionAttributes, body=s.ConnectionUpdateSchema),
    Operation("delete", "/destinations/{id}", "Delete destination", "reverse_etl_destination",
              s.DeletedAttributes, errors=(409,)),
    Operation("post", "/destinations/{id}/test", "Test destination credentials", "reverse_etl_destination",
              s.ConnectionAttributes),
    Operation("get", "/sources", "List sources", "reverse_etl_source", s.ConnectionAttributes, "page",
              query=s.ConnectionListQuery),
    Operation("post", "/sources", "Create source", "reverse_etl_source", s.ConnectionAttributes, status=201,
              body=s.ConnectionBodySchema),
    Operation("get", "/sources/{id}", "Get source", "reverse_etl_source", s.ConnectionAttributes),
    Operation("put", "/sources/{id}", "Update source", "reverse_etl_source", s.ConnectionAttributes,
              body=s.ConnectionUpdateSchema),
    Operation("delete", "/sources/{id}", "Delete source", "reverse_etl_source", s.DeletedAttributes,
              errors=(409,)),
    Operation("post", "/sources/{id}/test", "Test source connection", "reverse_etl_source", s.ConnectionAttributes),
    Operation("get", "/objects", "List destination objects", "destination_object", s.ObjectAttributes, "list",
              query=s.ObjectsQuery, errors=(404,)),
    Operation("get", "/fields", "List object fields", "destination_field", s.FieldAttributes, "list",
              query=s.FieldsQuery, errors=(404,)),
    Operation("get", "/runs", "List sync runs", "reverse_etl_run", s.RunAttributes, "page", query=s.RunListQuery),
    Operation("get", "/runs/{id}", "Get run", "reverse_etl_run", s.RunAttributes, query=s.EmptyQuery),
    Operation("post", "/runs/{id}/cancel", "Cancel run (a held run: discard its plan)", "reverse_etl_run",
              s.RunAttributes, status=202, errors=(409,)),
    Operation("post", "/runs/{id}/approve", "Approve a held run: write the plan it kept", "reverse_etl_run",
              s.RunAttributes, status=202, errors=(409,)),
    Operation("get", "/dlq", "List dead letter queue entries", "reverse_etl_dlq_entry", s.DlqEntryAttributes,
              "page", query=s.DlqListQuery),
    Operation("get", "/dlq/stats", "DLQ statistics", "reverse_etl_dlq_stats", s.DlqStatsAttributes,
              query=s.DlqStatsQuery),
    Operation("post", "/dlq/resolve", "Resolve DLQ entries", "reverse_etl_dlq_resolve", s.DlqResolveAttributes,
              body=s.ResolveSchema, errors=(404,)),
    Operation("get", "/alerts", "List alert channels", "reverse_etl_alert_channel",
              s.AlertChannelAttributes, "page", query=s.PageQuery),
    Operation("post", "/alerts", "Create alert channel", "reverse_etl_alert_channel",
              s.AlertChannelAttributes, status=201, body=s.AlertChannelBodySchema),
    Operation("get", "/alerts/{id}", "Get alert channel", "reverse_etl_alert_channel",
              s.AlertChannelAttributes),
    Operation("put", "/alerts/{id}", "Update alert channel", "reverse_etl_alert_channel",
              s.AlertChannelAttributes, body=s.AlertChannelUpdateSchema),
    Operation("delete", "/alerts/{id}", "Delete alert channel", "reverse_etl_alert_channel",
              s.DeletedAttributes),
    Operation("post", "/alerts/{id}/test", "Send a test alert", "reverse_etl_alert_channel",
              s.AlertChannelAttributes),
    Operation("get", "/api-keys", "List API keys", "api_key", s.ApiKeyAttributes, "list"),
    Operation("post", "/api-keys", "Create API key", "api_key", s.ApiKeyAttributes, status=201,
              body=s.ApiKeyBodySchema),
    Operation("delete", "/api-keys/{id}", "Revoke API key", "api_key", s.ApiKeyAttributes),
]

_DESCRIPTIONS = {
    200: "OK", 201: "Created", 202: "Accepted",
    400: "The body is not a JSON object",
    401: "No valid API key",
    404: "No such object in the caller's workspace",
    409: "The object's state does not allow it",
    413: "The body is over the size limit",
    422: "A field or parameter is invalid",
    503: "The database or the connected system cannot be reached; try again",
}


def _errors(operation: Operation) -> list[int]:
    """Every error status the server can answer for `operation`."""
    statuses = {401, 413, 503, *operation.errors}  # 413: any request that declares a large body
    if operation.body is not None:
        statuses |= {400, 422}
    if operation.query is not None:
        statuses.add(422)
    if "{id}" in operation.path:
        statuses.add(404)
    return sorted(statuses)

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
    if shape == "run":
        return {"oneOf": [_envelope(kind, attributes, "one"), _envelope(kind, attributes, "list")]}
    if shape == "one":
        return {"type": "object", "required": ["data"], "properties": {"data": item}}
    envelope: dict[str, Any] = {
        "type": "object", "required": ["data"], "properties": {"data": {"type": "array", "items": item}},
    }
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
    spec.components.schema("SyncUpdate", schema=s.SyncBodySchema(partial=True))
    registered: set[str] = set()
    paths: dict[str, dict[str, Any]] = {}
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Errors"}}}
    for op in ENDPOINTS:
        name = op.attributes.__name__
        if name not in registered:
            spec.components.schema(name, schema=op.attributes)
            registered.add(name)
        responses: dict[str, Any] = {str(op.status): {
            "description": _DESCRIPTIONS[op.status],
            "content": {"application/json": {"schema": _envelope(op.kind, name, op.shape)}},
        }}
        for status in _errors(op):
            responses[str(status)] = {"description": _DESCRIPTIONS[status], "content": error}
        operation: dict[str, Any] = {"summary": op.summary, "security": [{"bearer": []}], "responses": responses}
        if "{id}" in op.path:
            operation["parameters"] = [{"in": "path", "name": "id", "required": True, "schema": {"type": "string"}}]
        if op.query is not None:
            operation.setdefault("parameters", []).append({"in": "query", "schema": op.query})
        if op.body is not None:
            body = {"$ref": f"#/components/schemas/{op.body}"} if isinstance(op.body, str) else op.body
            # A saved sync's preview takes its body (the sample size) only when given.
            required = op.body is not s.PreviewBodySchema
            operation["requestBody"] = {"required": required, "content": {"application/json": {"schema": body}}}
        paths.setdefault(PREFIX + op.path, {})[op.method] = operation
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()
