"""retl's API load benchmark: req/s and p50/p99 latency of `retl api` for an authenticated
`GET /syncs` (20 syncs) and for a mixed list/get/trigger load at a fixed rate, each next to a
minimal Flask app answering the same envelopes under the same server (gunicorn, same workers)
in the same run. Loopback only, bounded in time. Prints one table.

Needs Postgres (RETL_BENCH_DATABASE_URL, default postgresql://postgres@127.0.0.1:5432/postgres)
and Redis (RETL_BENCH_REDIS_URL, default redis://127.0.0.1:6379/14). Uses `wrk` for the
closed-loop test when it is installed, else a Python load generator (said in the output). See
bench/README.md."""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ADMIN_URL = os.environ.get("RETL_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("RETL_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
STATE_DB = "retl_bench_api"
API = "/api/reverse-etl"
SYNCS = 20
STARTUP_SECONDS = 60
UNKEPT = "retl, no kept answers"


def _url(database: str) -> str:
    head, _, _ = ADMIN_URL.rpartition("/")
    return f"{head}/{database}"


os.environ.update(
    RETL_DATABASE_URL=_url(STATE_DB),
    RETL_REDIS_URL=REDIS_URL,
    RETL_SECRET_KEY=os.environ.get("RETL_SECRET_KEY", "bench-secret-key"),
    RETL_QUEUE="retl-bench-api",
    RETL_LOG_LEVEL="WARNING",
    # The syncs' receiver is named on this machine (never called: runs are only queued).
    RETL_EGRESS_ALLOW=os.environ.get("RETL_EGRESS_ALLOW", "127.0.0.0/8,::1,localhost"),
)

import psycopg  # noqa: E402
import requests  # noqa: E402


@dataclass
class Result:
    requests: int
    seconds: float
    latencies_ms: list[float]
    errors: int
    tool: str
    by_kind: dict[str, list[float]] | None = None  # the mixed load's latencies per request kind

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


# --- the minimal app ----------------------------------------------------------------------


def minimal_app(answers_path: str):
    """Flask answering retl's recorded envelopes for the same routes: the floor of any Flask
    app under the same server."""
    from flask import Flask, jsonify

    answers = json.loads(Path(answers_path).read_text())
    app = Flask("minimal")

    @app.get(f"{API}/syncs")
    def list_syncs():
        return jsonify(answers["list"])

    @app.get(f"{API}/syncs/<sync_id>")
    def get_sync(sync_id: str):
        return jsonify(answers["get"])

    @app.post(f"{API}/sync/run")
    def trigger():
        return jsonify(answers["trigger"]), 202

    return app


# --- set-up -------------------------------------------------------------------------------


def prepare() -> tuple[str, list[str]]:
    """A fresh state database with 20 syncs; the API key and the sync ids."""
    from shared.migrate import migrate
    from shared.services import connections, syncs
    from shared.services.auth import create_api_key

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{STATE_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{STATE_DB}"')
    migrate(_url(STATE_DB))
    issued = create_api_key("bench")
    workspace = issued.workspace_id
    connections.create(workspace, "source", "warehouse", "duckdb", {"path": ":memory:"})
    destination = connections.create(
        workspace, "destination", "receiver", "http", {"url": "http://127.0.0.1:9/records"}
    )
    sync_ids = []
    for n in range(SYNCS):
        sync = syncs.create(workspace, {
            "name": f"accounts_{n:02d}",
            "sourceQuery": "SELECT account_id, name, email FROM accounts",
            "destinationId": destination.record.id,
            "objectName": "records",
            "fieldMappings": [
                {"source": "account_id", "destination": "external_id", "key": True},
                {"source": "name", "destination": "name"},
                {"source": "email", "destination": "email"},
            ],
            "syncMode": "upsert",
            "schedule": {"type": "cron", "expression": "15 */4 * * *", "timezone": "UTC"},
        })
        sync_ids.append(sync.id)
    return issued.key, sync_ids


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], port: int, log_path: Path, **env: str) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env}, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited: {log_path.read_text()[-2000:]}")
        try:
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return process
        except requests.ConnectionError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("server did not start in time")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


# --- load generators ----------------------------------------------------------------------


def wrk(url: str, key: str, seconds: int, threads: int, connections: int) -> Result:
    """Closed loop with wrk: as many requests as `connections` keep-alive connections get."""
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
         "-H", f"Authorization: Bearer {key}", url],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    ).stdout

    def _ms(label: str) -> float:
        match = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    # wrk reports percentiles, not samples: keep the two as a two-point distribution.
    p50, p99 = _ms("50%"), _ms("99%")
    result = Result(total, seconds, [], errors, "wrk")
    result.latencies_ms = [p50] * 98 + [p99] * 2
    return result


def python_closed_loop(url: str, key: str, seconds: int, connections: int) -> Result:
    """Closed loop in Python when wrk is missing: `connections` threads, one session each."""
    deadline = time.monotonic() + seconds
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def _run() -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {key}"
        mine: list[float] = []
        bad = 0
        while time.monotonic() < deadline:
            began = time.perf_counter()
            try:
                ok = session.get(url, timeout=10).status_code == 200
            except requests.RequestException:
                ok = False
            mine.append((time.perf_counter() - began) * 1000)
            bad += not ok
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    started = time.monotonic()
    workers = [threading.Thread(target=_run) for _ in range(connections)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(seconds + 30)
    return Result(len(latencies), time.monotonic() - started, latencies, errors[0], "python")


def fixed_rate_mixed(base: str, key: str, sync_ids: list[str], rate: int, seconds: int) -> Result:
    """Open loop at `rate` req/s: 60% list, 30% get, 10% trigger. Latency counts from when a
    request was due, so a server falling behind shows in p99 (no coordinated omission)."""
    total = rate * seconds
    rng = random.Random(7)
    plan = []
    for n in range(total):
        draw = rng.random()
        sync_id = rng.choice(sync_ids)
        if draw < 0.6:
            plan.append((n / rate, "list", "GET", f"{base}{API}/syncs", None))
        elif draw < 0.9:
            plan.append((n / rate, "get", "GET", f"{base}{API}/syncs/{sync_id}", None))
        else:
            plan.append((n / rate, "trigger", "POST", f"{base}{API}/sync/run", {"syncId": sync_id}))
    latencies: list[float] = []
    by_kind: dict[str, list[float]] = {"list": [], "get": [], "trigger": []}
    errors = [0]
    lock = threading.Lock()
    cursor = [0]
    started = time.monotonic() + 0.2

    def _run() -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {key}"
        while True:
            with lock:
                if cursor[0] >= len(plan):
                    return
                due, kind, method, url, body = plan[cursor[0]]
                cursor[0] += 1
            wait = started + due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                status = session.request(method, url, json=body, timeout=10).status_code
                ok = status in (200, 202)
            except requests.RequestException:
                ok = False
            took = (time.monotonic() - (started + due)) * 1000
            with lock:
                latencies.append(took)
                by_kind[kind].append(took)
                errors[0] += not ok

    workers = [threading.Thread(target=_run) for _ in range(32)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(seconds + 60)
    return Result(len(latencies), time.monotonic() - started, latencies, errors[0],
                  "python, fixed rate", by_kind)


# --- the run ------------------------------------------------------------------------------


def _serve_command(port: int, workers: int, threads: int, answers: str | None) -> list[str]:
    if answers is None:
        return [sys.executable, "-m", "cli", "api", "--port", str(port), "--workers", str(workers),
                "--threads", str(threads)]
    return [sys.executable, __file__, "--serve-minimal", answers, "--port", str(port),
            "--workers", str(workers), "--threads", str(threads)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=6, help="length of each measurement")
    parser.add_argument("--rounds", type=int, default=3, help="turns each server takes per case")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rate", type=int, default=200, help="req/s of the mixed load")
    parser.add_argument("--python", action="store_true", help="the Python generator even if wrk exists")
    parser.add_argument("--serve-minimal", metavar="ANSWERS", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve_minimal:
        from api.serve import serve

        serve("127.0.0.1", args.port, args.workers, args.threads,
              app_factory=lambda: minimal_app(args.serve_minimal))
        return

    load_before = os.getloadavg()[0]
    key, sync_ids = prepare()
    use_wrk = shutil.which("wrk") is not None and not args.python
    if not use_wrk:
        print("wrk is not installed (apt-get install wrk): the closed loop uses the Python generator")
    work = Path(tempfile.mkdtemp(prefix="retl-bench-api-"))
    results: dict[tuple[str, str], list[Result]] = {}
    retl_port, minimal_port, unkept_port = _free_port(), _free_port(), _free_port()
    retl = start(_serve_command(retl_port, args.workers, args.threads, None), retl_port, work / "retl.log")
    # The same server keeping no answers (api/answers.py): every read reads, converts and
    # encodes its rows, as a read right after a change to the workspace's syncs does.
    unkept = start(_serve_command(unkept_port, args.workers, args.threads, None), unkept_port,
                   work / "unkept.log", RETL_API_ANSWER_CACHE_MB="0")
    servers = (("minimal", minimal_port), ("retl", retl_port), (UNKEPT, unkept_port))
    try:
        base = f"http://127.0.0.1:{retl_port}"
        headers = {"Authorization": f"Bearer {key}"}
        answers = {
            "list": requests.get(f"{base}{API}/syncs", headers=headers, timeout=10).json(),
            "get": requests.get(f"{base}{API}/syncs/{sync_ids[0]}", headers=headers, timeout=10).json(),
            "trigger": requests.post(f"{base}{API}/sync/run", json={"syncId": sync_ids[0]},
                                     headers=headers, timeout=10).json(),
        }
        assert len(answers["list"]["data"]) == SYNCS, answers["list"]
        (work / "answers.json").write_text(json.dumps(answers))
        minimal = start(_serve_command(minimal_port, args.workers, args.threads, str(work / "answers.json")),
                        minimal_port, work / "minimal.log")
        try:
            for _, port in servers:
                python_closed_loop(f"http://127.0.0.1:{port}{API}/syncs", key, 2, 4)  # warm every worker
            # The servers take turns, round after round: a machine whose speed drifts (other
            # work, CPU taken by neighbours) moves both sides of a round's ratio alike.
            for _ in range(args.rounds):
                for name, port in servers:
                    url = f"http://127.0.0.1:{port}{API}/syncs"
                    if use_wrk:
                        measured = wrk(url, key, args.seconds, 2, args.connections)
                    else:
                        measured = python_closed_loop(url, key, args.seconds, args.connections)
                    results.setdefault((name, "list"), []).append(measured)
                for name, port in servers:
                    results.setdefault((name, "mixed"), []).append(fixed_rate_mixed(
                        f"http://127.0.0.1:{port}", key, sync_ids, args.rate, args.seconds
                    ))
        finally:
            stop(minimal)
    finally:
        stop(retl)
        stop(unkept)
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{STATE_DB}" WITH (FORCE)')

    print(f"gunicorn, {args.workers} workers × {args.threads} threads; {args.rounds} rounds of"
          f" {args.seconds} s per line, the servers taking turns; {os.cpu_count()} cores;"
          f" load average before the run {load_before:.1f}")
    print(f"{'case':<68}| {'req/s':>8} | {'p50 ms':>7} | {'p99 ms':>7} | {'errors':>6} | tool")
    print("-" * 68 + "+" + "-" * 10 + "+" + "-" * 9 + "+" + "-" * 9 + "+" + "-" * 8 + "+" + "-" * 20)
    labels = {
        "list": f"GET /syncs (20 syncs), {args.connections} connections",
        "mixed": f"mixed list/get/trigger at {args.rate} req/s",
    }
    for case in ("list", "mixed"):
        for round_no in range(args.rounds):
            for name, _ in servers:
                result = results[(name, case)][round_no]
                label = f"{round_no + 1} {name}: {labels[case]}"
                print(f"{label:<68}| {result.rate:>8.0f} | {result.percentile(50):>7.1f} |"
                      f" {result.percentile(99):>7.1f} | {result.errors:>6} | {result.tool}")
    print()
    for name in ("retl", UNKEPT):
        ratios = [retl.rate / minimal.rate
                  for retl, minimal in zip(results[(name, "list")], results[("minimal", "list")], strict=True)]
        p99s = [mixed.percentile(99) for mixed in results[(name, "mixed")]]
        errors = sum(r.errors for r in results[(name, "list")] + results[(name, "mixed")])
        print(f"{name}: GET /syncs / minimal's, by round: {', '.join(f'{r:.2f}×' for r in ratios)};"
              f" median {statistics.median(ratios):.2f}× (goal ≥ 0.4×)")
        print(f"{name}: mixed at {args.rate} req/s, p99 by round: {', '.join(f'{p:.1f}' for p in p99s)}"
              f" ms; median {statistics.median(p99s):.1f} ms (goal < 50 ms); errors {errors} (goal 0)")
    for name, _ in servers:
        kinds: dict[str, list[float]] = {}
        for mixed in results[(name, "mixed")]:
            for kind, taken in (mixed.by_kind or {}).items():
                kinds.setdefault(kind, []).extend(taken)
        print(f"  {name} mixed, all rounds, p50/p99 ms by kind: " + ", ".join(
            f"{kind} {Result(0, 0, taken, 0, '').percentile(50):.1f}/"
            f"{Result(0, 0, taken, 0, '').percentile(99):.1f}" for kind, taken in kinds.items()
        ))


if __name__ == "__main__":
    main()
