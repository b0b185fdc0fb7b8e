"""Public ids: a resource prefix plus a lower-case ULID, so ids sort by creation time."""

from __future__ import annotations

from ulid import ULID

WORKSPACE = "ws"
API_KEY = "key"
SOURCE = "src"
DESTINATION = "conn"
SYNC = "retl_sync"
RUN = "retl_run"
DLQ_ENTRY = "retl_dlq"


def new_id(prefix: str) -> str:
    return f"{prefix}_{str(ULID()).lower()}"
