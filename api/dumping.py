"""Resource attributes dumped by a plan made once per schema.

A list page dumps hundreds of attributes per request, and marshmallow's generic path (accessor,
default handling, one method call per layer per field) was a third of an authenticated
`GET /syncs`. The schemas stay the single description of every answer (the OpenAPI document is
made from them); this module reads each schema's fields once and, for the kinds of value the
repositories hand over, produces what `schema.dump` produces with less work per value. Any other
field or value takes marshmallow's own path, so the result is always `schema.dump`'s
(tests/unit/test_dumping.py holds them equal)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

from marshmallow import Schema, fields, missing

Dump = Callable[[Any], dict[str, Any]]

# Field classes whose `_serialize` returns a value of this exact type unchanged.
_KEEPS = {fields.String: str, fields.Integer: int, fields.Boolean: bool, fields.Float: float}


def _plain_mapping(field: fields.Field) -> bool:
    return type(field) is fields.Dict and field.key_field is None and field.value_field is None


def _step(name: str, field: fields.Field, schema: Schema) -> tuple[type | None, Callable[[Any, Any], Any]]:
    """How one field's value, read from an object, is formatted: the type a value may have to
    go out as it is (None: none may), and the formatting of any other value."""
    general = field.serialize

    def _general(obj: Any, _value: Any) -> Any:
        return general(name, obj, accessor=schema.get_attribute)

    kept = _KEEPS.get(type(field))
    if kept is not None and not getattr(field, "as_string", False):
        return kept, _general
    if _plain_mapping(field):
        # A copy of a dict encodes as the dict itself: the values the repositories hand over
        # are theirs to give, so they go out as they are.
        return dict, _general
    if type(field) is fields.List and _plain_mapping(field.inner):
        def _dicts(obj: Any, value: Any) -> Any:
            if type(value) is list and all(type(item) is dict for item in value):
                return value  # as a copy of each dict would encode
            return _general(obj, value)
        return None, _dicts
    if type(field) is fields.Nested:
        return type(None), _general
    format_value = getattr(field, "format_value", None)  # UtcDateTime's own formatting
    if format_value is not None:
        def _formatted(obj: Any, value: Any) -> Any:
            return _general(obj, value) if value is missing else format_value(value)
        return None, _formatted
    return None, _general


@cache
def dumper(schema: Schema) -> Dump:
    """`schema.dump` for one object, planned once for this schema instance."""
    if schema.many or schema.only or schema.exclude or any(
        schema._hooks.get(tag) for tag in ("pre_dump", "post_dump")
    ):
        return schema.dump  # a schema that reshapes its answer keeps marshmallow's whole path
    steps = [
        (field.data_key if field.data_key is not None else name, field.attribute or name,
         *_step(name, field, schema))
        for name, field in schema.dump_fields.items()
    ]

    def dump(obj: Any) -> dict[str, Any]:
        if isinstance(obj, Mapping):
            return schema.dump(obj)
        out = {}
        for key, attribute, kept, step in steps:
            value = getattr(obj, attribute, missing)
            if value is None and kept is not None or type(value) is kept:
                out[key] = value
                continue
            value = step(obj, value)
            if value is not missing:
                out[key] = value
        return out

    return dump
