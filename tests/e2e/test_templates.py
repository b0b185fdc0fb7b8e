"""Template mappings through the engine: a template failing on one row fails only that record."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.db import transaction
from shared.repositories import dlq
from shared.services.auth import create_api_key
from tests.e2e.conftest import EngineDriver, Warehouse
from tests.engine.conftest import make_sync
from tests.fakes.http_sink import FakeHttpSink

MAPPINGS = [
    {"source": "id", "destination": "external_id", "key": True},
    {"template": "{{ score * 2 }}", "destination": "double_score"},
    {"template": "{{ name }} <{{ email }}>", "destination": "label"},
]


@pytest.fixture
def workspace_id() -> str:
    return create_api_key("templates").workspace_id


@pytest.fixture
def sink() -> Iterator[FakeHttpSink]:
    with FakeHttpSink() as fake:
        yield fake


def test_a_template_failing_on_one_row_fails_that_record_only(
    driver: EngineDriver, warehouse: Warehouse, workspace_id: str, sink: FakeHttpSink
) -> None:
    warehouse.insert(3)
    warehouse.execute("UPDATE warehouse.people SET score = NULL, email = NULL WHERE id = 2")
    setup = make_sync(workspace_id, {"url": warehouse.url}, sink.url, mappings=MAPPINGS)
    run = driver.run(setup)
    assert run.status == "succeeded", run.error
    assert (run.rows_written, run.rows_failed) == (2, 1)
    assert sink.store["1"]["double_score"] == "3.0"
    assert sink.store["3"]["label"] == "User 3 <user3@example.com>"
    with transaction() as conn:
        entries = dlq.list_page(conn, workspace_id, sync_id=setup.sync_id, resolved=False, after=None, limit=10)
    assert [(e.record_key, e.error_code) for e in entries] == [("2", "MAPPING")]


def test_a_null_value_renders_as_nothing_in_a_template(
    driver: EngineDriver, warehouse: Warehouse, workspace_id: str, sink: FakeHttpSink
) -> None:
    warehouse.insert(1)
    warehouse.execute("UPDATE warehouse.people SET email = NULL")
    mappings = [MAPPINGS[0], MAPPINGS[2]]
    run = driver.run(make_sync(workspace_id, {"url": warehouse.url}, sink.url, mappings=mappings))
    assert run.status == "succeeded", run.error
    assert sink.store["1"]["label"] == "User 1 <>"


def test_a_template_past_the_limits_at_run_time_fails_its_record_with_mapping(
    driver: EngineDriver, warehouse: Warehouse, workspace_id: str, sink: FakeHttpSink
) -> None:
    """Saved through the service (the API's check would refuse it): at run time each record
    it would have made 20 MB of fails with MAPPING, and nothing of it is sent."""
    warehouse.insert(2)
    mappings = [MAPPINGS[0], {"template": "{{ name|center(20000000) }}", "destination": "label"}]
    run = driver.run(make_sync(workspace_id, {"url": warehouse.url}, sink.url, mappings=mappings))
    assert run.status == "succeeded", run.error
    assert (run.rows_written, run.rows_failed) == (0, 2)
    assert sink.store == {}
    with transaction() as conn:
        entries = dlq.list_page(conn, workspace_id, sync_id=None, resolved=False, after=None, limit=10)
    assert sorted((e.record_key, e.error_code) for e in entries) == [("1", "MAPPING"), ("2", "MAPPING")]
    assert "65536" in entries[0].message
