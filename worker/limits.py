"""Fleet-wide limits per destination, held in Redis: a request allowance counted as vendors
count it (at most `requests` in any window of `per_seconds`) and a concurrency cap (a lease set
of in-flight writes).

Both use Redis's own clock, so every worker process on every machine shares one budget per
destination and no process's clock skew matters. A write takes both at once with one Lua call
(`try_permit`), so a batch pays one round trip to Redis before its request and one after."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from connectors.destinations.base import RateLimit

# How long a slot is held if its holder dies without releasing it.
DEFAULT_SLOT_TTL_S = 120.0
_POLL_MIN_S = 0.005
_POLL_MAX_S = 0.25


def window_margin(per_seconds: float) -> float:
    """How much longer than the vendor's window grants are counted over. A request reaches the
    vendor a little after its permit (encoding, the network, a busy core), and two requests'
    delays differ: counting grants over a slightly longer window keeps every window *as the
    vendor counts it* within the allowance."""
    return 0.1 + 0.01 * per_seconds


# The allowance is a sliding log: the grant times of the last window, in a sorted set. A request
# is granted when fewer than `requests` grants lie in the window before now; otherwise the answer
# is how long until the oldest one that counts leaves it. A slot is only taken together with a
# granted request, so a write waiting for the allowance holds no slot.
# KEYS: slots, window. ARGV: token, max concurrency (0: no cap), slot ttl s, requests, window s.
# Returns {1, "0"} when granted, {0, "-1"} when no slot is free, {0, wait} to wait for the rate.
_PERMIT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cap = tonumber(ARGV[2])
if cap > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if redis.call('ZCARD', KEYS[1]) >= cap then
    return {0, '-1'}
  end
end
local requests = tonumber(ARGV[4])
local window = tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
local counted = redis.call('ZCARD', KEYS[2])
if counted >= requests then
  local oldest = redis.call('ZRANGE', KEYS[2], counted - requests, counted - requests, 'WITHSCORES')
  return {0, string.format('%.6f', math.max(0.000001, tonumber(oldest[2]) + window - now))}
end
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('PEXPIRE', KEYS[2], math.floor(window * 1000) + 1000)
if cap > 0 then
  local ttl = tonumber(ARGV[3])
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], math.floor(ttl * 1000) + 1000)
end
return {1, '0'}
"""


def _redis_now(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return seconds + micros / 1_000_000


class DestinationLimiter:
    """The allowance and the concurrency cap of one destination, shared by the whole fleet."""

    def __init__(
        self, client: redis.Redis, destination_id: str, *, rate: RateLimit,
        max_concurrency: int, slot_ttl_s: float = DEFAULT_SLOT_TTL_S,
    ) -> None:
        if rate.requests < 1 or rate.per_seconds <= 0 or max_concurrency <= 0:
            raise ValueError("limits must be positive")
        self.client = client
        self.window_key = f"retl:limit:{destination_id}:window"
        self.slots_key = f"retl:limit:{destination_id}:slots"
        self.rate = rate
        self.window_s = rate.per_seconds + window_margin(rate.per_seconds)
        self.max_concurrency = max_concurrency
        self.slot_ttl_s = slot_ttl_s
        self._permit = client.register_script(_PERMIT_LUA)

    def _try(self, token: str, *, with_slot: bool) -> float | None:
        granted, wait = self._permit(
            keys=[self.slots_key, self.window_key],
            args=[token, self.max_concurrency if with_slot else 0, self.slot_ttl_s,
                  self.rate.requests, repr(self.window_s)],
        )
        if int(granted) == 1:
            return 0.0
        seconds = float(wait)
        return None if seconds < 0 else seconds

    # -- the allowance alone ---------------------------------------------------------------------

    def try_acquire_rate(self) -> float:
        """Take one request from the allowance: 0.0 when granted, else seconds to wait first."""
        wait = self._try(uuid.uuid4().hex, with_slot=False)
        assert wait is not None  # without a slot, only the allowance can refuse
        return wait

    # -- the cap alone ---------------------------------------------------------------------------

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

    # -- both at once ----------------------------------------------------------------------------

    def try_permit(self) -> tuple[str | None, float | None]:
        """A slot and one request of the allowance, atomically: (slot token, None) when granted,
        (None, None) when every slot is taken, (None, seconds) to wait for the allowance."""
        token = uuid.uuid4().hex
        wait = self._try(token, with_slot=True)
        if wait == 0.0:
            return token, None
        return None, wait

    @contextmanager
    def permit(self, deadline_s: float | None = None) -> Iterator[None]:
        """Hold a concurrency slot, with one request of the allowance taken, for the block."""
        started = time.monotonic()
        pause = _POLL_MIN_S
        while True:
            token, wait = self.try_permit()
            if token is not None:
                break
            if wait is None:  # every slot is taken: back off, doubling
                sleep, pause = pause, min(pause * 2, _POLL_MAX_S)
            else:
                sleep = min(max(wait, _POLL_MIN_S), 1.0)
            if deadline_s is not None and time.monotonic() - started + sleep > deadline_s:
                raise TimeoutError(f"no permit from {self.slots_key} and {self.window_key} in time")
            time.sleep(sleep)
        try:
            yield
        finally:
            self.release_slot(token)

    def release_slot(self, token: str) -> None:
        self.client.zrem(self.slots_key, token)

    def in_flight(self) -> int:
        now = _redis_now(self.client)
        return int(self.client.zcount(self.slots_key, f"({now}", "+inf"))
