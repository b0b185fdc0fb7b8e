"""retl at scale, in one table: a run's time by fleet size against a latency-bound receiver
(with the time the allowance and the fleet permit beside it), the busiest window of a
rate-limited destination against its limit, and planning a large Postgres source against
`COPY (query) TO STDOUT`. See bench/README.md ("Scale").

Needs Postgres and Redis like bench/run.py (RETL_BENCH_DATABASE_URL, RETL_BENCH_REDIS_URL)."""

from __future__ import annotations

import argparse
import bisect
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402
import psycopg  # noqa: E402
import redis  # noqa: E402

from bench.run import (  # noqa: E402 - bench.run sets the engine's environment first
    MAPPINGS,
    PEOPLE,
    REDIS_URL,
    STATE_DB,
    WAREHOUSE_DB,
    CeleryWorker,
    Row,
    _url,
    build_duckdb_people,
    build_postgres_people,
    change_postgres_people,
    copy_floor_seconds,
    plan_in_subprocess,
    print_table,
    recreate,
    timed_run,
)
from connectors.sources.base import Source  # noqa: E402
from connectors.sources.duckdb import DuckDbSource  # noqa: E402
from connectors.sources.postgres import PostgresSource  # noqa: E402
from shared.db import transaction  # noqa: E402
from shared.migrate import migrate  # noqa: E402
from shared.services import connections, syncs  # noqa: E402
from shared.services.auth import create_api_key  # noqa: E402
from tests.fakes.base import Request, Response  # noqa: E402
from tests.fakes.http_sink import FakeHttpSink  # noqa: E402
from worker import mapping  # noqa: E402

LATENCY_S = 0.05
RECORDS_PER_REQUEST = 100
ALLOWANCE_CONCURRENT = 32


class TimedSink(FakeHttpSink):
    """A receiver that answers each request after `delay_s` and notes when each arrived."""

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__(results_path=None)
        self.delay_s = delay_s
        self.arrivals: list[float] = []
        self._arrivals_lock = threading.Lock()

    def handle(self, request: Request) -> Response:
        with self._arrivals_lock:
            self.arrivals.append(time.monotonic())
        if self.delay_s:
            time.sleep(self.delay_s)
        return super().handle(request)


def sync_to(workspace_id: str, source: tuple[str, dict], url: str, name: str,
            destination: dict) -> str:
    src = connections.create(workspace_id, "source", f"{name} source", *source)
    dst = connections.create(workspace_id, "destination", f"{name} sink", "http",
                             {"url": url, **destination})
    return syncs.create(workspace_id, {
        "name": name, "sourceId": src.record.id, "destinationId": dst.record.id,
        "objectName": "records", "sourceQuery": PEOPLE, "fieldMappings": MAPPINGS,
        "syncMode": "upsert",
    }).id


def planning_seconds(run_id: str) -> float:
    """From the run's creation to its last batch stored."""
    with transaction() as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM max(b.enqueued_at) - r.created_at)"
            " FROM run_batches b JOIN runs r ON r.id = b.run_id WHERE b.run_id = %s"
            " GROUP BY r.created_at", (run_id,),
        ).fetchone()
    return float(row[0])


FLEETS = [("one worker, concurrency 2", [2]),
          ("+ a worker of concurrency 8", [2, 8]),
          ("+ two workers of concurrency 8", [2, 8, 8])]


def bench_fleet(rows: int, workspace_id: str, workdir: Path) -> list[Row]:
    path = str(workdir / "fleet.duckdb")
    build_duckdb_people(path, rows)
    requests_needed = -(-rows // RECORDS_PER_REQUEST)
    table = []
    with TimedSink(LATENCY_S) as sink:
        workers: list[CeleryWorker] = []
        try:
            for index, (label, sizes) in enumerate(FLEETS):
                while len(workers) < len(sizes):
                    workers.append(CeleryWorker(workdir / f"worker-{len(workers)}.log",
                                                sizes[len(workers)]))
                processes = sum(sizes)
                sink.store.clear()
                sync_id = sync_to(workspace_id, ("duckdb", {"path": path}), sink.url,
                                  f"fleet-{index}", {
                                      "batchSize": RECORDS_PER_REQUEST,
                                      "maxConcurrency": ALLOWANCE_CONCURRENT,
                                      "rateLimitPerSecond": 100_000})
                took, _, written, run_id = timed_run(workspace_id, sync_id)
                assert written == rows and len(sink.store) == rows, (written, len(sink.store))
                plan_s = planning_seconds(run_id)
                bound = plan_s + requests_needed * LATENCY_S / min(processes, ALLOWANCE_CONCURRENT)
                table.append(Row(
                    f"{rows:,} rows, {LATENCY_S * 1000:.0f} ms a request: {label}"
                    f" ({processes} processes)", f"{took:.2f} s",
                    "≤ 1.5× bound" if processes > 2 else "",
                    f"bound {bound:.2f} s (planning {plan_s:.2f} s + {requests_needed} requests ×"
                    f" {LATENCY_S * 1000:.0f} ms / {min(processes, ALLOWANCE_CONCURRENT)});"
                    f" {took / bound:.2f}× the bound",
                ))
        finally:
            for worker in workers:
                worker.stop()
    return table


def busiest_window(arrivals: list[float], seconds: float) -> int:
    times = sorted(arrivals)
    return max(bisect.bisect_left(times, t + seconds) - i for i, t in enumerate(times))


def bench_window(workspace_id: str, workdir: Path, limit: int, per_seconds: float,
                 requests_sent: int) -> list[Row]:
    rows = requests_sent * 10
    path = str(workdir / "window.duckdb")
    build_duckdb_people(path, rows)
    with TimedSink() as sink:
        workers = [CeleryWorker(workdir / f"window-{n}.log", 4) for n in range(2)]
        try:
            sync_id = sync_to(workspace_id, ("duckdb", {"path": path}), sink.url, "window", {
                "batchSize": 10, "rateLimit": {"requests": limit, "perSeconds": per_seconds}})
            took, _, written, _ = timed_run(workspace_id, sync_id)
        finally:
            for worker in workers:
                worker.stop()
    assert written == rows
    busiest = busiest_window(sink.arrivals, per_seconds)
    mean = len(sink.arrivals) / (max(sink.arrivals) - min(sink.arrivals)) * per_seconds
    return [Row(f"busiest {per_seconds:g}-s window, limit {limit} per {per_seconds:g} s,"
                " 2 workers × 4", f"{busiest} requests", f"≤ {limit}",
                f"{len(sink.arrivals)} requests in {took:.1f} s, mean {mean:.1f} per window")]


def seed_snapshot(sync_id: str, fast: bool, source: Source | None = None) -> None:
    """The snapshot a first run would leave, written straight from the source's own key and
    hash stream (a first run of ten million rows through a receiver would take minutes);
    without `fast`, md5 hashes, as snapshots written before typed hashes hold. The source is
    the warehouse's Postgres unless given."""
    source = source or PostgresSource({"url": _url(WAREHOUSE_DB)}, allow_privileged=True)
    options = {"fast": True} if fast else {}
    columns = source.columns(PEOPLE)
    plan = mapping.plan_for(MAPPINGS, columns, object_name="records", mode="upsert")
    with psycopg.connect(_url(STATE_DB)) as conn:
        with conn.cursor().copy(
            "COPY sync_snapshots (sync_id, record_key, content_hash) FROM STDIN"
        ) as copy:
            for chunk in source.stream_key_hashes(PEOPLE, plan.key_column, plan.read_columns,
                                                  salt=plan.fingerprint, **options):
                for key, content_hash in chunk:
                    copy.write_row((sync_id, key, content_hash))
    source.close()


def bench_big_plan(rows: int, workspace_id: str, fast: bool) -> list[Row]:
    print(f"building a {rows:,}-row Postgres table…", file=sys.stderr)
    build_postgres_people(rows)
    with TimedSink() as sink:
        sync_id = sync_to(workspace_id, ("postgres", {"url": _url(WAREHOUSE_DB)}), sink.url,
                          "big", {"batchSize": 1000, "rateLimitPerSecond": 100_000})
        seed_snapshot(sync_id, fast)
        # The snapshot's first plan reads rows no query has read yet, so it sets their hint
        # bits (and analyzes the table): measured apart, the second is the sync's usual plan.
        change_postgres_people(0.01)
        first = plan_in_subprocess(workspace_id, sync_id)
        assert first["status"] == "succeeded", first
        sink.received.clear()
        changed = change_postgres_people(0.01)
        # The machine's speed drifts over minutes: the floor is taken on both sides of the plan.
        floors = [copy_floor_seconds()]
        result = plan_in_subprocess(workspace_id, sync_id)
        floors.append(copy_floor_seconds())
        assert result["status"] == "succeeded", result
        sent = sum(len(b.records) for b in sink.received)
    floor = sum(floors) / 2
    return [
        Row(f"plan, {rows:,} rows, 1% changed, {'typed' if fast else 'md5'} hashes",
            f"{result['plan_s']:.1f} s", "",
            f"{changed:,} changed, {sent:,} sent; the snapshot's first plan {first['plan_s']:.1f} s"),
        Row("  ratio to COPY (query) TO STDOUT", f"{result['plan_s'] / floor:.1f}×", "≤ 3×",
            f"COPY floor {floor:.2f} s (before the plan {floors[0]:.2f} s, after {floors[1]:.2f} s)"),
        Row("  peak RSS of the worker (plan + writes)", f"{result['peak_rss_mb']:.0f} MB",
            "< 400 MB"),
    ]


def bench_duckdb_plan(rows: int, workspace_id: str, workdir: Path) -> list[Row]:
    """A DuckDB file of `rows` rows whose snapshot holds every row, then 1% changed: the second
    run planned and its batches sent (sequentially, in the planning process)."""
    path = str(workdir / "plan.duckdb")
    build_duckdb_people(path, rows)
    with TimedSink() as sink:
        sync_id = sync_to(workspace_id, ("duckdb", {"path": path}), sink.url, "duck-plan",
                          {"batchSize": 1000, "rateLimitPerSecond": 100_000})
        seed_snapshot(sync_id, True, DuckDbSource({"path": path}))
        results = []
        for _ in range(2):  # the snapshot's first plan, then the measured one (see above)
            sink.received.clear()
            with duckdb.connect(path) as conn:
                changed = conn.execute(
                    "UPDATE people SET name = name || ' (changed)' WHERE id % 100 = 0"
                ).fetchone()[0]
            results.append(plan_in_subprocess(workspace_id, sync_id))
            assert results[-1]["status"] == "succeeded", results[-1]
        first, result = results
        sent = sum(len(b.records) for b in sink.received)
    took, first_took = (r["plan_s"] + r["write_s"] for r in (result, first))
    return [Row(f"DuckDB plan and send, {rows:,} rows, 1% changed", f"{took:.1f} s", "< 2 s",
                f"plan {result['plan_s']:.1f} s + writes {result['write_s']:.1f} s;"
                f" {changed:,} changed, {sent:,} sent; the snapshot's first {first_took:.1f} s")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fleet-rows", type=int, default=20_000)
    parser.add_argument("--window-requests", type=int, default=120)
    parser.add_argument("--plan-rows", type=int, default=10_000_000)
    parser.add_argument("--skip-fleet", action="store_true")
    parser.add_argument("--skip-window", action="store_true")
    parser.add_argument("--skip-plan", action="store_true")
    parser.add_argument("--duckdb-plan-rows", type=int, default=1_000_000)
    parser.add_argument("--skip-duckdb-plan", action="store_true")
    parser.add_argument("--md5-too", action="store_true",
                        help="also plan against a snapshot of md5 hashes (the older form)")
    args = parser.parse_args()

    recreate(STATE_DB)
    recreate(WAREHOUSE_DB)
    migrate(_url(STATE_DB))
    redis.Redis.from_url(REDIS_URL).flushdb()
    workspace_id = create_api_key("bench").workspace_id
    table: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="retl-scale-") as tmp:
        if not args.skip_fleet:
            table += bench_fleet(args.fleet_rows, workspace_id, Path(tmp))
        if not args.skip_window:
            table += bench_window(workspace_id, Path(tmp), 20, 1.0, args.window_requests)
        if not args.skip_duckdb_plan:
            table += bench_duckdb_plan(args.duckdb_plan_rows, workspace_id, Path(tmp))
        if not args.skip_plan:
            table += bench_big_plan(args.plan_rows, workspace_id, fast=True)
            if args.md5_too:
                table += bench_big_plan(args.plan_rows, workspace_id, fast=False)
    print_table(table)


if __name__ == "__main__":
    main()
