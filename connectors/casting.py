"""Cast mapped values to a destination field's data type; a value that cannot be cast is a
failed record with the MAPPING code, never a failed batch."""

from __future__ import annotations

import datetime as dt
import decimal
import json
from typing import Any


class CastError(ValueError):
    """A value that cannot be turned into the field's type."""


class OutOfRangeValue(str):
    """A date or time the source holds and Python cannot (±infinity, a year past 9999), as the
    source's text. Cast to a date or a number, or given a JSON form, it fails its record with
    MAPPING; it never fails the run that read it."""


_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


def cast_value(value: Any, data_type: str) -> Any:
    """`value` as the Python type for `data_type` (see destinations.base.DATA_TYPES).
    None stays None; unknown types pass the value through unchanged."""
    if value is None:
        return None
    try:
        caster = _CASTERS.get(data_type)
        return caster(value) if caster else value
    except (ValueError, TypeError, decimal.InvalidOperation, OverflowError) as exc:
        raise CastError(f"cannot cast {value!r} to {data_type}: {exc}") from None


def _to_string(value: Any) -> str:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


def _to_integer(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float | decimal.Decimal):
        if value != int(value):
            raise ValueError("has a fractional part")
        return int(value)
    text = str(value).strip()
    number = decimal.Decimal(text)
    if number != number.to_integral_value():
        raise ValueError("has a fractional part")
    return int(number)


def _to_number(value: Any) -> int | float:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    number = decimal.Decimal(str(value).strip())
    if not number.is_finite():
        raise ValueError("not a finite number")
    return int(number) if number == number.to_integral_value() and "." not in str(value) else float(number)


def _to_boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float | decimal.Decimal):
        if value in (0, 1):
            return bool(value)
        raise ValueError("not 0 or 1")
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("not a boolean")


def _to_date(value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value).strip()[:10])


def _to_datetime(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, dt.date):
        moment = dt.datetime(value.year, value.month, value.day)
    else:
        moment = dt.datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


def _to_json(value: Any) -> Any:
    if isinstance(value, str):
        return json.loads(value)
    return value


_CASTERS = {
    "string": _to_string,
    "integer": _to_integer,
    "number": _to_number,
    "boolean": _to_boolean,
    "date": _to_date,
    "datetime": _to_datetime,
    "json": _to_json,
}


def iso_datetime(value: dt.datetime) -> str:
    """`2025-03-27T17:00:00.000Z`: the form Salesforce and HubSpot accept."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
