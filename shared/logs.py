"""Logging for every retl process: quiet by default, text or JSON lines (RETL_LOG_FORMAT), the
run, sync and destination ids bound wherever they apply, and credentials masked: every record
also passes through the redactor of the secrets of workspaces' connections this process has
seen (`install_redaction`).

structlog renders every line, the stdlib's (Celery, waitress, kombu) included, so one format
holds for the whole process. Quiet means: what an operator acts on (a run started or ended,
warnings, errors) is logged at INFO and above; Celery's per-task chatter is not."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import structlog

from connectors.redaction import redact_known
from shared.settings import get_settings

# Celery's per-task lines ("Received task", "Task … succeeded", beat's "Sending due task") are
# INFO at the source: raised to WARNING so that an idle fleet prints nothing. Their failures
# (task errors, beat errors) are still WARNING or ERROR and still shown.
CHATTY_LOGGERS = ("celery.app.trace", "celery.worker.strategy", "celery.beat", "celery.pool")

# Keys whose values are never printed, wherever they appear in a line.
SECRET_KEYS = re.compile(r"pass(word)?|secret|token|authorization|api_?key|credential|cookie",
                         re.IGNORECASE)
# Credentials inside text: a URL's password, an API key of retl, a bearer token.
# (Whatever stands before "://": another redactor may have put a scheme that was also a
# secret's value aside already.)
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s/]+@")
# (With whatever stands before "_sk_": another redactor may have put "retl" aside already.)
_RETL_KEY = re.compile(r"\S*_sk_[A-Za-z0-9_\-]+")
_BEARER = re.compile(r"(bearer\s+)[^\s'\"]+", re.IGNORECASE)
MASK = "***"

_process = "retl"


def mask_text(text: str) -> str:
    """`text` with URL passwords, retl API keys and bearer tokens replaced by ***."""
    text = _URL_PASSWORD.sub(rf"\g<1>{MASK}@", text)
    text = _RETL_KEY.sub(MASK, text)
    return _BEARER.sub(rf"\g<1>{MASK}", text)


def _mask(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        if key.startswith("_"):
            continue
        if SECRET_KEYS.search(key):
            event[key] = MASK
        elif isinstance(value, str):
            event[key] = mask_text(value)
    return event


def _add_process(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event.setdefault("process", _process)
    return event


def _renderer(fmt: str) -> structlog.types.Processor:
    if fmt == "json":
        return structlog.processors.JSONRenderer()
    return structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)


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


def configure(process: str | None = None) -> None:
    """Set up logging for this process (`api`, `worker`, `beat`, …): RETL_LOG_LEVEL and
    RETL_LOG_FORMAT (`text`, the default, or `json`: one JSON object per line)."""
    global _process
    install_redaction()
    if process:
        _process = process
    settings = get_settings()
    level = logging.getLevelName(settings.log_level.upper())
    if not isinstance(level, int):
        # A process that cannot log as asked does not start: the operator sees why at once.
        raise SystemExit(f"RETL_LOG_LEVEL {settings.log_level!r} is not a log level"
                         " (DEBUG, INFO, WARNING, ERROR)")
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_process,
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Tracebacks become text before masking, so a credential in an exception's
            # message is masked too.
            structlog.processors.format_exc_info,
            _mask,
            _renderer(settings.log_format),
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    # billiard (Celery's pool) logs to "multiprocessing" without propagating: same format, and
    # as Celery itself sets it, only its errors (not each child process started or stopped).
    pool_logger = logging.getLogger("multiprocessing")
    pool_logger.handlers, pool_logger.propagate = [handler], False
    pool_logger.setLevel(max(level, logging.ERROR))
    # Python's warnings (Celery's running-as-root warning, deprecations) as log lines too.
    logging.captureWarnings(True)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    logging.getLogger("werkzeug").setLevel(max(level, logging.WARNING))


def say(message: str, *_: Any) -> None:
    """One line written straight to stderr in the configured format, for what Celery prints from
    its signal handlers ("worker: Warm shutdown"), where taking the logging locks is unsafe."""
    event = {"event": message.strip(), "level": "info", "logger": "celery.apps.worker",
             "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
             "process": _process}
    if get_settings().log_format == "json":
        line = json.dumps(event)
    else:
        line = f"{event['timestamp']} [info     ] {event['event']}"
    try:
        os.write(sys.__stderr__.fileno(), (line + "\n").encode())
    except OSError:  # losing this line must never stop the shutdown that prints it
        pass


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)


def configure_default() -> None:
    """Until a process calls configure() (a test, a script), structlog's lines are handed to
    the stdlib's logging as `event='…' key=value` text, never printed on their own."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.PositionalArgumentsFormatter(),
            _mask,
            structlog.processors.KeyValueRenderer(key_order=["event"]),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
    )


configure_default()


def bind(**ids: str | None) -> None:
    """Bind ids (run_id, sync_id, destination_id) to every later line of this task or request."""
    structlog.contextvars.bind_contextvars(**{k: v for k, v in ids.items() if v})


def clear() -> None:
    structlog.contextvars.clear_contextvars()


@contextmanager
def bound(**ids: str | None) -> Iterator[None]:
    with structlog.contextvars.bound_contextvars(**{k: v for k, v in ids.items() if v}):
        yield
