"""A destination's allowance as the vendor counts it: two real worker processes writing one
run never put more than `requests` requests into any window of `perSeconds`, measured where
the requests arrive."""

from __future__ import annotations

import bisect
import threading
import time

import pytest

from tests.engine.conftest import Warehouse, make_sync, wait_for_run
from tests.engine.test_workers import Workers, _trigger, workers  # noqa: F401
from tests.fakes.base import Request, Response
from tests.fakes.http_sink import FakeHttpSink

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


class ClockedSink(FakeHttpSink):
    """Notes the monotonic time each write arrives at."""

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.arrivals: list[float] = []
        self._arrivals_lock = threading.Lock()

    def handle(self, request: Request) -> Response:
        if request.method != "OPTIONS":
            with self._arrivals_lock:
                self.arrivals.append(time.monotonic())
        return super().handle(request)


def busiest_window(arrivals: list[float], seconds: float) -> int:
    """The most requests that arrived within any window of `seconds`."""
    times = sorted(arrivals)
    return max(bisect.bisect_left(times, t + seconds) - i for i, t in enumerate(times))


def test_busiest_window_counts_every_window() -> None:
    assert busiest_window([0.0, 0.5, 0.99, 1.0, 1.5], 1.0) == 3
    assert busiest_window([0.0, 2.0, 4.0], 1.0) == 1


def test_two_workers_keep_every_window_within_the_allowance(
    workers: Workers, workspace_id: str, warehouse: Warehouse,  # noqa: F811
) -> None:
    warehouse.insert(150)
    with ClockedSink() as sink:
        setup = make_sync(
            workspace_id, {"url": warehouse.url}, sink.url,
            destination_config={"batchSize": 5, "rateLimit": {"requests": 6, "perSeconds": 1}},
        )
        workers.start("first")
        workers.start("second")
        run = wait_for_run(_trigger(setup), timeout_s=90)
        assert run.status == "succeeded", run.error
        assert len(sink.store) == 150
        assert len(sink.arrivals) == 30
        assert busiest_window(sink.arrivals, 1.0) <= 6
        # The allowance is used, not merely respected: 30 requests at 6 a second take ~5 s.
        assert busiest_window(sink.arrivals, 2.5) >= 6
