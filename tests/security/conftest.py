"""Fixtures for the security tests: the engine in this process (tests.e2e.conftest), a fake
internal service on loopback, and a way to change the egress settings for one test."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from shared.settings import get_settings
from tests.e2e.conftest import account, fast_retries  # noqa: F401 - fixtures used here
from tests.engine.conftest import (  # noqa: F401 - fixtures used here
    EngineDriver,
    SyncSetup,
    Warehouse,
    driver,
    warehouse,
)
from tests.fakes.internal import FakeInternalService

API = "/api/reverse-etl"


@pytest.fixture
def internal() -> Iterator[FakeInternalService]:
    with FakeInternalService() as fake:
        yield fake


@pytest.fixture
def egress(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """`egress(allow=..., deny=...)` sets RETL_EGRESS_ALLOW / RETL_EGRESS_DENY for this test;
    `egress(allow=None)` removes the setting, as on a machine where nobody set it."""

    def configure(**settings: str | None) -> None:
        for name, value in settings.items():
            variable = f"RETL_EGRESS_{name.upper()}"
            if value is None:
                monkeypatch.delenv(variable, raising=False)
            else:
                monkeypatch.setenv(variable, value)
        get_settings.cache_clear()

    yield configure
    monkeypatch.undo()
    get_settings.cache_clear()


def own_database() -> tuple[str, int, str]:
    """Host, port and database name of retl's own state database in this test process."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(os.environ["RETL_DATABASE_URL"])
    return str(params.get("host")), int(params.get("port") or 5432), str(params["dbname"])
