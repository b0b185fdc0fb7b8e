"""A run's writers grow to what the destination's concurrency cap allows as soon as planning
has stored its batches, never past it, and shrink when the destination asks to wait."""

from __future__ import annotations

import threading
import time

import pytest

from tests.engine.conftest import Warehouse, make_sync, wait_for_run
from tests.engine.test_workers import Workers, _trigger, workers  # noqa: F401
from tests.fakes.base import Request, Response
from tests.fakes.http_sink import FakeHttpSink

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


class CountingSink(FakeHttpSink):
    """A receiver that takes `delay_s` a request and counts how many are in flight at once."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.in_flight = self.peak = 0
        self.arrivals: list[float] = []  # writes handled
        self.seen: list[float] = []  # every request, scripted faults included
        self._count_lock = threading.Lock()

    def _dispatch(self, request: Request) -> Response:
        self.seen.append(time.monotonic())
        return super()._dispatch(request)

    def handle(self, request: Request) -> Response:
        with self._count_lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            self.arrivals.append(time.monotonic())
        try:
            time.sleep(self.delay_s)
            return super().handle(request)
        finally:
            with self._count_lock:
                self.in_flight -= 1


def test_writers_grow_to_the_concurrency_cap_and_never_past_it(
    workers: Workers, workspace_id: str, warehouse: Warehouse,  # noqa: F811
) -> None:
    warehouse.insert(400)
    with CountingSink(delay_s=0.2) as sink:
        setup = make_sync(workspace_id, {"url": warehouse.url}, sink.url,
                          destination_config={"batchSize": 10, "maxConcurrency": 4})
        workers.start("wide", concurrency=6)
        run = wait_for_run(_trigger(setup), timeout_s=90)
    assert run.status == "succeeded", run.error
    assert len(sink.store) == 400
    # 40 requests of 0.2 s: one writer a second would never have four in flight.
    assert sink.peak == 4


def test_writers_stop_sending_while_the_destination_asks_to_wait(
    workers: Workers, workspace_id: str, warehouse: Warehouse,  # noqa: F811
) -> None:
    warehouse.insert(300)
    with CountingSink(delay_s=0.05) as sink:
        setup = make_sync(workspace_id, {"url": warehouse.url}, sink.url,
                          destination_config={"batchSize": 10, "maxConcurrency": 4})
        workers.start("wide", concurrency=5)
        sink.fail_next(429, {"error": "slow down"}, {"Retry-After": "3"})
        run = wait_for_run(_trigger(setup), timeout_s=90)
    assert run.status == "succeeded", run.error
    assert len(sink.store) == 300
    # The first request was answered 429; once the answer is in (writes already on their way
    # may still land), every writer of the fleet waits out the Retry-After instead of trying
    # on its own.
    answered_429 = sink.seen[0]
    assert [t for t in sink.arrivals if 0.5 < t - answered_429 < 2.5] == []
