"""Request parsing and response envelopes shared by every route."""

from __future__ import annotations

from typing import Any

from flask import jsonify, request
from marshmallow import Schema, ValidationError

from shared.errors import ServiceError
from shared.pagination import Page


class BadRequest(ServiceError):
    status = 400
    code = "malformed_body"


class InvalidInput(Exception):
    """Marshmallow's messages for one request part, turned into error objects by api.errors."""

    def __init__(self, messages: Any, location: str) -> None:
        super().__init__("invalid input")
        self.messages = messages
        self.location = location


def body(schema: type[Schema], *, partial: bool = False) -> dict[str, Any]:
    """The JSON body, validated; 400 when it is not a JSON object, 422 when a field is wrong."""
    payload = request.get_json(silent=True, force=True)
    if payload is None:
        raise BadRequest("the body must be a JSON object (Content-Type: application/json)", pointer="")
    if not isinstance(payload, dict):
        raise BadRequest("the body must be a JSON object, not a list or a value", pointer="")
    try:
        return schema().load(payload, partial=partial)
    except ValidationError as exc:
        raise InvalidInput(exc.messages, "body") from None


def query(schema: type[Schema]) -> dict[str, Any]:
    """The query string, validated; a parameter given twice counts as wrong."""
    raw: dict[str, Any] = {}
    for name, values in request.args.lists():
        raw[name] = values[0] if len(values) == 1 else values
    try:
        return schema().load(raw)
    except ValidationError as exc:
        raise InvalidInput(exc.messages, "query") from None


def resource(kind: str, id: str | None, attributes: Schema, obj: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"type": kind, "attributes": attributes.dump(obj)}
    if id is not None:
        item = {"id": id, **item}
    return item


def one(kind: str, id: str | None, attributes: Schema, obj: Any, status: int = 200):
    return jsonify({"data": resource(kind, id, attributes, obj)}), status


def many(kind: str, attributes: Schema, objs: list[Any], id_of=lambda o: o.id, meta: dict | None = None):
    data = [resource(kind, id_of(o), attributes, o) for o in objs]
    return jsonify({"data": data, **({"meta": meta} if meta else {})})


def paged(kind: str, attributes: Schema, page: Page, id_of=lambda o: o.id):
    meta = {"page": {"limit": page.limit, "cursor": page.next_cursor}}
    return many(kind, attributes, page.items, id_of, meta)
