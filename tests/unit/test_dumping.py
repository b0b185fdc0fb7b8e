"""The planned dump of resource attributes answers exactly what marshmallow's dump answers, for
every attributes schema of the API and for the values repositories hand over and odd ones."""

from __future__ import annotations

import datetime as dt
import decimal
import itertools
from types import SimpleNamespace

import pytest
from marshmallow import Schema, fields

from api import schemas
from api.dumping import dumper

ATTRIBUTE_SCHEMAS = [
    value for name, value in vars(schemas).items()
    if isinstance(value, type) and issubclass(value, Schema) and name.endswith("Attributes")
]
PARIS = dt.timezone(dt.timedelta(hours=1))


class Text(str):
    """A str subclass: marshmallow turns it into a plain str."""


def _values(field: fields.Field) -> list:
    """Typical values of the field's kind, then values of other kinds."""
    if isinstance(field, schemas.UtcDateTime):
        return [dt.datetime(2026, 12, 7, 2, 40, 5, 123456, tzinfo=dt.UTC),
                dt.datetime(2026, 12, 7, 3, 40, 5, tzinfo=PARIS), None]
    if isinstance(field, fields.Boolean):
        return [True, False, None, 1, 0]
    if isinstance(field, fields.Integer):
        return [0, 7, None, 7.0, decimal.Decimal("3"), True]
    if isinstance(field, fields.Float):
        return [1.5, None, 2, decimal.Decimal("2.5")]
    if isinstance(field, fields.String):
        return ["text", "", None, Text("sub"), 12]
    if isinstance(field, fields.List):
        return [[{"a": 1}], [], None, ({"b": 2},), ["x", "y"]]
    if isinstance(field, fields.Dict):
        return [{"a": {"b": [1, 2]}}, {}, None]
    if isinstance(field, fields.Nested):
        return [None, {"maxRemovedPercent": 20.0}]
    return [None, "raw", {"k": 1}]


@pytest.mark.parametrize("schema_class", ATTRIBUTE_SCHEMAS, ids=lambda c: c.__name__)
def test_the_planned_dump_answers_what_marshmallow_answers(schema_class):
    schema = schema_class()
    dump = dumper(schema)
    names = list(schema.dump_fields)
    choices = [_values(schema.dump_fields[name]) for name in names]
    # Each field through each of its values (the others at their first), then all at once.
    cases = []
    for position, options in enumerate(choices):
        for option in options:
            values = [c[0] for c in choices]
            values[position] = option
            cases.append(values)
    cases.extend(itertools.islice(itertools.product(*choices), 50))
    for values in cases:
        obj = SimpleNamespace(**dict(zip(names, values, strict=True)))
        try:
            expected = schema.dump(obj)
        except Exception as exc:  # a value the field refuses: refused the same way
            with pytest.raises(type(exc)):
                dump(obj)
            continue
        assert dump(obj) == expected, values
        assert [type(v) for v in dump(obj).values()] == [type(v) for v in expected.values()]


def test_an_absent_attribute_is_left_out_as_marshmallow_leaves_it_out():
    schema = schemas.SyncAttributes()
    obj = SimpleNamespace(name="accounts", enabled=True)
    assert dumper(schema)(obj) == schema.dump(obj) == {"name": "accounts", "enabled": True}


def test_a_mapping_takes_marshmallows_own_path():
    schema = schemas.RunAttributes()
    obj = {"sync_id": "retl_sync_1", "rows_read": 3}
    assert dumper(schema)(obj) == schema.dump(obj)


def test_timestamps_are_utc_with_a_z_whatever_their_zone():
    field = schemas.UtcDateTime()
    moment = dt.datetime(2026, 12, 7, 3, 40, 5, tzinfo=PARIS)
    assert field.format_value(moment) == "2026-12-07T02:40:05Z"
    assert field.format_value(moment.astimezone(dt.UTC)) == "2026-12-07T02:40:05Z"
    assert field.format_value(None) is None
