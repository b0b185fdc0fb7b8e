"""Editing a sync between runs: what the next run sends after the destination changes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from shared.services import connections, syncs
from shared.services.auth import create_api_key
from tests.e2e.conftest import EngineDriver, Warehouse
from tests.engine.conftest import make_sync
from tests.fakes.http_sink import FakeHttpSink


@pytest.fixture
def workspace_id() -> str:
    return create_api_key("edits").workspace_id


@pytest.fixture
def sink() -> Iterator[FakeHttpSink]:
    with FakeHttpSink() as fake:
        yield fake


def test_a_new_destination_receives_every_record_on_the_next_run(
    driver: EngineDriver, warehouse: Warehouse, workspace_id: str, sink: FakeHttpSink
) -> None:
    warehouse.insert(5)
    setup = make_sync(workspace_id, {"url": warehouse.url}, sink.url)
    assert driver.run(setup).rows_written == 5
    with FakeHttpSink() as second:
        other = connections.create(
            workspace_id, "destination", "second", "http", {"url": second.url, "resultsPath": "results"}
        )
        syncs.update(workspace_id, setup.sync_id, {"destinationId": other.record.id})
        run = driver.run(setup)
        assert run.status == "succeeded", run.error
        assert run.rows_written == 5
        assert sorted(second.store) == ["1", "2", "3", "4", "5"]


def test_an_edit_that_keeps_the_destination_sends_only_changes(
    driver: EngineDriver, warehouse: Warehouse, workspace_id: str, sink: FakeHttpSink
) -> None:
    warehouse.insert(3)
    setup = make_sync(workspace_id, {"url": warehouse.url}, sink.url)
    driver.run(setup)
    syncs.update(workspace_id, setup.sync_id, {"name": "renamed"})
    run: Any = driver.run(setup)
    assert (run.rows_written, run.rows_unchanged) == (0, 3)
