"""Test fixtures: a migrated database per test process, wiped before each test; a Redis
database per test process, flushed before each test; API clients with keys."""

from __future__ import annotations

import os
from collections.abc import Iterator

import psycopg
import pytest
import redis

from shared import db
from shared.migrate import migrate
from shared.settings import get_settings
from tests import services

WORKER = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
# Per process, so that several test sessions on one machine never share state.
TEST_DATABASE = f"retl_test_{WORKER}_{os.getpid()}"


def _redis_url() -> str:
    base = services.redis_base_url()
    number = 1 + os.getpid() % 15  # database 0 is left to the service itself
    if base.startswith("unix://"):
        return f"{base}db={number}"
    return f"{base}/{number}"


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    url = services.recreate_database(TEST_DATABASE)
    migrate(url)
    yield url
    db.reset_pool()
    services.drop_database(TEST_DATABASE)


@pytest.fixture(scope="session")
def reader_url(database_url: str) -> str:
    """The test database as a source should see it: as a role that can only read (the
    database's later tables included)."""
    return services.reader_url(database_url)


@pytest.fixture(scope="session")
def redis_url() -> str:
    return _redis_url()


@pytest.fixture(scope="session", autouse=True)
def _environment(database_url: str, redis_url: str) -> Iterator[None]:
    os.environ.update(
        RETL_DATABASE_URL=database_url,
        RETL_REDIS_URL=redis_url,
        RETL_SECRET_KEY="test-secret-key",
        RETL_QUEUE=f"retl-test-{os.getpid()}",
        RETL_HOME=os.path.join(os.environ.get("TMPDIR", "/tmp"), f"retl-test-home-{WORKER}"),
        # A writer following a planner that stopped (a test's crash) waits this long for the
        # next batch before it gives up.
        RETL_WRITER_FOLLOW_SECONDS="0.3",
    )
    get_settings.cache_clear()
    yield


def _tables(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        " AND tablename <> 'schema_migrations'"
    ).fetchall()
    return [r[0] for r in rows]


@pytest.fixture(autouse=True)
def clean_state(database_url: str, redis_url: str) -> Iterator[None]:
    """Every test starts from empty tables and an empty Redis database."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        tables = _tables(conn)
        if tables:
            conn.execute(f"TRUNCATE {', '.join(tables)} CASCADE")
    redis.Redis.from_url(redis_url).flushdb()
    yield


@pytest.fixture
def api_key() -> str:
    from shared.services.auth import create_api_key

    return create_api_key("acme").key


@pytest.fixture
def other_api_key() -> str:
    from shared.services.auth import create_api_key

    return create_api_key("globex").key


@pytest.fixture
def app():
    from api import create_app

    return create_app({"TESTING": True})


@pytest.fixture
def client(app):
    return app.test_client()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
