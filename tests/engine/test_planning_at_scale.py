"""Incremental planning's set-based diff: the classes it counts, the records it sends, and the
null and repeated keys it fails, whether Postgres searches the staged keys for them or the
source counted them first (DuckDB)."""

from __future__ import annotations

import time
from collections import Counter

import duckdb
import psycopg
import pytest

from connectors.sources.duckdb import DuckDbSource
from shared.db import transaction
from shared.repositories import engine as repo
from shared.services import dlq as dlq_service
from tests.engine.conftest import EngineDriver, Warehouse, make_sync
from tests.fakes.http_sink import FakeHttpSink

QUERY = "SELECT id, email, name FROM people"


def _sent(sink: FakeHttpSink) -> Counter[str]:
    return Counter(str(r["external_id"]) for batch in sink.received for r in batch.records)


def _failures(workspace_id: str, sync_id: str) -> list[tuple[str, dict]]:
    entries = dlq_service.list_page(
        workspace_id, sync_id=sync_id, resolved=False, cursor=None, limit=50
    ).items
    return sorted((e.error_code, e.record_keys) for e in entries)


@pytest.fixture
def duck_path(tmp_path) -> str:
    path = str(tmp_path / "people.duckdb")
    with duckdb.connect(path) as conn:
        conn.execute(
            "CREATE TABLE people AS SELECT i::INTEGER AS id, 'user' || i || '@example.com' AS email,"
            " 'User ' || i AS name FROM range(1, 31) t(i)"
        )
    return path


def _change(path: str, *statements: str) -> None:
    with duckdb.connect(path) as conn:
        for statement in statements:
            conn.execute(statement)


def test_duckdb_counts_null_and_repeated_keys_in_the_source(duck_path: str) -> None:
    source = DuckDbSource({"path": duck_path})
    assert source.repeated_keys(QUERY, "id") == 0
    source.close()
    _change(duck_path, "INSERT INTO people VALUES (3, 'again@x', 'Again'), (3, 'b@x', 'B'),"
                       " (NULL, 'n@x', 'N')")
    source = DuckDbSource({"path": duck_path})
    assert source.repeated_keys(QUERY, "id") == 3
    source.close()


def test_duckdb_counts_keys_as_their_text(tmp_path) -> None:
    path = str(tmp_path / "doubles.duckdb")
    # Equal as numbers, two keys as text (as the engine keeps keys): not repeated.
    _change(path, "CREATE TABLE t AS SELECT * FROM (VALUES (0.0::DOUBLE), (-0.0::DOUBLE), (1.5)) v(id)")
    source = DuckDbSource({"path": path})
    assert source.repeated_keys("SELECT id FROM t", "id") == 0
    source.close()


def test_a_duckdb_second_run_sends_and_counts_only_what_changed(driver: EngineDriver, workspace_id: str, sink: FakeHttpSink, duck_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    setup = make_sync(workspace_id, {"path": duck_path}, sink.url, query=QUERY,
                      source_connector="duckdb")
    assert driver.run(setup).rows_written == 30
    _change(duck_path, "UPDATE people SET name = 'Changed' WHERE id IN (4, 22)",
            "INSERT INTO people VALUES (31, 'user31@example.com', 'User 31')")
    sink.received.clear()
    asked: list[int] = []
    original = DuckDbSource.repeated_keys
    monkeypatch.setattr(DuckDbSource, "repeated_keys",
                        lambda self, *a: asked.append(original(self, *a)) or asked[-1])
    run = driver.run(setup)
    assert run.status == "succeeded", run.error
    assert asked == [0]
    assert _sent(sink) == Counter({"4": 1, "22": 1, "31": 1})
    assert (run.rows_read, run.rows_added, run.rows_changed, run.rows_unchanged) == (31, 1, 2, 28)
    assert (run.rows_written, run.rows_failed) == (3, 0)
    assert sink.store["22"]["full_name"] == "Changed"


def test_a_duckdb_second_run_fails_null_and_repeated_keys_and_sends_the_first_row(driver: EngineDriver, workspace_id: str, sink: FakeHttpSink, duck_path: str) -> None:
    query = QUERY + " ORDER BY id NULLS LAST, name"
    setup = make_sync(workspace_id, {"path": duck_path}, sink.url, query=query,
                      source_connector="duckdb")
    driver.run(setup)
    _change(duck_path, "UPDATE people SET name = 'A first' WHERE id = 5",
            "INSERT INTO people VALUES (5, 'later@x', 'B later'), (NULL, 'n@x', 'No key')")
    sink.received.clear()
    run = driver.run(setup)
    assert run.status == "succeeded", run.error
    assert _sent(sink) == Counter({"5": 1})
    assert sink.store["5"]["full_name"] == "A first"
    assert (run.rows_read, run.rows_changed, run.rows_unchanged, run.rows_failed) == (32, 1, 29, 2)
    assert _failures(workspace_id, setup.sync_id) == [
        ("DUPLICATE_KEY", {"external_id": 5}), ("NULL_KEY", {"external_id": None})]


def test_a_postgres_second_run_fails_null_and_repeated_keys(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink) -> None:
    warehouse.insert(20)
    setup = people_sync()
    driver.run(setup)
    warehouse.execute("INSERT INTO warehouse.people (id, email, name) VALUES"
                      " (NULL, 'a@x', 'A'), (NULL, 'b@x', 'B'), (7, 'dup@x', 'Dup')")
    warehouse.execute("UPDATE warehouse.people SET name = 'Changed' WHERE id = 9")
    sink.received.clear()
    run = driver.run(setup)
    assert run.status == "succeeded", run.error
    assert _sent(sink) == Counter({"9": 1})
    assert (run.rows_read, run.rows_changed, run.rows_unchanged, run.rows_failed) == (23, 1, 19, 3)
    assert sorted(code for code, _ in _failures(setup.workspace_id, setup.sync_id)) == [
        "DUPLICATE_KEY", "NULL_KEY"]


NASTY_KEYS = "SELECT * FROM (VALUES ('tab\tkey', 1), ('new\nline', 2), ('back\\slash', 3),"\
    " ('cr\rkey', 4), (NULL, 5), ('\\N', 6)) AS t(id, n)"


def _copy_text(key: str | None, content_hash: str) -> str:
    if key is None:
        return "\\N\t" + content_hash
    escaped = key.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return f"{escaped}\t{content_hash}"


def _lines(blocks) -> list[str]:
    """Rows of COPY text blocks (a row is a line; values hold no raw newline)."""
    text = b"".join(blocks).decode()
    assert text.endswith("\n")
    return text.split("\n")[:-1]


def test_postgres_key_hash_copy_is_the_key_hashes_as_copy_text(warehouse: Warehouse) -> None:
    from connectors.sources.postgres import PostgresSource

    source = PostgresSource({"url": warehouse.url})
    for options in ({"salt": "s"}, {"salt": "s", "fast": True}):
        rows = [r for c in source.stream_key_hashes(NASTY_KEYS, "id", ["n"], **options) for r in c]
        blocks = list(source.stream_key_hash_copy(NASTY_KEYS, "id", ["n"], 4, **options))
        assert len(blocks) == 2  # six rows, four to a block
        assert _lines(blocks) == [_copy_text(key, content_hash) for key, content_hash in rows]


def test_postgres_key_hash_copy_reads_percent_signs_as_written(warehouse: Warehouse) -> None:
    from connectors.sources.postgres import PostgresSource

    query = "SELECT id, n FROM (VALUES ('a%b', 1), ('c', 2)) AS t(id, n) WHERE id LIKE '%%' OR n = 2"
    source = PostgresSource({"url": warehouse.url})
    rows = [r for c in source.stream_key_hashes(query, "id", ["n"], salt="s") for r in c]
    lines = _lines(source.stream_key_hash_copy(query, "id", ["n"], salt="s"))
    assert [line.split("\t")[0] for line in lines] == ["a%b", "c"]
    assert lines == [_copy_text(key, content_hash) for key, content_hash in rows]


def test_duckdb_key_hash_copy_is_the_key_hashes_as_copy_text() -> None:
    source = DuckDbSource({"path": ":memory:"})
    rows = [r for c in source.stream_key_hashes(NASTY_KEYS, "id", ["n"], salt="s") for r in c]
    blocks = list(source.stream_key_hash_copy(NASTY_KEYS, "id", ["n"], 4, salt="s"))
    assert len(blocks) == 2
    assert _lines(blocks) == [_copy_text(key, content_hash) for key, content_hash in rows]


def test_keys_with_tabs_newlines_and_backslashes_are_diffed_as_they_are(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink) -> None:
    warehouse.insert(6)
    query = ("SELECT CASE id WHEN 1 THEN E'tab\\tkey' WHEN 2 THEN E'new\\nline'"
             " WHEN 3 THEN E'back\\\\slash' WHEN 4 THEN '\\N' ELSE id::text END AS id, email, name"
             " FROM warehouse.people")
    setup = people_sync(query=query)
    assert driver.run(setup).rows_written == 6
    warehouse.execute("UPDATE warehouse.people SET name = 'Changed' WHERE id IN (2, 3)")
    sink.received.clear()
    run = driver.run(setup)
    assert run.status == "succeeded", run.error
    assert _sent(sink) == Counter({"new\nline": 1, "back\\slash": 1})
    assert (run.rows_added, run.rows_changed, run.rows_unchanged, run.rows_failed) == (0, 2, 4, 0)


def _peak_of_second_run(driver: EngineDriver, setup, warehouse: Warehouse) -> int:
    """Peak Python memory (tracemalloc) of a run after 1% of the rows changed."""
    import tracemalloc

    driver.run(setup)
    warehouse.execute("UPDATE warehouse.people SET name = name || '!' WHERE id % 100 = 0")
    tracemalloc.start()
    try:
        run = driver.run(setup)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert run.status == "succeeded", run.error
    return peak


def test_planning_memory_does_not_grow_with_the_rows_read(driver: EngineDriver, workspace_id: str, warehouse: Warehouse, sink: FakeHttpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    from worker import planner

    monkeypatch.setattr(planner, "HASH_CHUNK", 500)
    peaks = []
    for rows in (2_000, 60_000):
        warehouse.execute("TRUNCATE warehouse.people")
        warehouse.insert(rows)
        setup = make_sync(workspace_id, {"url": warehouse.url}, sink.url,
                          destination_config={"batchSize": 1000})
        peaks.append(_peak_of_second_run(driver, setup, warehouse))
    # 58,000 more keys and hashes held at once would take several MB; the stream holds one
    # chunk. What does grow is the 1% that goes out (580 more records).
    assert peaks[1] - peaks[0] < 1_500_000, peaks


def test_the_lease_is_renewed_while_the_diff_runs(driver: EngineDriver, people_sync, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch) -> None:
    from worker import planner

    warehouse.insert(30)
    setup = people_sync()
    driver.run(setup)
    warehouse.execute("UPDATE warehouse.people SET name = 'Changed' WHERE id = 3")
    renewed: list[bool | None] = []
    original = repo.diff_into_ops

    def diff_then_renew(conn, stage, **options):
        counts = original(conn, stage, **options)
        # The heartbeat, from its own connection, while the diff's transaction is still open.
        with transaction() as other:
            other.execute("SET LOCAL lock_timeout = '5s'")
            token = other.execute("SELECT fencing_token FROM runs WHERE id = %s",
                                  (options["run_id"],)).fetchone()[0]
            renewed.append(repo.heartbeat(other, options["run_id"], token, 60))
        return counts

    monkeypatch.setattr(planner.repo, "diff_into_ops", diff_then_renew)
    run = driver.run(setup)
    assert run.status == "succeeded", run.error
    assert renewed == [False]
    assert run.rows_changed == 1


def _stages(*run_ids: str) -> list[str]:
    with transaction() as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'retl_staging' AND c.relname = ANY(%s) ORDER BY 1",
            (list(run_ids),),
        ).fetchall()
    return [row[0] for row in rows]


def test_a_plan_drops_its_stage_made_or_failed(driver: EngineDriver, people_sync, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch) -> None:
    from worker import planner

    warehouse.insert(30)
    setup = people_sync()
    driver.run(setup)
    warehouse.execute("UPDATE warehouse.people SET name = 'Changed' WHERE id = 3")
    seen: list[list[str]] = []
    original = planner._rejects_beside_diff

    def looked(pg, stage, run_id, *args):
        seen.append(_stages(run_id))  # the stage is there while the plan is made
        return original(pg, stage, run_id, *args)

    monkeypatch.setattr(planner, "_rejects_beside_diff", looked)
    made = driver.run(setup)
    assert made.status == "succeeded" and made.rows_changed == 1
    assert seen == [[made.id]] and _stages(made.id) == []

    def fails(*args, **kwargs):
        raise psycopg.errors.DiskFull("no space left on device")

    monkeypatch.setattr(planner.repo, "diff_into_ops", fails)
    failed = driver.run(setup)
    assert failed.status == "failed" and "no space left" in (failed.error or "")
    assert _stages(failed.id) == []


def test_the_reaper_drops_the_stages_that_dead_planners_left(driver: EngineDriver, people_sync, warehouse: Warehouse) -> None:
    warehouse.insert(3)
    setup = people_sync()
    ended = driver.run(setup).id
    running = driver.trigger(setup)
    with transaction() as conn:
        conn.execute("UPDATE runs SET status = 'running' WHERE id = %s", (running,))
        for run_id in (ended, running):
            repo.create_stage(conn, repo.run_stage(run_id))
    assert _stages(ended, running) == sorted([ended, running])
    driver.engine.reap()
    assert _stages(ended, running) == [running]
    with transaction() as conn:
        repo.drop_stage(conn, repo.run_stage(running))
        conn.execute("UPDATE runs SET status = 'cancelled' WHERE id = %s", (running,))


def test_a_postgres_source_read_by_its_primary_key_is_not_searched_for_repeated_keys(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    from worker import planner

    warehouse.execute("ALTER TABLE warehouse.people ADD PRIMARY KEY (id)")
    warehouse.insert(30)
    setup = people_sync()
    driver.run(setup)
    warehouse.execute("UPDATE warehouse.people SET name = 'Changed' WHERE id IN (4, 22)")
    sink.received.clear()
    searched: list[str] = []
    original = planner.repo.stage_has_rejects
    monkeypatch.setattr(planner.repo, "stage_has_rejects",
                        lambda conn, stage: searched.append(str(stage)) or original(conn, stage))
    run = driver.run(setup)
    assert run.status == "succeeded", run.error
    assert searched == []
    assert _sent(sink) == Counter({"4": 1, "22": 1})
    assert (run.rows_read, run.rows_changed, run.rows_unchanged, run.rows_failed) == (30, 2, 28, 0)
    warehouse.execute("ALTER TABLE warehouse.people DROP CONSTRAINT people_pkey")
    warehouse.execute("UPDATE warehouse.people SET name = 'Again' WHERE id = 5")
    assert driver.run(setup).rows_changed == 1
    assert len(searched) == 1  # without the key's index the staged keys are searched again


def _snapshot_rows_estimate() -> float:
    with transaction() as conn:
        return conn.execute(
            "SELECT reltuples FROM pg_class WHERE oid = 'sync_snapshots'::regclass"
        ).fetchone()[0]


def test_a_plan_analyzes_snapshots_postgres_has_no_statistics_of(driver: EngineDriver, people_sync, warehouse: Warehouse, sink: FakeHttpSink) -> None:
    warehouse.insert(300)
    setup = people_sync()
    assert driver.run(setup).rows_written == 300
    # As after a first run of millions of rows with autovacuum off or behind: Postgres would
    # plan the diff for a few thousand snapshot rows.
    with transaction() as conn:
        conn.execute("UPDATE pg_class SET reltuples = -1 WHERE oid = 'sync_snapshots'::regclass")
    warehouse.execute("UPDATE warehouse.people SET name = 'Changed' WHERE id = 4")
    run = driver.run(setup)
    assert (run.status, run.rows_changed, run.rows_unchanged) == ("succeeded", 1, 299)
    assert _snapshot_rows_estimate() == 300
    with transaction() as conn:
        assert not repo.refresh_snapshot_statistics(conn, setup.sync_id, 300)  # fresh


def _estimated_snapshot_rows(sync_id: str) -> float:
    with transaction() as conn:
        plan = conn.execute(
            "EXPLAIN (FORMAT JSON) SELECT 1 FROM sync_snapshots WHERE sync_id = %s", (sync_id,)
        ).fetchone()[0]
    return plan[0]["Plan"]["Plan Rows"]


def _wait_for_counted_changes(rows: int) -> None:
    """Until Postgres's statistics count `rows` changes of the snapshots since their last
    ANALYZE (sessions report their counts a few seconds late)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with transaction() as conn:
            counted = conn.execute(
                "SELECT n_mod_since_analyze FROM pg_stat_user_tables WHERE relname = 'sync_snapshots'"
                " AND schemaname = 'public'"
            ).fetchone()[0]
        if counted >= rows:
            return
        time.sleep(0.2)
    raise AssertionError(f"the statistics counted {counted} changes, not {rows}")


def test_a_plan_analyzes_snapshots_whose_sync_came_after_their_statistics(driver: EngineDriver, workspace_id: str, warehouse: Warehouse, sink: FakeHttpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.repositories.engine import planning

    monkeypatch.setattr(planning, "ANALYZE_FROM_ROWS", 100)  # the rule, on a smaller sync
    warehouse.insert(300)
    older = make_sync(workspace_id, {"url": warehouse.url}, sink.url)
    driver.run(older)
    with transaction() as conn:
        conn.execute("ANALYZE sync_snapshots")
    # A new sync's rows arrive after the statistics: too few for the table's own threshold,
    # but Postgres thinks the new sync holds next to nothing.
    newer = make_sync(workspace_id, {"url": warehouse.url}, sink.url)
    assert driver.run(newer).rows_written == 300
    assert _estimated_snapshot_rows(newer.sync_id) < 300 / 4
    _wait_for_counted_changes(300)
    warehouse.execute("UPDATE warehouse.people SET name = 'Changed' WHERE id = 4")
    run = driver.run(newer)
    assert (run.status, run.rows_changed, run.rows_unchanged) == ("succeeded", 1, 299)
    assert _estimated_snapshot_rows(newer.sync_id) >= 300 / 4
