"""Checks of connection settings that several connectors share: timeouts and header names and
values. They run when a config is saved (the connector is built once to check it) and again
whenever a connector is opened."""

from __future__ import annotations

import math
import re
from typing import Any

from connectors.errors import ConnectorError

MAX_TIMEOUT_SECONDS = 3600.0
# RFC 9110 token characters: what a header name may hold.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def timeout_seconds(config: dict[str, Any], default: float, name: str = "timeoutSeconds") -> float:
    """`config[name]` as a finite, positive number of seconds up to an hour; `default` when
    unset."""
    value = config.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConnectorError(f"config {name} must be a number of seconds")
    try:
        seconds = float(value)
    except ValueError:
        raise ConnectorError(f"config {name} must be a number of seconds") from None
    if not math.isfinite(seconds) or not 0 < seconds <= MAX_TIMEOUT_SECONDS:
        raise ConnectorError(
            f"config {name} must be more than 0 and at most {MAX_TIMEOUT_SECONDS:g} seconds"
        )
    return seconds


def header(name: Any, value: Any, where: str = "headers") -> tuple[str, str]:
    """A header that can go on the wire as it is: a token for a name, a Latin-1 value without
    line breaks. The message never quotes the value (it is usually a secret)."""
    text_name = str(name)
    if not _HEADER_NAME.fullmatch(text_name):
        raise ConnectorError(f"config {where} has a header name that is not a valid token")
    if isinstance(value, dict | list) or value is None:
        raise ConnectorError(f"config {where}.{text_name} must be text")
    text_value = str(value)
    if any(ch in text_value for ch in "\r\n\0"):
        raise ConnectorError(f"config {where}.{text_name} holds a line break or NUL")
    try:
        text_value.encode("latin-1")
    except UnicodeEncodeError:
        raise ConnectorError(f"config {where}.{text_name} holds characters outside Latin-1") from None
    if text_value != text_value.strip():
        raise ConnectorError(f"config {where}.{text_name} starts or ends with white space")
    return text_name, text_value
