"""A batch's records as stored in Postgres for any writer of the fleet: msgpack data, never
pickles, so a row of retl's own database can hold values but never code a worker would run.

Records hold what a source returns and the mapping makes of it (see `worker.mapping` and
`connectors.casting`): JSON's types, plus decimals, dates, times, datetimes, intervals and
UUIDs, which travel as msgpack extension types and come back as the same Python values."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

import msgpack

# Extension type codes (application range 0..127). Stable: batches written by one version of
# retl are read by the next while a fleet is upgraded.
_DECIMAL, _DATETIME, _DATE, _TIME, _UUID, _TIMEDELTA = 1, 2, 3, 4, 5, 6


class PayloadError(ValueError):
    """The stored bytes are not a batch this module wrote (a pickle, a damaged row)."""


def _to_ext(value: Any) -> msgpack.ExtType:
    # Looked at in this order: datetime is a subclass of date.
    if isinstance(value, decimal.Decimal):
        return msgpack.ExtType(_DECIMAL, str(value).encode())
    if isinstance(value, dt.datetime):
        return msgpack.ExtType(_DATETIME, value.isoformat().encode())
    if isinstance(value, dt.date):
        return msgpack.ExtType(_DATE, value.isoformat().encode())
    if isinstance(value, dt.time):
        return msgpack.ExtType(_TIME, value.isoformat().encode())
    if isinstance(value, uuid.UUID):
        return msgpack.ExtType(_UUID, value.bytes)
    if isinstance(value, dt.timedelta):
        return msgpack.ExtType(
            _TIMEDELTA, msgpack.packb([value.days, value.seconds, value.microseconds])
        )
    if isinstance(value, tuple | set | frozenset):
        return list(value)  # type: ignore[return-value]
    # Anything else a driver may hand over (an IP address, a range) travels as its text, as
    # the destinations' JSON form would send it.
    return str(value)  # type: ignore[return-value]


def _from_ext(code: int, data: bytes) -> Any:
    if code == _DECIMAL:
        return decimal.Decimal(data.decode())
    if code == _DATETIME:
        return dt.datetime.fromisoformat(data.decode())
    if code == _DATE:
        return dt.date.fromisoformat(data.decode())
    if code == _TIME:
        return dt.time.fromisoformat(data.decode())
    if code == _UUID:
        return uuid.UUID(bytes=data)
    if code == _TIMEDELTA:
        days, seconds, micros = msgpack.unpackb(data)
        return dt.timedelta(days=days, seconds=seconds, microseconds=micros)
    raise PayloadError(f"unknown extension type {code} in a batch payload")


def encode(records: list[tuple[Any, dict[str, Any]]]) -> bytes:
    """(key, fields) pairs as stored in `run_batches.payload`."""
    return msgpack.packb(records, default=_to_ext, use_bin_type=True, datetime=False)


def decode(payload: bytes) -> list[tuple[Any, dict[str, Any]]]:
    """The (key, fields) pairs of a stored batch; PayloadError for anything else (a pickle
    is refused here, never unpickled)."""
    try:
        items = msgpack.unpackb(
            payload, ext_hook=_from_ext, raw=False, strict_map_key=False, use_list=True
        )
    except PayloadError:
        raise
    except Exception as exc:  # ExtraData, FormatError, UnicodeDecodeError, ValueError …
        raise PayloadError(f"the batch payload is not msgpack data: {type(exc).__name__}") from None
    if not isinstance(items, list) or not all(
        isinstance(item, list) and len(item) == 2 and isinstance(item[1], dict) for item in items
    ):
        raise PayloadError("the batch payload is not a list of (key, record) pairs")
    return [(key, fields) for key, fields in items]
