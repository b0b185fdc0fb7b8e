"""While the API cannot reach Postgres (its connections cut, new ones refused) it answers 503 in
the error envelope, and it recovers by itself once Postgres takes connections again. Only this
test process's own database is touched (its backends, its ALLOW_CONNECTIONS)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest

from shared import db
from shared.settings import get_settings
from tests import services
from tests.api.conftest import API, assert_error
from tests.conftest import TEST_DATABASE, bearer

RECOVERY_SECONDS = 60


@pytest.fixture
def short_database_wait(monkeypatch) -> Iterator[None]:
    """A pool whose checkouts give up after 2 s, so an outage answers quickly."""
    monkeypatch.setenv("RETL_DATABASE_WAIT_SECONDS", "2")
    get_settings.cache_clear()
    db.reset_pool()
    yield
    monkeypatch.delenv("RETL_DATABASE_WAIT_SECONDS")
    get_settings.cache_clear()
    db.reset_pool()


def _admin(statement: str, *params: object) -> None:
    with psycopg.connect(services.admin_database_url(), autocommit=True) as conn:
        conn.execute(statement, params)


def _cut_and_refuse() -> None:
    _admin(f'ALTER DATABASE "{TEST_DATABASE}" ALLOW_CONNECTIONS false')
    _admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_backend_pid()",
        TEST_DATABASE,
    )


def _allow() -> None:
    _admin(f'ALTER DATABASE "{TEST_DATABASE}" ALLOW_CONNECTIONS true')


def test_api_answers_503_while_postgres_is_away_and_recovers_by_itself(
    client, api_key, short_database_wait
):
    headers = bearer(api_key)
    assert client.get(f"{API}/syncs", headers=headers).status_code == 200
    assert client.get(f"{API}/runs", headers=headers).status_code == 200  # a second pooled connection

    try:
        _cut_and_refuse()
        answers = [
            client.get(f"{API}/syncs", headers=headers),
            client.get(f"{API}/runs", headers=headers),
            client.post(f"{API}/sync/run", json={"syncId": "retl_sync_x"}, headers=headers),
            client.get(f"{API}/syncs", headers=headers),
        ]
        ready = client.get("/readyz")
    finally:
        _allow()

    for response in answers:
        error = assert_error(response, 503)
        assert error["code"] == "database_unavailable"
        assert response.headers["Retry-After"] == "5"
    assert ready.status_code == 503
    deadline = time.monotonic() + RECOVERY_SECONDS
    while True:
        response = client.get(f"{API}/syncs", headers=headers)
        if response.status_code == 200:
            break
        assert_error(response, 503)
        assert time.monotonic() < deadline, "the API did not recover after Postgres came back"
        time.sleep(0.5)
    assert client.get(f"{API}/runs", headers=headers).status_code == 200


def test_connections_cut_once_cost_at_most_one_503_each(client, api_key, short_database_wait):
    headers = bearer(api_key)
    assert client.get(f"{API}/syncs", headers=headers).status_code == 200

    _admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_backend_pid()",
        TEST_DATABASE,
    )
    statuses = [client.get(f"{API}/syncs", headers=headers).status_code for _ in range(15)]

    assert set(statuses) <= {200, 503}
    assert statuses[-5:] == [200] * 5
