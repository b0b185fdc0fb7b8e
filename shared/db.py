"""The Postgres connection pool of this process and the transaction helper.

The pool is created on first use, never at import time, so that forked processes (Celery
workers, gunicorn workers) each open their own (see `reset_pool`).

A caller may check a connection out ahead of time with `carry` (the API authenticates a request
on it): the first `transaction()` of the same context then runs on that connection, inside the
transaction the caller began, so the key lookup and the request's work share one checkout and
one commit."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import psycopg
from psycopg_pool import ConnectionPool

from shared.settings import get_settings

_pool: ConnectionPool | None = None
_pool_lock = threading.Lock()
_carried: ContextVar[psycopg.Connection | None] = ContextVar("retl_carried_connection", default=None)


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
    """A connection checked out for the current context: what the caller runs on it stays open
    and becomes the start of the context's first `transaction()`. Given back (rolled back) at
    the end if no transaction took it."""
    pool = get_pool()
    conn = pool.getconn()
    token = _carried.set(conn)
    try:
        yield conn
    finally:
        _carried.reset(token)
        if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            # Not taken by a transaction (the request failed or did no database work).
            _rollback_quietly(conn)
        pool.putconn(conn)


def _rollback_quietly(conn: psycopg.Connection) -> None:
    try:
        conn.rollback()
    except psycopg.Error:
        pass  # a broken connection: the pool discards it


@contextmanager
def transaction() -> Iterator[psycopg.Connection]:
    """A pooled connection inside one transaction: committed on success, rolled back on error."""
    carried = _carried.get()
    if carried is not None:
        _carried.set(None)  # only the first transaction of the context takes it
        try:
            yield carried
        except BaseException:
            _rollback_quietly(carried)
            raise
        else:
            carried.commit()
        return
    with get_pool().connection() as conn:
        yield conn


def connect(autocommit: bool = False) -> psycopg.Connection:
    """A dedicated connection outside the pool, for long work (streaming, COPY, locks)."""
    return psycopg.connect(get_settings().require_database_url(), autocommit=autocommit)
