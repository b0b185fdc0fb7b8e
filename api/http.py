"""Request parsing and response envelopes shared by every route."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from flask import jsonify, request
from marshmallow import Schema, ValidationError

from api.dumping import dumper
from shared.errors import Invalid, ServiceError
from shared.pagination import Page

# JSON bodies nest no deeper than this (a sync body needs 3 levels; static values get the rest).
MAX_DEPTH = 32


class BadRequest(ServiceError):
    status = 400
    code = "malformed_body"


class InvalidInput(Exception):
    """Marshmallow's messages for one request part, turned into error objects by api.errors."""

    def __init__(self, messages: Any, location: str) -> None:
        super().__init__("invalid input")
        self.messages = messages
        self.location = location


def text_problem(text: str) -> str | None:
    """Why Postgres could not store `text`, or None: NUL characters and lone surrogates."""
    if "\x00" in text:
        return "must not contain NUL characters"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text (no lone surrogates)"
    return None


def _pointer_token(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _unstorable(payload: Any) -> tuple[str, str] | None:
    """The first (JSON pointer, reason) of a value no field may hold: text Postgres refuses, or
    nesting deeper than MAX_DEPTH. Walked with a stack: a hostile body cannot recurse us."""
    stack: list[tuple[Any, str, int]] = [(payload, "", 0)]
    while stack:
        value, pointer, depth = stack.pop()
        if depth > MAX_DEPTH:
            return pointer, f"is nested deeper than {MAX_DEPTH} levels"
        if isinstance(value, str):
            problem = text_problem(value)
            if problem:
                return pointer, problem
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):
                child = f"{pointer}/{_pointer_token(key)}"
                problem = text_problem(key)
                if problem:
                    return child, f"name {problem}"
                stack.append((item, child, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, f"{pointer}/{i}", depth + 1) for i, item in reversed(list(enumerate(value))))
    return None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_body() -> Any:
    raw = request.get_data(cache=True)  # 413 past MAX_CONTENT_LENGTH
    if not raw.strip():
        raise BadRequest("the body must be a JSON object (Content-Type: application/json)", pointer="")
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # also bad UTF-8 and integers too long to read
        raise BadRequest("the body is not valid JSON", pointer="") from None


@cache
def _instance(schema: type[Schema]) -> Schema:
    """One instance per schema class: loading keeps no state on it, and making one per request
    copies every field each time (a few percent of a small request's work)."""
    return schema()


def body(schema: type[Schema], *, partial: bool | tuple[str, ...] = False) -> dict[str, Any]:
    """The JSON body, validated; 400 when it is not a JSON object, 422 when a field is wrong."""
    payload = _json_body()
    if not isinstance(payload, dict):
        raise BadRequest("the body must be a JSON object, not a list or a value", pointer="")
    unstorable = _unstorable(payload)
    if unstorable is not None:
        pointer, reason = unstorable
        raise Invalid(f"{pointer} {reason}", pointer=pointer)
    try:
        return _instance(schema).load(payload, partial=partial)
    except ValidationError as exc:
        raise InvalidInput(exc.messages, "body") from None


def query(schema: type[Schema]) -> dict[str, Any]:
    """The query string, validated; a parameter given twice counts as wrong."""
    raw: dict[str, Any] = {}
    for name, values in request.args.lists():
        for value in values:
            problem = text_problem(value)
            if problem:
                raise InvalidInput({name: [problem]}, "query")
        raw[name] = values[0] if len(values) == 1 else values
    try:
        return _instance(schema).load(raw)
    except ValidationError as exc:
        raise InvalidInput(exc.messages, "query") from None


def resource(kind: str, id: str | None, attributes: Schema, obj: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"type": kind, "attributes": dumper(attributes)(obj)}
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
