"""Field digests: a compact trace of each field of a record as the destination accepted it, so a
preview can name the fields of a changed record that differ from what was sent.

A field's digest is 4 bytes: the CRC-32 of its destination name, a NUL byte and its value's
canonical encoding. A record's digests are sorted and packed big-endian into one bytes value,
so they depend neither on the order of its fields nor on the process that computed them (never
Python's `hash()`, which is salted per process). Names are not stored: a field of the record
about to be sent is unchanged when its (name, value) digest is among the stored ones.

The canonical encoding: text is "s" and its UTF-8; integers, floats, booleans and null are
their JSON text (a float's repr); lists and dicts are compact JSON with sorted keys; a value
JSON has no type for is encoded as its JSON form (`connectors.json_forms`: a date as its ISO
text, a decimal as a number), inside lists and dicts too, so a record digests the same whether
its values came typed or already in their JSON form. The tag keeps the text "1" apart from the
number 1. Every record a run sends is digested once, as its batch is stored, so the
common types skip the JSON encoder (its call costs more than the rest of a field's digest)."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from connectors.json_forms import json_value

_JSON = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=json_value
).encode


def _text(value: str) -> bytes:
    return b"s" + value.encode("utf-8", "surrogatepass")


def _number(value: int | float) -> bytes:
    return repr(value).encode()


def _any(value: Any) -> bytes:
    if isinstance(value, str):  # text of a type of its own (a date the source holds as text)
        return _text(value)
    if not isinstance(value, list | dict | tuple):
        value = json_value(value)
        return _ENCODINGS[type(value)](value)  # json_value gives text or a number
    try:
        return _JSON(value).encode("utf-8", "surrogatepass")
    except (TypeError, ValueError):  # keys JSON cannot sort (1 and "a"): never fail a run
        return b"r" + repr(value).encode("utf-8", "surrogatepass")


_ENCODINGS: dict[type, Callable[[Any], bytes]] = {
    str: _text,
    int: _number,
    float: _number,
    bool: {True: b"true", False: b"false"}.__getitem__,
    type(None): lambda _: b"null",
}
# CRC-32 of a name and the NUL after it: the running CRC each of its values continues.
_NAME_CRC: dict[str, int] = {}


def field_digest(name: str, value: Any) -> int:
    """The digest of one field: CRC-32 of name, NUL and the canonical value."""
    start = _NAME_CRC.get(name)
    if start is None:
        start = _NAME_CRC[name] = zlib.crc32(name.encode("utf-8", "surrogatepass") + b"\0")
    return zlib.crc32(_ENCODINGS.get(type(value), _any)(value), start)


def record_digests(record: dict[str, Any]) -> bytes:
    """The digests of every field of `record` (as sent), sorted and packed: `field_digest` of
    each, inlined for text and numbers (every record a run sends goes through here)."""
    digests = []
    for name, value in record.items():
        start = _NAME_CRC.get(name)
        if start is None:
            start = _NAME_CRC[name] = zlib.crc32(name.encode("utf-8", "surrogatepass") + b"\0")
        kind = type(value)
        if kind is str:
            data = b"s" + value.encode("utf-8", "surrogatepass")
        elif kind is int or kind is float:
            data = repr(value).encode()
        else:
            data = _ENCODINGS.get(kind, _any)(value)
        digests.append(_crc32(data, start))
    digests.sort()
    return _pack_cache(len(digests))(*digests)


_crc32 = zlib.crc32


@lru_cache(maxsize=256)
def _pack_cache(count: int) -> Callable[..., bytes]:
    return struct.Struct(f">{count}I").pack


def changed_fields(record: dict[str, Any], stored: bytes) -> list[str]:
    """The names of the fields of `record` whose value (or the field itself) is not among the
    `stored` digests of the record last accepted, sorted."""
    known = set(struct.unpack(f">{len(stored) // 4}I", stored))
    return sorted(name for name, value in record.items()
                  if field_digest(name, value) not in known)
