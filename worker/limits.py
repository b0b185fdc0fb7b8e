"""Fleet-wide limits per destination, held in Redis: a request rate (GCRA, the leaky-bucket
form of a token bucket) and a concurrency cap (a lease set of in-flight writes).

Both use Redis's own clock, so every worker process on every machine shares one budget per
destination and no process's clock skew matters. Each limit on its own is a WATCH/MULTI
optimistic transaction; a write takes both at once with one Lua call (`permit`), so a batch
pays one round trip to Redis before its request and one after.

A destination that asked the fleet to wait (a Retry-After, a quota answer) is paused for that
long (`pause`): no permit is given until then, so the batches of every run to it wait (parked)
instead of each spending a try on an answer known in advance."""

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


# Both limits in one atomic step: no pause, a free slot, then the rate. A slot is only taken
# together with a granted rate, so a write waiting for the rate holds no slot.
# KEYS: slots, rate, pause. ARGV: token, max concurrency, slot ttl s, interval s, tolerance s.
# Returns {1, "0"} when granted, {0, "-1"} when no slot is free, {0, wait} to wait for the rate
# or the pause.
_PERMIT_LUA = """
local paused = redis.call('PTTL', KEYS[3])
if paused > 0 then
  return {0, tostring(paused / 1000)}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return {0, '-1'}
end
local stored = redis.call('GET', KEYS[2])
local tat = now
if stored then tat = math.max(tonumber(stored), now) end
local interval = tonumber(ARGV[4])
if tat - now > tonumber(ARGV[5]) then
  return {0, tostring(tat - now - tonumber(ARGV[5]))}
end
local new_tat = tat + interval
redis.call('SET', KEYS[2], string.format('%.6f', new_tat), 'PX',
  math.max(1, math.floor((new_tat - now) * 1000) + 1000))
local ttl = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], math.floor(ttl * 1000) + 1000)
return {1, '0'}
"""


class NoPermit(Exception):
    """No permit within the time allowed: worth trying again in `seconds`."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no permit; try again in {seconds:.2f} s")
        self.seconds = seconds


class _Permit:
    """A slot with one request of the rate, released when the block ends."""

    def __init__(self, limiter: DestinationLimiter, token: str) -> None:
        self.limiter, self.token = limiter, token

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self.limiter.release_slot(self.token)


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
        self.pause_key = f"retl:limit:{destination_id}:paused"
        self.interval = 1.0 / rate_per_second
        # Requests allowed back to back before the rate applies: one second's worth, at least 1.
        self.burst = max(1.0, burst if burst is not None else rate_per_second)
        self.max_concurrency = max_concurrency
        self.slot_ttl_s = slot_ttl_s
        self._permit = client.register_script(_PERMIT_LUA)

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

    def try_permit(self) -> tuple[str | None, float | None]:
        """A slot and one request of the rate, atomically: (slot token, None) when granted,
        (None, None) when every slot is taken, (None, seconds) to wait for the rate."""
        token = uuid.uuid4().hex
        tolerance = self.interval * (self.burst - 1)
        granted, wait = self._permit(
            keys=[self.slots_key, self.rate_key, self.pause_key],
            args=[token, self.max_concurrency, self.slot_ttl_s, repr(self.interval),
                  repr(tolerance)],
        )
        if int(granted) == 1:
            return token, None
        seconds = float(wait)
        return None, (None if seconds < 0 else seconds)

    @contextmanager
    def permit(self, deadline_s: float | None = None) -> Iterator[None]:
        """Hold a concurrency slot, with one request of the rate taken, for the block."""
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
                raise TimeoutError(f"no permit from {self.slots_key} and {self.rate_key} in time")
            time.sleep(sleep)
        try:
            yield
        finally:
            self.release_slot(token)

    def permit_within(self, max_wait_s: float) -> _Permit:
        """A permit (`permit`'s) taken within `max_wait_s`, to hold with `with`; NoPermit with
        the seconds worth waiting instead when the rate, a pause or busy slots would keep the
        caller longer (the caller gives its process back rather than sleep)."""
        started = time.monotonic()
        pause = _POLL_MIN_S
        while True:
            token, wait = self.try_permit()
            if token is not None:
                return _Permit(self, token)
            waited = time.monotonic() - started
            if wait is None:  # every slot is taken: back off, doubling, within the budget
                if waited + pause > max_wait_s:
                    raise NoPermit(max(1.0, max_wait_s))
                time.sleep(pause)
                pause = min(pause * 2, _POLL_MAX_S)
                continue
            if waited + wait > max_wait_s:
                raise NoPermit(wait)
            time.sleep(max(wait, _POLL_MIN_S))

    def pause(self, seconds: float) -> None:
        """Give no permit for `seconds` (the destination asked the fleet to wait); a longer
        pause already set stands."""
        millis = max(1, int(seconds * 1000))
        current = self.client.pttl(self.pause_key)
        if current is None or current < millis:
            self.client.set(self.pause_key, b"1", px=millis)

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
