"""Writing one batch: fleet-wide rate and concurrency limits, tenacity retries of whole-batch
failures honouring Retry-After, and another try for records the destination called retryable.

Per-record refusals are kept as they are (one bad record never fails its neighbours); a batch
whose retries run out reports every record failed with the last error's code.

A wait longer than `RetryPolicy.park_over_s` (a Retry-After, a quota answer, a long backoff, no
free concurrency slot, a rate budget spent for a while) is not slept in the task: `MustWait`
tells the caller to park the batch in Postgres and give its pool process back. The tries a
batch spent travel with it, so its attempts count across parkings."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    wait_exponential_jitter,
)

from connectors.destinations.base import Destination, Operation, Record, RecordResult
from connectors.errors import ConnectorError, RetryableError
from shared import metrics
from worker.limits import DestinationLimiter, NoPermit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    initial_wait_s: float = 0.5
    max_wait_s: float = 30.0
    # A Retry-After is honoured up to this; a longer one is waited for this long.
    max_retry_after_s: float = 120.0
    # Waits longer than this are not slept in the task: the batch is parked (`MustWait`).
    park_over_s: float = 2.0


class MustWait(Exception):
    """The batch must wait `seconds` before it is tried again, longer than a task should
    sleep: park it. `tries` is how many of the policy's attempts it has spent so far;
    `error` is what the last try answered (None: it waited for a slot or the rate)."""

    def __init__(self, seconds: float, tries: int, error: ConnectorError | None) -> None:
        what = error.message if error is not None else "waiting for the destination's limits"
        super().__init__(f"wait {seconds:.1f} s: {what}")
        self.seconds, self.tries, self.error = seconds, tries, error


class RetryAfterWait:
    """tenacity `wait`: the server's Retry-After when it sent one (plus a little jitter, so a
    fleet does not return in lockstep), exponential backoff with jitter otherwise."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.backoff = wait_exponential_jitter(
            multiplier=policy.initial_wait_s, max=policy.max_wait_s, jitter=policy.initial_wait_s
        )

    def __call__(self, state: RetryCallState, tries_before: int = 0) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableError) and exc.retry_after is not None:
            return min(exc.retry_after, self.policy.max_retry_after_s) + random.uniform(0, 0.05)
        if tries_before:
            # Backoff goes on from the tries spent before the batch was parked.
            shifted = RetryCallState(state.retry_object, state.fn, state.args, state.kwargs)
            shifted.attempt_number = state.attempt_number + tries_before
            return self.backoff(shifted)
        return self.backoff(state)


class _StopOrPark:
    """tenacity `stop` (evaluated before `wait`): after the policy's attempts, counted with
    those spent before a parking, or when the next wait is longer than a task should sleep —
    then `park_for` says how long (when parking is allowed; else the wait is capped)."""

    def __init__(self, policy: RetryPolicy, tries_before: int, may_park: bool) -> None:
        self.policy, self.tries_before, self.may_park = policy, tries_before, may_park
        self.wait = RetryAfterWait(policy)
        self.next_wait = 0.0
        self.park_for: float | None = None
        self.tries = tries_before

    def __call__(self, state: RetryCallState) -> bool:
        self.tries = self.tries_before + state.attempt_number
        if self.tries >= self.policy.attempts:
            return True
        delay = self.wait(state, self.tries_before)
        if delay > self.policy.park_over_s:
            if self.may_park:
                self.park_for = delay
                return True
            delay = self.policy.park_over_s
        self.next_wait = delay
        return False

    def sleep_for(self, _state: RetryCallState) -> float:
        return self.next_wait


def _retrying_or_parking(
    stop: _StopOrPark, what: str = "batch write", connector: str | None = None
) -> Retrying:
    """tenacity's Retrying for calls to a destination: RetryableError is retried (honouring
    Retry-After) until `stop` says the attempts ran out or the wait is too long for a task,
    then re-raised; other errors escape. With `connector`, each retry (and each 429 among
    them) is counted in its metrics."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.debug("%s failed (%s); retry %d", what, exc, stop.tries)
        if connector is not None:
            metrics.RETRIES.labels(connector).inc()
            if isinstance(exc, ConnectorError) and exc.code == "RATE_LIMIT":
                metrics.RATE_LIMIT_WAITS.labels(connector).inc()

    return Retrying(
        retry=retry_if_exception_type(RetryableError),
        stop=stop,
        wait=stop.sleep_for,
        reraise=True,
        before_sleep=before_sleep,
    )


def call_or_must_wait(policy: RetryPolicy, what: str, fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` with RetryableError retried like a batch write; MustWait instead of a wait
    longer than a task may sleep (the caller gives its process back)."""
    stop = _StopOrPark(policy, 0, may_park=True)
    try:
        return _retrying_or_parking(stop, what)(fn, *args)
    except RetryableError as exc:
        if stop.park_for is not None:
            raise MustWait(stop.park_for, stop.tries, exc) from None
        raise


@dataclass
class BatchOutcome:
    results: list[RecordResult]  # one per record, in order
    # What ended a later round of resending retryable records; records accepted before it
    # keep their results, the ones still pending carry its code.
    error: ConnectorError | None = None


def write_with_retries(
    destination: Destination, limiter: DestinationLimiter | None, *, object_name: str,
    operation: Operation, key_field: str, records: list[Record],
    policy: RetryPolicy | None = None, before_attempt: Callable[[], None] | None = None,
    tries_before: int = 0,
) -> BatchOutcome:
    """Send `records`; RetryableError escapes only when the retries ran out (counting the
    `tries_before` spent before a parking), AuthError and ConnectorError at once, MustWait when
    the first call must wait longer than the policy lets a task sleep. `before_attempt` runs
    before every call (claim renewal). Rows written and failed, the write's time, retries and
    rate-limit waits go to the metrics (a parked batch is neither written nor failed yet)."""
    connector = getattr(destination, "type", "unknown")
    started = time.perf_counter()
    try:
        outcome = _write_with_retries(
            destination, limiter, object_name=object_name, operation=operation,
            key_field=key_field, records=records, policy=policy or RetryPolicy(),
            before_attempt=before_attempt, tries_before=tries_before, connector=connector,
        )
    except MustWait:
        metrics.RATE_LIMIT_WAITS.labels(connector).inc()
        raise
    except Exception:
        metrics.ROWS_FAILED.labels(connector).inc(len(records))
        raise
    finally:
        metrics.BATCH_WRITE_SECONDS.labels(connector).observe(time.perf_counter() - started)
    accepted = sum(1 for result in outcome.results if result.ok)
    metrics.ROWS_WRITTEN.labels(connector).inc(accepted)
    metrics.ROWS_FAILED.labels(connector).inc(len(outcome.results) - accepted)
    return outcome


def _write_with_retries(
    destination: Destination, limiter: DestinationLimiter | None, *, object_name: str,
    operation: Operation, key_field: str, records: list[Record], policy: RetryPolicy,
    before_attempt: Callable[[], None] | None, tries_before: int, connector: str,
) -> BatchOutcome:

    def one_call(batch: list[Record], may_park: bool) -> list[RecordResult]:
        if before_attempt is not None:
            before_attempt()
        if limiter is None:
            return destination.write_batch(object_name, operation, key_field, batch)
        if not may_park:
            waits = limiter.waits
            with limiter.permit():
                if limiter.waits > waits:
                    metrics.RATE_LIMIT_WAITS.labels(connector).inc()
                return destination.write_batch(object_name, operation, key_field, batch)
        try:
            permit = limiter.permit_within(policy.park_over_s)
        except NoPermit as busy:
            raise MustWait(busy.seconds, first.tries, None) from None
        with permit:
            return destination.write_batch(object_name, operation, key_field, batch)

    # The first round may park the batch (nothing of it was accepted yet); later rounds resend
    # records the destination called retryable, with waits capped at what a task may sleep.
    first = _StopOrPark(policy, tries_before, may_park=True)
    results: list[RecordResult | None] = [None] * len(records)
    pending = list(range(len(records)))
    for round_no in range(1, policy.attempts + 1):
        batch = [records[i] for i in pending]
        stop = first if round_no == 1 else _StopOrPark(policy, 0, may_park=False)
        try:
            answers = _retrying_or_parking(stop, "batch write", connector)(
                one_call, batch, round_no == 1)
        except ConnectorError as exc:
            if isinstance(exc, RetryableError) and stop.park_for is not None:
                if limiter is not None and exc.retry_after is not None:
                    # The destination asked to wait: the fleet's other writes to it wait too.
                    limiter.pause(stop.park_for)
                raise MustWait(stop.park_for, stop.tries, exc) from None
            if round_no == 1:
                raise  # nothing was accepted: the whole batch failed
            for index in pending:
                results[index] = RecordResult.failure(exc.code, exc.message)
            return BatchOutcome(results=[r for r in results if r is not None], error=exc)
        if len(answers) != len(batch):
            raise RetryableError(
                f"the destination answered {len(answers)} results for {len(batch)} records"
            )
        again = []
        for index, answer in zip(pending, answers, strict=True):
            results[index] = answer
            if not answer.ok and answer.retryable and round_no < policy.attempts:
                again.append(index)
        if not again:
            break
        pending = again
        # Records refused for a passing reason (a lock, a per-record limit): back off, resend.
        pause = min(policy.initial_wait_s * 2 ** (round_no - 1), policy.max_wait_s,
                    policy.park_over_s)
        time.sleep(pause + random.uniform(0, min(policy.initial_wait_s, policy.park_over_s)))
    return BatchOutcome(results=[r for r in results if r is not None])
