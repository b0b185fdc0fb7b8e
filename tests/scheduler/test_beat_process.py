"""End to end: the real `retl beat` process and a Celery worker turn a stored interval schedule
into a run in Postgres, with the minimum interval shortened through its setting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared.repositories import runs, syncs
from shared.settings import get_settings
from tests.scheduler.helpers import load_sync, runs_of

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture
def fast_schedules(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Settings for this process and the ones it starts: one-second ticks, two-second syncs."""
    fast = {"RETL_BEAT_INTERVAL_SECONDS": "1", "RETL_MIN_SCHEDULE_INTERVAL_SECONDS": "1"}
    for name, value in fast.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield fast
    monkeypatch.undo()
    get_settings.cache_clear()


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        # Its own session, so that stopping it also stops the children Celery forks.
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_retl_beat_and_a_worker_queue_a_scheduled_run(
    make_sync: Callable[..., syncs.Sync], fast_schedules: dict[str, str], tmp_path: Path,
) -> None:
    sync = make_sync({"type": "interval", "every": "2s"})
    first_due = sync.next_run_at
    env = {**os.environ, **fast_schedules, "RETL_HOME": str(tmp_path), "RETL_LOG_LEVEL": "INFO"}
    beat = _start([str(BIN / "retl"), "beat"], tmp_path / "beat.log", env)
    worker = _start(
        [str(BIN / "celery"), "-A", "worker.app", "worker",
         "-Q", f"{get_settings().queue},{get_settings().control_queue}",
         "--concurrency", "1", "--pool", "solo", "--loglevel", "INFO"],
        tmp_path / "worker.log", env,
    )
    try:
        scheduled: list[runs.Run] = []
        deadline = time.monotonic() + 45
        while not scheduled and time.monotonic() < deadline:
            assert beat.poll() is None, (tmp_path / "beat.log").read_text()
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            scheduled = [r for r in runs_of(sync.id) if r.trigger == "schedule"]
            time.sleep(0.2)
    finally:
        _stop(beat)
        _stop(worker)

    logs = "\n".join(p.read_text() for p in (tmp_path / "beat.log", tmp_path / "worker.log"))
    assert scheduled, logs
    assert scheduled[0].scheduled_for >= first_due
    assert load_sync(sync.id).next_run_at > scheduled[0].scheduled_for
