"""What every HTTP connector needs the same way: reading `Retry-After`, and telling a passing
failure (429, 5xx) from a final one."""

from __future__ import annotations

import datetime as dt
import email.utils
import time
from collections.abc import Mapping

from connectors.errors import RetryableError


def retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` as seconds from now; it is either delta-seconds or an HTTP-date."""
    if not value:
        return None
    value = str(value).strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return max(0.0, moment.timestamp() - time.time())


def excerpt(text: str | None, limit: int = 200) -> str:
    """At most `limit` characters of a vendor's answer, on one line: enough to explain a
    refusal, never a whole page of whatever answered."""
    flat = " ".join(str(text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def passing_failure(status: int, headers: Mapping[str, str], message: str) -> RetryableError | None:
    """The RetryableError for a 429 (code RATE_LIMIT) or a 5xx, with the server's Retry-After;
    None for any other status."""
    if status != 429 and status < 500:
        return None
    return RetryableError(
        message,
        retry_after=retry_after_seconds(headers.get("Retry-After")),
        code="RATE_LIMIT" if status == 429 else "UNKNOWN",
    )
