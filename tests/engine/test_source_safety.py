"""Source queries as a hostile or careless workspace writes them, through the engine: `%` and
`{}` are text in every kind of run, writes and escapes fail the run and change nothing, a query
that lifts its own timeout is stopped at retl's deadline, a cancel stops the query running, a
value Python cannot hold fails its record only, and privileged roles are refused."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from connectors.errors import ConnectorError, PrivilegedRoleError
from connectors.sources.base import QueryCancelled
from connectors.sources.duckdb import DuckDbSource
from connectors.sources.postgres import PostgresSource
from shared.errors import Invalid
from shared.services import connections
from shared.services import dlq as dlq_service
from shared.services import runs as run_service
from shared.settings import get_settings
from tests.engine.conftest import EngineDriver, Warehouse, get_run, make_sync
from tests.fakes.http_sink import FakeHttpSink

PERCENT_QUERY = (
    "SELECT id, email, name FROM warehouse.people"
    " WHERE email LIKE '%@example.com' AND name <> '{}' AND name NOT LIKE '%%s'"
)


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Set RETL_* variables for one test; the settings are read again before and after it."""
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def _set(settings_env: pytest.MonkeyPatch, **values: str) -> None:
    for name, value in values.items():
        settings_env.setenv(name, value)
    get_settings.cache_clear()


def test_percent_and_braces_are_text_in_every_kind_of_run(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink) -> None:
    warehouse.insert(12)
    warehouse.execute("INSERT INTO warehouse.people (id, email, name) VALUES (99, 'x@other.org', 'X')")
    sink.reject_keys({"5"})
    setup = people_sync(query=PERCENT_QUERY)

    first = driver.run(setup)
    assert first.status == "succeeded", first.error
    assert (first.rows_written, first.rows_failed) == (11, 1)
    assert "99" not in sink.store

    warehouse.execute("UPDATE warehouse.people SET name = 'Changed' WHERE id = 3")
    incremental = driver.run(setup)
    assert incremental.status == "succeeded", incremental.error
    assert incremental.rows_written == 1 and sink.store["3"]["full_name"] == "Changed"

    sink.clear_rejections()
    entries = dlq_service.list_page(setup.workspace_id, sync_id=setup.sync_id, resolved=False, cursor=None, limit=50).items
    replay_id = dlq_service.resolve(setup.workspace_id, [entries[0].id], "fixed_upstream", replay=True).replay_run_id
    replay = driver.execute(replay_id)
    assert replay.status == "succeeded", replay.error
    assert replay.rows_written == 1 and "5" in sink.store

    full = driver.run(setup, full_refresh=True)
    assert full.status == "succeeded", full.error
    assert full.rows_written == 12


def _people_count(warehouse: Warehouse) -> int:
    return warehouse.conn.execute("SELECT count(*) FROM warehouse.people").fetchone()[0]


@pytest.mark.parametrize(("query", "reason"), [
    ("INSERT INTO warehouse.people (id) VALUES (1000) RETURNING id, email, name", "read-only SELECT"),
    ("DROP TABLE warehouse.people", "read-only SELECT"),
    ("COPY (SELECT 1) TO PROGRAM 'touch {marker}'", "read-only SELECT"),
    ("SET ROLE postgres", "read-only SELECT"),
    ("SELECT id, email, name FROM warehouse.people; DROP TABLE warehouse.people", "failed"),
    ("SELECT id, email, name FROM warehouse.people, (SELECT set_config('role', 'postgres', false)) r",
     "permission denied"),
    ("WITH gone AS (DELETE FROM warehouse.people RETURNING *) SELECT id, email, name FROM gone",
     "write"),
])
def test_a_query_that_writes_or_escapes_fails_the_run_and_changes_nothing(driver: EngineDriver, people_sync, warehouse: Warehouse, tmp_path, query: str, reason: str) -> None:
    warehouse.insert(5)
    marker = tmp_path / "ran"
    run = driver.run(people_sync(query=query.format(marker=marker)))
    assert run.status == "failed"
    assert reason in run.error
    assert _people_count(warehouse) == 5
    assert not marker.exists()


def test_a_query_that_lifts_its_own_timeout_is_stopped_at_the_deadline(settings_env, driver: EngineDriver, people_sync, warehouse: Warehouse) -> None:
    """The server's statement timeout applies per fetch, and the query turns it off in its
    first rows: only retl's own deadline stops the sleep in the second fetch."""
    _set(settings_env, RETL_SOURCE_STATEMENT_TIMEOUT="2")
    warehouse.insert(30)
    run = driver.run(people_sync(query=(
        "SELECT id, email, name FROM warehouse.people WHERE CASE"
        " WHEN id = 1 THEN set_config('statement_timeout', '0', true) <> ''"
        " WHEN id = 25 THEN pg_sleep(3000) IS NOT NULL ELSE true END"
    )))
    assert run.status == "failed"
    assert "time limit of 2 s" in run.error
    assert _sleeping_source_queries(warehouse) == 0


def _sleeping_source_queries(warehouse: Warehouse) -> int:
    return warehouse.conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND wait_event = 'PgSleep'"
        " AND application_name = 'retl-source' AND datname = current_database()"
    ).fetchone()[0]


def _wait_for(condition, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


def test_a_cancel_stops_the_running_source_query_and_the_run_ends_cancelled(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink) -> None:
    warehouse.insert(5)
    setup = people_sync(query="SELECT id, email, name FROM warehouse.people, pg_sleep(3000) AS s")
    run_id = driver.trigger(setup)
    planner = threading.Thread(target=driver.engine.execute_run, args=(run_id,), daemon=True)
    planner.start()
    _wait_for(lambda: _sleeping_source_queries(warehouse) == 1)
    assert run_service.cancel(setup.workspace_id, run_id).cancel_requested
    planner.join(timeout=60)
    assert not planner.is_alive()
    run = get_run(run_id)
    assert run.status == "cancelled" and run.error is None
    assert run.rows_written == 0 and sink.store == {}
    assert _sleeping_source_queries(warehouse) == 0


def test_a_cancel_during_planning_keeps_what_was_stored_and_ends_cancelled(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink) -> None:
    """Rows 1-20 are read and stored as batches before the source sleeps; a cancel then ends
    the run: the batches stored are skipped, nothing is left running or queued."""
    warehouse.insert(30)
    setup = people_sync(query=(
        "SELECT id, email, name FROM warehouse.people"
        " WHERE CASE WHEN id = 25 THEN pg_sleep(3000) IS NOT NULL ELSE true END"
    ))
    run_id = driver.trigger(setup)
    planner = threading.Thread(target=driver.engine.execute_run, args=(run_id,), daemon=True)
    planner.start()
    _wait_for(lambda: _sleeping_source_queries(warehouse) == 1)
    run_service.cancel(setup.workspace_id, run_id)
    planner.join(timeout=60)
    assert not planner.is_alive()
    driver.drain()
    run = get_run(run_id)
    assert run.status == "cancelled"
    assert run.rows_written == len(sink.store)
    assert len(sink.store) < 30


def test_an_infinite_timestamp_fails_its_record_not_the_run(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink) -> None:
    warehouse.insert(4)
    warehouse.execute("UPDATE warehouse.people SET updated_at = 'infinity' WHERE id = 2")
    mappings = [
        {"source": "id", "destination": "external_id", "key": True},
        {"source": "updated_at", "destination": "updated_at"},
    ]
    setup = people_sync(mappings=mappings, query="SELECT id, updated_at FROM warehouse.people")
    first = driver.run(setup)
    assert first.status == "succeeded", first.error
    assert (first.rows_written, first.rows_failed) == (3, 1)
    assert sorted(sink.store) == ["1", "3", "4"]
    warehouse.execute("UPDATE warehouse.people SET name = 'again' WHERE id = 3")
    warehouse.execute("UPDATE warehouse.people SET updated_at = '2025-02-01T00:00:00Z' WHERE id = 3")
    second = driver.run(setup)  # the incremental path reads the rows again: same outcome
    assert second.status == "succeeded", second.error
    assert (second.rows_written, second.rows_failed) == (1, 1)
    entries = dlq_service.list_page(setup.workspace_id, sync_id=setup.sync_id, resolved=False, cursor=None, limit=50).items
    assert [(e.record_key, e.error_code) for e in entries] == [("2", "MAPPING")]


# -- least privilege ----------------------------------------------------------------------------

FILE_GROUP = "retl_test_file_group"
INDIRECT_READER = "retl_test_indirect_reader"


@pytest.fixture(scope="session")
def indirectly_privileged_url(warehouse_url: str) -> str:
    """A login role that holds pg_read_server_files through a group it belongs to."""
    from tests import services

    with psycopg.connect(warehouse_url, autocommit=True) as conn:
        for statement in (
            f"CREATE ROLE {FILE_GROUP} NOLOGIN",
            f"CREATE ROLE {INDIRECT_READER} LOGIN IN ROLE {FILE_GROUP}",
            f"GRANT pg_read_server_files TO {FILE_GROUP}",
        ):
            try:
                conn.execute(statement)
            except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
                pass  # another test process made it first
    return services.as_role(warehouse_url, INDIRECT_READER)


def test_a_superuser_or_privileged_source_is_refused_with_what_to_grant(workspace_id: str, warehouse: Warehouse, indirectly_privileged_url: str) -> None:
    for url, what in ((warehouse.admin_url, "is a superuser"),
                      (indirectly_privileged_url, "holds pg_read_server_files")):
        with pytest.raises(PrivilegedRoleError) as refused:
            PostgresSource({"url": url}).test()
        assert what in refused.value.message
        assert "GRANT SELECT ON ALL TABLES" in refused.value.message
        with pytest.raises(Invalid) as invalid:
            connections.create(workspace_id, "source", "w", "postgres", {"url": url})
        assert what in invalid.value.args[0] or what in str(invalid.value)
    # The role the README recommends can read, and nothing more.
    PostgresSource({"url": warehouse.url}).test()


def test_a_privileged_source_saved_before_is_refused_at_test_and_run_time(settings_env, driver: EngineDriver, workspace_id: str, warehouse: Warehouse, sink: FakeHttpSink) -> None:
    warehouse.insert(3)
    _set(settings_env, RETL_ALLOW_PRIVILEGED_SOURCES="1")
    setup = make_sync(workspace_id, {"url": warehouse.admin_url}, sink.url)
    settings_env.delenv("RETL_ALLOW_PRIVILEGED_SOURCES")
    get_settings.cache_clear()
    tested = connections.test(workspace_id, "source", setup.source_id)
    assert tested.record.status == "error" and "is a superuser" in tested.record.status_message
    run = driver.run(setup)
    assert run.status == "failed" and "is a superuser" in run.error
    assert sink.store == {}


def test_a_single_tenant_deployment_may_allow_privileged_sources(settings_env, driver: EngineDriver, workspace_id: str, warehouse: Warehouse, sink: FakeHttpSink) -> None:
    _set(settings_env, RETL_ALLOW_PRIVILEGED_SOURCES="1")
    warehouse.insert(3)
    run = driver.run(make_sync(workspace_id, {"url": warehouse.admin_url}, sink.url))
    assert run.status == "succeeded", run.error
    assert len(sink.store) == 3


# -- the sources' own guards --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["stream", "stream_key_hash_copy"])
def test_a_postgres_query_is_interrupted_from_another_thread(warehouse: Warehouse, kind: str) -> None:
    source = PostgresSource({"url": warehouse.url})
    errors: list[Exception] = []
    query = "SELECT 1 AS id, pg_sleep(3000) AS n"

    def read() -> None:
        try:
            if kind == "stream":
                list(source.stream(query))
            else:
                list(source.stream_key_hash_copy(query, "id", ["n"]))
        except ConnectorError as exc:
            errors.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    _wait_for(lambda: _sleeping_source_queries(warehouse) == 1)
    source.interrupt()
    reader.join(timeout=30)
    assert not reader.is_alive()
    assert isinstance(errors[0], QueryCancelled)


def test_a_duckdb_query_is_interrupted_and_bounded_by_the_settings() -> None:
    source = DuckDbSource({"path": ":memory:"}, memory_limit="256MB", threads=1)
    limits = [row for chunk in source.stream(
        "SELECT current_setting('memory_limit') AS memory, current_setting('threads') AS threads"
    ) for row in chunk]
    assert limits == [("244.1 MiB", 1)]  # 256 MB as DuckDB reports it
    errors: list[Exception] = []

    def read() -> None:
        try:
            list(source.stream("SELECT count(*) FROM range(100000000000) a"))
        except ConnectorError as exc:
            errors.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    _wait_for(lambda: bool(source._watches) or not reader.is_alive())
    source.interrupt()
    reader.join(timeout=30)
    assert not reader.is_alive()
    assert isinstance(errors[0], QueryCancelled)




def test_a_run_cancelled_while_its_planner_fails_ends_cancelled(driver: EngineDriver, people_sync, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever stops a planner after a cancel (here the source failing), the run ends as
    its user asked."""
    from worker import runs as engine
    from worker.planner import RunFailed

    warehouse.insert(3)
    setup = people_sync()
    run_id = driver.trigger(setup)

    def cancelled_then_failing(context, heartbeat) -> int:
        run_service.cancel(setup.workspace_id, run_id)
        raise RunFailed("the source query failed: server closed the connection")

    monkeypatch.setattr(engine, "plan_run", cancelled_then_failing)
    run = driver.execute(run_id)
    assert run.status == "cancelled" and run.error is None
