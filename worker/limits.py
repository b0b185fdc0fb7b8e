"""Fleet-wide limits per destination, held in Redis: a request rate (GCRA, the leaky-bucket
form of a token bucket) and a concurrency cap (a lease set of in-flight writes).

Both use WATCH/MULTI optimistic transactions and Redis's own clock, so every worker process on
every machine shares one budget per destination and no process's clock skew matters."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis

# How long a slot is held if its holder dies without releasing it.
DEFAULT_SLOT_TTL_S = 120.0
_POLL_MIN_S = 0.005
_POLL_MAX_S = 0.25


def _redis_now(pipe: redis.client.Pipeline) -> float:
    seconds, micros = pipe.time()
    return seconds + micros / 1_000_000


class DestinationLimiter:
    """Rate and concurrency limits of one destination, shared by the whole fleet."""

    def __init__(
        self, client: redis.Redis, destination_id: str, *, rate_per_second: float,
        max_concurrency: int, burst: float | None = None, slot_ttl_s: float = DEFAULT_SLOT_TTL_S,
    ) -> None:
        if rate_per_second <= 0 or max_concurrency <= 0:
            raise ValueError("rate and concurrency must be positive")
        self.client = client
        self.rate_key = f"retl:limit:{destination_id}:rate"
        self.slots_key = f"retl:limit:{destination_id}:slots"
        self.interval = 1.0 / rate_per_second
        # Requests allowed back to back before the rate applies: one second's worth, at least 1.
        self.burst = max(1.0, burst if burst is not None else rate_per_second)
        self.max_concurrency = max_concurrency
        self.slot_ttl_s = slot_ttl_s

    # -- rate ------------------------------------------------------------------------------------

    def try_acquire_rate(self) -> float:
        """Take one request from the budget: 0.0 when granted, else seconds to wait first."""
        tolerance = self.interval * (self.burst - 1)
        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self.rate_key)
                    now = _redis_now(pipe)
                    stored = pipe.get(self.rate_key)
                    # Theoretical arrival time: when the budget is fully spent.
                    tat = max(float(stored) if stored is not None else now, now)
                    if tat - now > tolerance:
                        pipe.unwatch()
                        return tat - now - tolerance
                    new_tat = tat + self.interval
                    pipe.multi()
                    pipe.set(self.rate_key, repr(new_tat), px=max(1, int((new_tat - now) * 1000) + 1000))
                    pipe.execute()
                    return 0.0
                except redis.WatchError:
                    continue

    def acquire_rate(self, deadline_s: float | None = None) -> None:
        """Wait until a request fits the rate (TimeoutError past `deadline_s`)."""
        started = time.monotonic()
        while (wait := self.try_acquire_rate()) > 0:
            if deadline_s is not None and time.monotonic() - started + wait > deadline_s:
                raise TimeoutError(f"rate budget of {self.rate_key} not available in time")
            time.sleep(min(max(wait, _POLL_MIN_S), 1.0))

    # -- concurrency -----------------------------------------------------------------------------

    def try_acquire_slot(self) -> str | None:
        """A slot token when fewer than max_concurrency writes are in flight, else None."""
        token = uuid.uuid4().hex
        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self.slots_key)
                    now = _redis_now(pipe)
                    live = pipe.zcount(self.slots_key, f"({now}", "+inf")
                    if live >= self.max_concurrency:
                        pipe.unwatch()
                        return None
                    pipe.multi()
                    pipe.zremrangebyscore(self.slots_key, "-inf", now)
                    pipe.zadd(self.slots_key, {token: now + self.slot_ttl_s})
                    pipe.pexpire(self.slots_key, int(self.slot_ttl_s * 1000) + 1000)
                    pipe.execute()
                    return token
                except redis.WatchError:
                    continue

    def release_slot(self, token: str) -> None:
        self.client.zrem(self.slots_key, token)

    def in_flight(self) -> int:
        now = _redis_now(self.client)
        return int(self.client.zcount(self.slots_key, f"({now}", "+inf"))

    @contextmanager
    def slot(self, deadline_s: float | None = None) -> Iterator[None]:
        """Hold one of the destination's concurrency slots for the duration of the block."""
        started = time.monotonic()
        pause = _POLL_MIN_S
        while (token := self.try_acquire_slot()) is None:
            if deadline_s is not None and time.monotonic() - started > deadline_s:
                raise TimeoutError(f"no free slot in {self.slots_key} in time")
            time.sleep(pause)
            pause = min(pause * 2, _POLL_MAX_S)
        try:
            yield
        finally:
            self.release_slot(token)
