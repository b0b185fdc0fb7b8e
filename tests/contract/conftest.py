"""Fixtures for the destination contract suite: the end-to-end fixtures (a warehouse table with
typed columns, an account, the in-process engine with fast retries), the columns the harnesses
map besides those, and the fake of the harness a test is parametrized with."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.contract.harnesses import DestinationHarness
from tests.e2e.conftest import (  # noqa: F401 - fixtures used by the suite
    account,
    driver,
    fast_retries,
    people,
    warehouse,
)
from tests.engine.conftest import Warehouse


@pytest.fixture
def table(people: Warehouse) -> Warehouse:  # noqa: F811 - the fixture
    """warehouse.people with a phone, a device id and a CRM id besides its columns."""
    people.execute("ALTER TABLE warehouse.people ADD COLUMN phone text,"
                   " ADD COLUMN device text, ADD COLUMN crm_id text")
    return people


@pytest.fixture
def fake(harness: DestinationHarness, warehouse_url: str) -> Iterator[Any]:
    """The fake vendor of the harness the test is parametrized with, running."""
    with harness.running(warehouse_url) as running:
        yield running
