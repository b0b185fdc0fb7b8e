"""Writing one batch: fleet-wide rate and concurrency limits, tenacity retries of whole-batch
failures honouring Retry-After, and another try for records the destination called retryable.

Per-record refusals are kept as they are (one bad record never fails its neighbours); a batch
whose retries run out reports every record failed with the last error's code."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from connectors.destinations.base import Destination, Operation, Record, RecordResult
from connectors.errors import ConnectorError, RetryableError
from shared import metrics
from worker.limits import DestinationLimiter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    initial_wait_s: float = 0.5
    max_wait_s: float = 30.0
    # A Retry-After beyond this is not waited for inside one task: the batch fails instead.
    max_retry_after_s: float = 120.0


class RetryAfterWait:
    """tenacity `wait`: the server's Retry-After when it sent one (plus a little jitter, so a
    fleet does not return in lockstep), exponential backoff with jitter otherwise."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.backoff = wait_exponential_jitter(
            multiplier=policy.initial_wait_s, max=policy.max_wait_s, jitter=policy.initial_wait_s
        )

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableError) and exc.retry_after is not None:
            return min(exc.retry_after, self.policy.max_retry_after_s) + random.uniform(0, 0.05)
        return self.backoff(state)


def retrying_passing_failures(
    policy: RetryPolicy, what: str, connector: str | None = None
) -> Retrying:
    """tenacity's Retrying for calls to a destination: RetryableError is retried (honouring
    Retry-After) until the policy's attempts run out, then re-raised; other errors escape.
    With `connector`, each retry (and each 429 among them) is counted in its metrics."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.debug("%s failed (%s); retry %d", what, exc, state.attempt_number)
        if connector is not None:
            metrics.RETRIES.labels(connector).inc()
            if isinstance(exc, ConnectorError) and exc.code == "RATE_LIMIT":
                metrics.RATE_LIMIT_WAITS.labels(connector).inc()

    return Retrying(
        retry=retry_if_exception_type(RetryableError),
        stop=stop_after_attempt(policy.attempts),
        wait=RetryAfterWait(policy),
        reraise=True,
        before_sleep=before_sleep,
    )


@dataclass
class BatchOutcome:
    results: list[RecordResult]  # one per record, in order
    # What ended a later round of resending retryable records; records accepted before it
    # keep their results, the ones still pending carry its code.
    error: ConnectorError | None = None


def write_with_retries(
    destination: Destination, limiter: DestinationLimiter | None, *, object_name: str,
    operation: Operation, key_field: str, records: list[Record],
    policy: RetryPolicy = RetryPolicy(), before_attempt: Callable[[], None] | None = None,
) -> BatchOutcome:
    """Send `records`; RetryableError escapes only when the retries ran out, AuthError and
    ConnectorError at once. `before_attempt` runs before every call (claim renewal). Rows
    written and failed, the write's time, retries and rate-limit waits go to the metrics."""
    connector = getattr(destination, "type", "unknown")
    started = time.perf_counter()
    try:
        outcome = _write_with_retries(
            destination, limiter, object_name=object_name, operation=operation,
            key_field=key_field, records=records, policy=policy, before_attempt=before_attempt,
        )
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
    before_attempt: Callable[[], None] | None,
) -> BatchOutcome:
    connector = getattr(destination, "type", "unknown")

    def one_call(batch: list[Record]) -> list[RecordResult]:
        if before_attempt is not None:
            before_attempt()
        if limiter is None:
            return destination.write_batch(object_name, operation, key_field, batch)
        waits = limiter.waits
        with limiter.permit():
            if limiter.waits > waits:
                metrics.RATE_LIMIT_WAITS.labels(connector).inc()
            return destination.write_batch(object_name, operation, key_field, batch)

    retrying = retrying_passing_failures(policy, "batch write", connector)
    results: list[RecordResult | None] = [None] * len(records)
    pending = list(range(len(records)))
    for round_no in range(1, policy.attempts + 1):
        batch = [records[i] for i in pending]
        try:
            answers = retrying(one_call, batch)
        except ConnectorError as exc:
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
        pause = min(policy.initial_wait_s * 2 ** (round_no - 1), policy.max_wait_s)
        time.sleep(pause + random.uniform(0, policy.initial_wait_s))
    return BatchOutcome(results=[r for r in results if r is not None])
