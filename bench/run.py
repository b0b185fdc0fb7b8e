"""retl's engine benchmark: plan time of a large Postgres source, end-to-end throughput through
Redis and a real `celery worker`, and the incremental second run. Prints one table.

Needs Postgres and Redis (RETL_BENCH_DATABASE_URL, default postgresql://postgres@127.0.0.1:5432/
postgres; RETL_BENCH_REDIS_URL, default redis://127.0.0.1:6379/14). See bench/README.md."""

from __future__ import annotations

import argparse
import datetime as dt
import decimal
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ADMIN_URL = os.environ.get("RETL_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("RETL_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
# A suffix keeps benchmarks of several checkouts on one Postgres apart.
_SUFFIX = os.environ.get("RETL_BENCH_DB_SUFFIX", "")
STATE_DB = f"retl_bench_state{_SUFFIX}"
WAREHOUSE_DB = f"retl_bench_warehouse{_SUFFIX}"
POST_SIZE = 1000


def _url(database: str) -> str:
    head, _, _ = ADMIN_URL.rpartition("/")
    return f"{head}/{database}"


# The engine reads its settings once, from the environment: set them before importing it.
os.environ.update(
    RETL_DATABASE_URL=_url(STATE_DB),
    RETL_REDIS_URL=REDIS_URL,
    RETL_SECRET_KEY=os.environ.get("RETL_SECRET_KEY", "bench-secret-key"),
    RETL_QUEUE="retl-bench",
    RETL_LOG_LEVEL="WARNING",
    # The warehouse and the sink run on this machine.
    RETL_EGRESS_ALLOW=os.environ.get("RETL_EGRESS_ALLOW", "127.0.0.0/8,::1,localhost"),
    # The benchmark's warehouse is its own database on a local server, read as its owner.
    RETL_ALLOW_PRIVILEGED_SOURCES="1",
)

import duckdb  # noqa: E402
import psycopg  # noqa: E402
import redis  # noqa: E402
import requests  # noqa: E402

from shared.db import transaction  # noqa: E402
from shared.migrate import migrate  # noqa: E402
from shared.services import connections, syncs  # noqa: E402
from shared.services import runs as run_service  # noqa: E402
from shared.services.auth import create_api_key  # noqa: E402
from tests.fakes.http_sink import FakeHttpSink  # noqa: E402

PEOPLE = ("SELECT id, email, name, score, plan, active, updated_at FROM people")
MAPPINGS = [
    {"source": "id", "destination": "external_id", "key": True},
    {"source": "email", "destination": "email"},
    {"source": "name", "destination": "name"},
    {"source": "score", "destination": "score"},
    {"source": "plan", "destination": "plan"},
    {"source": "active", "destination": "active"},
    {"source": "updated_at", "destination": "updated_at"},
]


@dataclass
class Row:
    case: str
    value: str
    goal: str
    detail: str = ""


def recreate(database: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{database}"')


def build_postgres_people(rows: int) -> None:
    with psycopg.connect(_url(WAREHOUSE_DB), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS people")
        conn.execute(
            "CREATE TABLE people AS SELECT i AS id, 'user' || i || '@example.com' AS email,"
            " 'User ' || i AS name, (i %% 1000) * 1.25 AS score,"
            " (ARRAY['free','pro','team'])[1 + i %% 3] AS plan, i %% 7 <> 0 AS active,"
            " timestamptz '2025-01-01' + i * interval '1 second' AS updated_at"
            " FROM generate_series(1, %s) AS i",
            (rows,),
        )
        conn.execute("ALTER TABLE people ADD PRIMARY KEY (id)")
        conn.execute("VACUUM ANALYZE people")


def change_postgres_people(fraction: float) -> int:
    with psycopg.connect(_url(WAREHOUSE_DB), autocommit=True) as conn:
        step = int(1 / fraction)
        return conn.execute(
            "UPDATE people SET name = name || ' (changed)' WHERE id %% %s = 0", (step,)
        ).rowcount


def copy_floor_seconds() -> float:
    """Reading the same rows with COPY (query) TO STDOUT: the least any extract can cost."""
    with psycopg.connect(_url(WAREHOUSE_DB)) as conn:
        started = time.perf_counter()
        with conn.cursor().copy(f"COPY ({PEOPLE}) TO STDOUT") as copy:
            for _ in copy:
                pass
        return time.perf_counter() - started


def make_sync(workspace_id: str, source: tuple[str, dict], sink_url: str, name: str) -> str:
    src = connections.create(workspace_id, "source", f"{name} source", *source)
    dst = connections.create(workspace_id, "destination", f"{name} sink", "http", {
        "url": sink_url, "batchSize": POST_SIZE, "rateLimitPerSecond": 100000,
    })
    sync = syncs.create(workspace_id, {
        "name": name, "sourceId": src.record.id, "destinationId": dst.record.id,
        "objectName": "records", "sourceQuery": PEOPLE, "fieldMappings": MAPPINGS,
        "syncMode": "upsert",
    })
    return sync.id


def run_status(run_id: str) -> tuple[str, int, str | None, float | None]:
    """Status, rows written, error and, once ended, the end as a Unix time (Postgres's clock,
    the machine's)."""
    with transaction() as conn:
        row = conn.execute(
            "SELECT status, rows_written, error, extract(epoch FROM finished_at)"
            " FROM runs WHERE id = %s", (run_id,)
        ).fetchone()
    return row[0], row[1], row[2], None if row[3] is None else float(row[3])


def plan_in_subprocess(workspace_id: str, sync_id: str) -> dict:
    run_id = run_service.trigger(workspace_id, [sync_id], full_refresh=False)[0].id
    _drop_queued_messages()
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "plan_worker.py"), run_id],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    status, written, error, _ = run_status(run_id)
    result.update(status=status, written=written, error=error)
    return result


def _drop_queued_messages() -> None:
    # The plan cases run the engine directly; the doorbell trigger rang is not needed.
    redis.Redis.from_url(REDIS_URL).delete("retl-bench")


def bench_plan(rows: int, workspace_id: str, sink: FakeHttpSink) -> list[Row]:
    print(f"building a {rows:,}-row Postgres table…", file=sys.stderr)
    build_postgres_people(rows)
    sync_id = make_sync(workspace_id, ("postgres", {"url": _url(WAREHOUSE_DB)}), sink.url, "pg")
    first = plan_in_subprocess(workspace_id, sync_id)
    assert first["status"] == "succeeded", first
    # The first plan after the first run reads snapshot rows no query has read yet, setting
    # their hint bits (and analyzes the snapshot): shown apart; the next is the usual plan.
    change_postgres_people(0.01)
    after_first = plan_in_subprocess(workspace_id, sync_id)
    assert after_first["status"] == "succeeded", after_first
    changed = change_postgres_people(0.01)
    sink.received.clear()
    floors = [copy_floor_seconds()]  # on both sides: the machine's speed drifts
    second = plan_in_subprocess(workspace_id, sync_id)
    floors.append(copy_floor_seconds())
    assert second["status"] == "succeeded", second
    sent = sum(len(b.records) for b in sink.received)
    floor = sum(floors) / 2
    return [
        Row(f"plan, {rows:,} rows, first run (all added)", f"{first['plan_s']:.1f} s",
            "", f"then {first['batches']} batches written in {first['write_s']:.1f} s;"
            f" peak RSS {first['peak_rss_mb']:.0f} MB"),
        Row(f"plan, {rows:,} rows, 1% changed", f"{second['plan_s']:.1f} s", "< 15 s",
            f"{changed:,} changed, {sent:,} sent; the first after the first run"
            f" {after_first['plan_s']:.1f} s"),
        Row("  ratio to COPY (query) TO STDOUT", f"{second['plan_s'] / floor:.1f}×",
            "", f"COPY floor {floor:.2f} s (before {floors[0]:.2f} s, after {floors[1]:.2f} s)"),
        Row("  peak RSS of the worker (plan + writes)", f"{second['peak_rss_mb']:.0f} MB", "< 400 MB"),
    ]


def build_duckdb_people(path: str, rows: int) -> None:
    with duckdb.connect(path) as conn:
        conn.execute("DROP TABLE IF EXISTS people")
        conn.execute(
            "CREATE TABLE people AS SELECT i::INTEGER AS id, 'user' || i || '@example.com' AS email,"
            " 'User ' || i AS name, (i % 1000) * 1.25 AS score,"
            " ['free','pro','team'][1 + i % 3] AS plan, i % 7 <> 0 AS active,"
            " TIMESTAMPTZ '2025-01-01' + to_seconds(i) AS updated_at FROM range(1, ?) t(i)",
            [rows + 1],
        )


def json_form(value: object) -> object:
    """The JSON a receiver expects for what JSON has no type for, as retl's HTTP destination
    sends it: numbers for decimals, ISO 8601 for dates, UTC with "Z" for aware datetimes."""
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC).replace(tzinfo=None).isoformat() + "Z"
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def plain_loop(path: str, url: str) -> float:
    """The baseline: read the rows, POST them 1,000 at a time with one requests.Session, as the
    same JSON retl sends (checked: the receiver ends up holding the same records)."""
    session = requests.Session()
    names = ["external_id", "email", "name", "score", "plan", "active", "updated_at"]
    encoder = json.JSONEncoder(separators=(",", ":"), default=json_form)
    started = time.perf_counter()
    with duckdb.connect(path, read_only=True) as conn:
        result = conn.execute(PEOPLE)
        while chunk := result.fetchmany(POST_SIZE):
            body = encoder.encode([dict(zip(names, row, strict=True)) for row in chunk]).encode()
            response = session.post(url, data=body, headers={
                "Content-Type": "application/json", "X-Retl-Operation": "upsert",
                "X-Retl-Key-Field": "external_id",
            })
            response.raise_for_status()
    return time.perf_counter() - started


class CeleryWorker:
    def __init__(self, log_path: Path, concurrency: int) -> None:
        self.log_path = log_path
        self.process = subprocess.Popen(
            [str(Path(sys.executable).with_name("celery")), "-A", "worker.app", "worker",
             "-Q", "retl-bench", "--concurrency", str(concurrency), "-P", "prefork",
             "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "warning"],
            env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT, start_new_session=True,
            stdout=log_path.open("w"), stderr=subprocess.STDOUT,
        )
        time.sleep(3)  # start-up; the first task waits in Redis until a child takes it
        if self.process.poll() is not None:
            raise RuntimeError(f"celery worker died:\n{log_path.read_text()}")

    def peak_rss_mb(self) -> float:
        """The largest peak RSS (VmHWM) of the worker's processes."""
        peaks = []
        for pid in [self.process.pid, *self._children()]:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peaks.append(int(line.split()[1]) / 1024)
            except FileNotFoundError:
                continue
        return max(peaks, default=0.0)

    def _children(self) -> list[int]:
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, IndexError, ProcessLookupError):
                continue
            if int(fields[1]) == self.process.pid:
                children.append(int(stat.parent.name))
        return children

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)


def run_timeline(run_id: str) -> str:
    """When, after the run was created, its first and last batches were stored (planning) and
    its last batch was recorded as written: which side of the pipeline ends last."""
    with transaction() as conn:
        first, stored, written = conn.execute(
            "SELECT extract(epoch FROM min(b.enqueued_at) - r.created_at),"
            " extract(epoch FROM max(b.enqueued_at) - r.created_at),"
            " extract(epoch FROM max(b.finished_at) - r.created_at)"
            " FROM run_batches b JOIN runs r ON r.id = b.run_id WHERE b.run_id = %s"
            " GROUP BY r.created_at",
            (run_id,),
        ).fetchone()
    return (f"batches stored {float(first):.2f}–{float(stored):.2f} s,"
            f" last written {float(written):.2f} s")


# The end of a run is read from its row (finished_at), so polling for it can be unhurried:
# a poll costs the benchmark process and Postgres CPU that the worker would otherwise have.
POLL_S = 0.05


def timed_run(workspace_id: str, sync_id: str) -> tuple[float, str, int, str]:
    started = time.time()
    run_id = run_service.trigger(workspace_id, [sync_id], full_refresh=False)[0].id
    while True:
        status, written, error, ended = run_status(run_id)
        if status in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(POLL_S)
    if status != "succeeded":
        raise RuntimeError(f"run {run_id} {status}: {error}")
    return (ended or time.time()) - started, status, written, run_id


WARM_UP_ROWS = 5 * POST_SIZE


def warm_up(workspace_id: str, workdir: Path, sink: FakeHttpSink) -> None:
    """One small run of a sync of its own through the worker before the measured one, so that
    retl is measured warm, as the plain loop is (best of two): its processes have run a task,
    opened their connections and loaded what a run loads."""
    path = str(workdir / "warm-up.duckdb")
    build_duckdb_people(path, WARM_UP_ROWS)
    sync_id = make_sync(workspace_id, ("duckdb", {"path": path}), sink.url, "warm-up")
    timed_run(workspace_id, sync_id)
    sink.store.clear()
    sink.received.clear()


def bench_end_to_end(
    rows: int, workspace_id: str, workdir: Path, concurrency: int, pairs: int
) -> list[Row]:
    """`pairs` rounds of (plain loop, then a first run of a new sync through the worker), so
    that both sides of each ratio meet the machine in the same minute; the median pair is
    reported, with the range of the ratios."""
    path = str(workdir / "people.duckdb")
    build_duckdb_people(path, rows)
    with FakeHttpSink(results_path=None) as sink:
        plain_loop(path, sink.url)  # warm: DuckDB's file cache, the session, the receiver
        sent_by_plain_loop = dict(sink.store)
        worker = CeleryWorker(workdir / "worker.log", concurrency)
        try:
            warm_up(workspace_id, workdir, sink)
            measured = []
            for pair in range(pairs):
                sink.store.clear()
                sink.received.clear()
                baseline_s = plain_loop(path, sink.url)
                sink.store.clear()
                sink.received.clear()
                sync_id = make_sync(workspace_id, ("duckdb", {"path": path}), sink.url,
                                    f"duck-{pair}")
                retl_s, _, written, run_id = timed_run(workspace_id, sync_id)
                assert written == rows and len(sink.store) == rows, (written, len(sink.store))
                assert sink.store == sent_by_plain_loop, "retl and the plain loop sent different records"
                measured.append((baseline_s / retl_s, baseline_s, retl_s, run_timeline(run_id)))
            with duckdb.connect(path) as conn:
                conn.execute("UPDATE people SET name = name || ' (changed)' WHERE id % 100 = 0")
            sink.received.clear()
            second_s, _, second_written, _ = timed_run(workspace_id, sync_id)
            sent = sum(len(b.records) for b in sink.received)
            peak = worker.peak_rss_mb()
        finally:
            worker.stop()
    measured.sort()
    ratio, baseline_s, retl_s, timeline = measured[len(measured) // 2]
    ratios = f"{measured[0][0]:.2f}–{measured[-1][0]:.2f}" if len(measured) > 1 else ""
    baseline_rate, retl_rate = rows / baseline_s, rows / retl_s
    return [
        Row(f"plain loop, {rows:,} rows, DuckDB → HTTP, {POST_SIZE}/POST", f"{baseline_rate:,.0f} rows/s",
            "", f"{baseline_s:.2f} s"),
        Row(f"retl end to end (trigger → succeeded), worker concurrency {concurrency}",
            f"{retl_rate:,.0f} rows/s", "", f"{retl_s:.2f} s; {timeline}"),
        Row("  ratio retl / plain loop", f"{ratio:.2f}", "≥ 0.9",
            f"median of {len(measured)} pairs" + (f", range {ratios}" if ratios else "")),
        Row("second run after a 1% change", f"{second_s:.2f} s", "< 1 s",
            f"{sent:,} sent, {second_written:,} written"),
        Row("  peak RSS of the worker (all runs)", f"{peak:.0f} MB", ""),
    ]


def print_table(rows: list[Row]) -> None:
    widths = [max(len(getattr(r, f)) for r in rows) for f in ("case", "value", "goal")]
    header = ("case", "measured", "goal")
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " | detail")
    print("-+-".join("-" * w for w in widths) + "-+-------")
    for r in rows:
        print(" | ".join(v.ljust(w) for v, w in zip((r.case, r.value, r.goal), widths, strict=True))
              + f" | {r.detail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plan-rows", type=int, default=1_000_000)
    parser.add_argument("--e2e-rows", type=int, default=100_000)
    parser.add_argument("--e2e-pairs", type=int, default=5,
                        help="rounds of plain loop then retl; the median is reported")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--skip-plan", action="store_true")
    parser.add_argument("--skip-e2e", action="store_true")
    args = parser.parse_args()

    recreate(STATE_DB)
    recreate(WAREHOUSE_DB)
    migrate(_url(STATE_DB))
    redis.Redis.from_url(REDIS_URL).flushdb()
    workspace_id = create_api_key("bench").workspace_id
    table: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="retl-bench-") as tmp:
        if not args.skip_plan:
            with FakeHttpSink(results_path=None) as sink:
                table += bench_plan(args.plan_rows, workspace_id, sink)
        if not args.skip_e2e:
            table += bench_end_to_end(
                args.e2e_rows, workspace_id, Path(tmp), args.concurrency, max(1, args.e2e_pairs)
            )
    print_table(table)


if __name__ == "__main__":
    main()
