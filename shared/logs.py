"""Logging set-up for every retl process: one line per event, level from RETL_LOG_LEVEL, and
no secret of a workspace's connections in any line."""

from __future__ import annotations

import logging
from typing import Any

from connectors.redaction import redact_known
from shared.settings import get_settings

_formatter = logging.Formatter()
_installed = False


def install_redaction() -> None:
    """Make every log record of this process pass through `redact_known` (its message and its
    traceback), whatever handler later writes it."""
    global _installed
    if _installed:
        return
    _installed = True
    previous = logging.getLogRecordFactory()

    def redacting_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed call is logging's to report, as it is
            return record
        clean = redact_known(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact_known(_formatter.formatException(record.exc_info))
        return record

    logging.setLogRecordFactory(redacting_record)


def configure(process: str) -> None:
    install_redaction()
    logging.basicConfig(
        level=get_settings().log_level.upper(),
        format=f"%(asctime)s %(levelname)s {process} %(name)s: %(message)s",
    )
