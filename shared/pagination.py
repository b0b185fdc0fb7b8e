"""Opaque, signed keyset cursors: a page continues after the last id the previous page showed,
so rows inserted meanwhile are neither skipped nor repeated."""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import Generic, TypeVar

from shared.errors import Invalid
from shared.secrets import signing_key

T = TypeVar("T")
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAC_BYTES = 12


@dataclass
class Page(Generic[T]):
    items: list[T]
    limit: int
    next_cursor: str | None


def encode_cursor(last_id: str) -> str:
    payload = last_id.encode()
    mac = hmac.new(signing_key(), payload, hashlib.sha256).digest()[:MAC_BYTES]
    return base64.urlsafe_b64encode(payload + b"." + mac).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    """The last id the cursor names; Invalid when the server did not issue it."""
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        # The MAC is binary and may itself hold a "." byte: split at its fixed length.
        payload, dot, mac = raw[:-MAC_BYTES - 1], raw[-MAC_BYTES - 1:-MAC_BYTES], raw[-MAC_BYTES:]
        if dot != b"." or not payload:
            raise ValueError("not a cursor")
        expected = hmac.new(signing_key(), payload, hashlib.sha256).digest()[:MAC_BYTES]
        if hmac.compare_digest(mac, expected):
            return payload.decode()
    except (ValueError, UnicodeDecodeError):
        pass
    raise Invalid("cursor was not issued by this server", pointer="/cursor")


def page_of(rows: list[T], limit: int, id_of=lambda row: row.id) -> Page[T]:
    """Rows were fetched with limit + 1: the extra row only says that another page exists."""
    items = rows[:limit]
    more = len(rows) > limit
    return Page(items, limit, encode_cursor(id_of(items[-1])) if more and items else None)
