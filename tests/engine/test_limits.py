"""The fleet-wide destination limiter, against fakeredis and against the real Redis."""

from __future__ import annotations

import threading
import time

import fakeredis
import pytest
import redis

from connectors.destinations.base import RateLimit
from worker.limits import DestinationLimiter, window_margin


@pytest.fixture(params=["fakeredis", "redis"])
def client(request, redis_url: str) -> redis.Redis:
    if request.param == "fakeredis":
        return fakeredis.FakeRedis()
    return redis.Redis.from_url(redis_url)


def test_the_window_grants_its_requests_then_asks_to_wait_for_the_oldest_to_leave(
    client: redis.Redis,
) -> None:
    limiter = DestinationLimiter(client, "conn_a", rate=RateLimit(5, 10.0), max_concurrency=2)
    granted = [limiter.try_acquire_rate() for _ in range(5)]
    assert granted == [0.0] * 5
    wait = limiter.try_acquire_rate()
    # Not a fraction of the window, as a token bucket would answer: the whole window must pass.
    assert 9.0 < wait <= 10.0 + window_margin(10.0)


def test_a_request_is_granted_again_once_the_window_has_passed(client: redis.Redis) -> None:
    limiter = DestinationLimiter(client, _fresh_id("conn_w"), rate=RateLimit(2, 0.2),
                                 max_concurrency=2)
    assert [limiter.try_acquire_rate() for _ in range(3)][:2] == [0.0, 0.0]
    time.sleep(0.2 + window_margin(0.2) + 0.05)
    assert limiter.try_acquire_rate() == 0.0


def test_a_rate_per_second_is_a_window_of_whole_requests() -> None:
    assert RateLimit.per_second(20) == RateLimit(20, 1.0)
    assert RateLimit.per_second(0.5) == RateLimit(1, 2.0)
    assert RateLimit.per_second(2.5) == RateLimit(2, 0.8)


def test_rate_is_shared_by_every_limiter_of_a_destination(client: redis.Redis) -> None:
    first = DestinationLimiter(client, "conn_b", rate=RateLimit(4), max_concurrency=2)
    second = DestinationLimiter(client, "conn_b", rate=RateLimit(4), max_concurrency=2)
    other = DestinationLimiter(client, "conn_c", rate=RateLimit(4), max_concurrency=2)
    outcomes = [(first if i % 2 else second).try_acquire_rate() == 0.0 for i in range(8)]
    assert outcomes.count(True) == 4
    assert other.try_acquire_rate() == 0.0


def test_concurrency_cap_holds_across_limiters_and_frees_on_release(client: redis.Redis) -> None:
    first = DestinationLimiter(client, "conn_d", rate=RateLimit(100), max_concurrency=2)
    second = DestinationLimiter(client, "conn_d", rate=RateLimit(100), max_concurrency=2)
    a = first.try_acquire_slot()
    b = second.try_acquire_slot()
    assert a and b
    assert first.try_acquire_slot() is None
    assert second.in_flight() == 2
    first.release_slot(a)
    assert second.try_acquire_slot() is not None


def test_a_dead_holders_slot_expires(client: redis.Redis) -> None:
    limiter = DestinationLimiter(client, "conn_e", rate=RateLimit(100), max_concurrency=1, slot_ttl_s=0.2)
    assert limiter.try_acquire_slot() is not None
    assert limiter.try_acquire_slot() is None
    time.sleep(0.3)
    assert limiter.try_acquire_slot() is not None


def test_threads_never_exceed_the_cap(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    peak = 0
    current = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal peak, current
        limiter = DestinationLimiter(client, "conn_f", rate=RateLimit(1000), max_concurrency=3)
        for _ in range(5):
            with limiter.slot():
                with lock:
                    current += 1
                    peak = max(peak, current)
                time.sleep(0.01)
                with lock:
                    current -= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak == 3


def test_limits_must_be_positive(client: redis.Redis) -> None:
    with pytest.raises(ValueError):
        DestinationLimiter(client, "conn_g", rate=RateLimit(0), max_concurrency=1)
    with pytest.raises(ValueError):
        DestinationLimiter(client, "conn_g", rate=RateLimit(1, 0.0), max_concurrency=1)


def _fresh_id(name: str) -> str:
    return f"{name}_{time.time_ns()}"


def test_a_permit_takes_a_slot_and_the_rate_together(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    limiter = DestinationLimiter(client, _fresh_id("conn_g"), rate=RateLimit(3), max_concurrency=2)
    first, _ = limiter.try_permit()
    second, _ = limiter.try_permit()
    assert first is not None and second is not None
    assert limiter.try_permit() == (None, None)  # both slots taken
    assert limiter.in_flight() == 2
    limiter.release_slot(first)
    third, _ = limiter.try_permit()
    assert third is not None  # the window's 3 requests are spent now
    limiter.release_slot(second)
    token, wait = limiter.try_permit()
    assert token is None and wait is not None and 0 < wait <= 1 + window_margin(1)
    assert limiter.in_flight() == 1  # waiting for the rate holds no slot


def test_permits_hold_the_cap_and_the_rate_across_threads(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    destination = _fresh_id("conn_h")
    peak = current = granted = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal peak, current, granted
        limiter = DestinationLimiter(client, destination, rate=RateLimit(40), max_concurrency=2)
        for _ in range(4):
            with limiter.permit():
                with lock:
                    current += 1
                    granted += 1
                    peak = max(peak, current)
                time.sleep(0.005)
                with lock:
                    current -= 1

    threads = [threading.Thread(target=work) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert granted == 20 and peak <= 2
