"""The Postgres connection pool of this process and the transaction helper.

The pool is created on first use, never at import time, so that forked processes (Celery
workers, gunicorn workers) each open their own (see `reset_pool`).

`read()` is for reading with a single statement: it runs without a transaction around it (one
statement sees one snapshot by itself), which spares the BEGIN and COMMIT round trips.

A caller may check a connection out ahead of time with `carry` (the API looks a request's key up
on it, outside any transaction): the first `read()` or `transaction()` of the same context then
runs on that connection. An authenticated `GET /syncs` is so two statements on one checkout: the
key lookup and the list, and no BEGIN or COMMIT (one, the key lookup, when its answer is kept:
see api/answers.py)."""

from __future__ import annotations

import json
import json.scanner
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import psycopg
from psycopg.abc import Buffer
from psycopg.adapt import Loader
from psycopg_pool import ConnectionPool

from shared.settings import get_settings

_pool: ConnectionPool | None = None
_pool_lock = threading.Lock()
_carried: ContextVar[psycopg.Connection | None] = ContextVar("retl_carried_connection", default=None)


_decode_json = json.JSONDecoder().decode
_scan_json = json.scanner.make_scanner(json.JSONDecoder())


class _JsonbLoader(Loader):
    """jsonb columns as Python values, as psycopg's own loader gives them, with less work per
    value (an API list page reads two such columns a row; 4–8% of its CPU in-process): Postgres
    writes jsonb as canonical text, with nothing around the value, so the scanner alone reads
    it. Anything else takes the full decoder, which also raises as `json.loads` would."""

    def load(self, data: Buffer) -> Any:
        text = bytes(data).decode()
        try:
            value, end = _scan_json(text, 0)
        except StopIteration:
            return _decode_json(text)
        return value if end == len(text) else _decode_json(text)


def _configure(conn: psycopg.Connection) -> None:
    conn.adapters.register_loader("jsonb", _JsonbLoader)


def get_pool() -> ConnectionPool:
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                settings = get_settings()
                _pool = ConnectionPool(
                    settings.require_database_url(),
                    min_size=1,
                    max_size=10,
                    open=True,
                    # How long a checkout waits for a connection (all busy, or Postgres away).
                    timeout=settings.database_wait_s,
                    kwargs={"autocommit": False, "connect_timeout": max(1, int(settings.database_wait_s))},
                    configure=_configure,
                    name="retl",
                )
    return _pool


def reset_pool() -> None:
    """Forget (and close) this process's pool; the next use opens a new one."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.close()


@contextmanager
def carry() -> Iterator[psycopg.Connection]:
    """A connection checked out for the current context, outside any transaction (autocommit),
    taken by the context's first `read()` or `transaction()`; given back at the end."""
    pool = get_pool()
    conn = pool.getconn()
    token = _carried.set(conn)
    try:
        conn.autocommit = True
        yield conn
    finally:
        _carried.reset(token)
        _outside_autocommit(conn)
        pool.putconn(conn)


def _take_carried() -> psycopg.Connection | None:
    conn = _carried.get()
    if conn is not None:
        _carried.set(None)  # only the first use in the context takes it
    return conn


def _outside_autocommit(conn: psycopg.Connection) -> None:
    """Back to the pool's default (transactions), unless the connection broke: the pool then
    discards it."""
    try:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()
        conn.autocommit = False
    except psycopg.Error:
        pass


@contextmanager
def read() -> Iterator[psycopg.Connection]:
    """A pooled connection for reading with ONE statement, run without a transaction (a single
    statement sees one consistent snapshot by itself): no BEGIN and COMMIT round trips. Work of
    several statements that must agree, and every write, use `transaction()`."""
    carried = _take_carried()
    if carried is not None:
        yield carried  # in autocommit since `carry`; given back by it
        return
    with get_pool().connection() as conn:
        conn.autocommit = True
        try:
            yield conn
        finally:
            _outside_autocommit(conn)


@contextmanager
def transaction() -> Iterator[psycopg.Connection]:
    """A pooled connection inside one transaction: committed on success, rolled back on error."""
    carried = _take_carried()
    if carried is None:
        with get_pool().connection() as conn:
            yield conn
        return
    carried.autocommit = False
    try:
        yield carried
    except BaseException:
        _outside_autocommit(carried)
        raise
    carried.commit()


def connect(autocommit: bool = False) -> psycopg.Connection:
    """A dedicated connection outside the pool, for long work (streaming, COPY, locks)."""
    return psycopg.connect(get_settings().require_database_url(), autocommit=autocommit)
