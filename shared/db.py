"""The Postgres connection pool of this process and the transaction helper.

The pool is created on first use, never at import time, so that forked Celery workers each open
their own (see `reset_pool`)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg_pool import ConnectionPool

from shared.settings import get_settings

_pool: ConnectionPool | None = None
_pool_lock = threading.Lock()


def get_pool() -> ConnectionPool:
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = ConnectionPool(
                    get_settings().require_database_url(),
                    min_size=1,
                    max_size=10,
                    open=True,
                    kwargs={"autocommit": False},
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
def transaction() -> Iterator[psycopg.Connection]:
    """A pooled connection inside one transaction: committed on success, rolled back on error."""
    with get_pool().connection() as conn:
        yield conn


def connect(autocommit: bool = False) -> psycopg.Connection:
    """A dedicated connection outside the pool, for long work (streaming, COPY, locks)."""
    return psycopg.connect(get_settings().require_database_url(), autocommit=autocommit)
