"""How a record's key is typed: the diff compares keys as text, and a key goes back out (in a
delete, in DLQ `record_keys`) as the source typed it — a number as a JSON number, anything else
(text, a UUID) as its text."""

from __future__ import annotations

import decimal
from typing import Any

from connectors.json_forms import json_decimal

NUMBER = "number"
TEXT = "text"


def kind_of(value: Any) -> str:
    """The kind of a key as a record sends it."""
    if isinstance(value, int | float | decimal.Decimal) and not isinstance(value, bool):
        return NUMBER
    return TEXT


def typed(key: str | None, kind: str | None) -> Any:
    """The key's text back as its kind: a number (an integer when integral, as the upserts
    send it) or the text itself. A text that is not a number stays text."""
    if key is None or kind != NUMBER:
        return key
    try:
        return json_decimal(decimal.Decimal(key))
    except decimal.InvalidOperation:
        return key
