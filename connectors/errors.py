"""Typed connector errors; the worker maps them to run failures, retries and DLQ codes."""

from __future__ import annotations


class ConnectorError(Exception):
    """A failure of the whole call that retrying will not fix (bad config, unknown object, 4xx)."""

    code = "UNKNOWN"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code


class AuthError(ConnectorError):
    """Credentials were rejected; the run fails fast and asks the operator to fix them."""

    code = "AUTH"


class RetryableError(ConnectorError):
    """A passing failure of the whole call: 429, 5xx, connection error, timeout.

    `retry_after` is the server's `Retry-After` in seconds when it sent one.
    `code` is `RATE_LIMIT` for rate limits and `TIMEOUT` or `UNKNOWN` otherwise, so that a batch
    that exhausts its retries lands in the DLQ with a meaningful code.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, code: str = "UNKNOWN"):
        super().__init__(message, code=code)
        self.retry_after = retry_after


class UnsupportedMode(ConnectorError):
    code = "MAPPING"


class PrivilegedRoleError(ConnectorError):
    """A source's credentials can do more than read (a superuser, a role that reads or writes
    the server's files, runs programs or signals other sessions): refused, with what to grant
    instead."""
