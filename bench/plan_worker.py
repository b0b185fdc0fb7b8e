"""One run executed in this process, as a worker would, with timings and peak RSS as JSON on
stdout: plan (extract + hash + diff + packing), then the batch writes, sequentially.

Used by bench/run.py so that the peak RSS measured is the engine's alone."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def peak_rss_mb() -> float:
    """VmHWM, this process's own peak (ru_maxrss would include the parent's before exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main(run_id: str) -> None:
    from connectors import registry
    from connectors.sources import duckdb as duckdb_source
    from worker import dispatch
    from worker import runs as engine

    # What a worker process has done before its first task (worker/app.py): the connectors
    # loaded, DuckDB's query parser open.
    registry.destinations()
    registry.sources()
    duckdb_source.warm_up()

    batches: list[tuple[str, int, int]] = []
    dispatch.enqueue_batch = lambda *job, **_: batches.append(job)  # written after the plan
    started = time.perf_counter()
    engine.execute_run(run_id)
    planned = time.perf_counter()
    for job in batches:
        engine.write_batch(*job)
    written = time.perf_counter()
    print(json.dumps({
        "plan_s": planned - started,
        "write_s": written - planned,
        "batches": len(batches),
        "peak_rss_mb": peak_rss_mb(),
    }))


if __name__ == "__main__":
    main(sys.argv[1])
