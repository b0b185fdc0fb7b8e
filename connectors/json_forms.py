"""The usual JSON form of values JSON has no type for: ISO 8601 for dates and times (UTC with
"Z" when aware), numbers for decimals (an integer when integral), text for anything else.

Destinations that send JSON name `json_value` as their `json_form`; a source that can read
values in this form itself (`Source.reads_json_forms`) must give exactly what `json_value`
gives for the value it would read otherwise."""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

from connectors.casting import CastError, OutOfRangeValue


def json_datetime(value: dt.datetime) -> str:
    if value.tzinfo is None:
        return value.isoformat()
    text = value.isoformat()  # the cheapest way to UTC's "Z" form when the offset is zero
    if text.endswith("+00:00"):
        return text[:-6] + "Z"
    return value.astimezone(dt.UTC).replace(tzinfo=None).isoformat() + "Z"


def json_decimal(value: decimal.Decimal) -> int | float:
    if value.is_finite():
        numerator, denominator = value.as_integer_ratio()
        if denominator == 1:
            return numerator
    return float(value)


def _out_of_range(value: OutOfRangeValue) -> Any:
    raise CastError(f"the source's value {str(value)!r} is not a date or time a destination takes")


_FORMS: dict[type, Any] = {
    dt.datetime: json_datetime,
    dt.date: dt.date.isoformat,
    decimal.Decimal: json_decimal,
    OutOfRangeValue: _out_of_range,
}


def json_value(value: Any) -> Any:
    """`value` in its usual JSON form, so a stray type never fails a batch. Looked up by exact
    type first: it runs once per such value of every record sent."""
    form = _FORMS.get(type(value))
    if form is not None:
        return form(value)
    if isinstance(value, dt.datetime):
        return json_datetime(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return json_decimal(value)
    return str(value)
