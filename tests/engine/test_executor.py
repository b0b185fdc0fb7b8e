"""Batch writes: Retry-After is honoured, retryable records are resent, refusals are kept."""

from __future__ import annotations

from typing import Any

import pytest
from tenacity import RetryCallState, Retrying

from connectors.destinations.base import Destination, Record, RecordResult
from connectors.errors import AuthError, RetryableError
from worker.executor import RetryAfterWait, RetryPolicy, write_with_retries

FAST = RetryPolicy(attempts=4, initial_wait_s=0.001, max_wait_s=0.002, max_retry_after_s=0.05)


class ScriptedDestination(Destination):
    # No type: the connector registry must not pick up this test double.
    type = ""
    label = "scripted"

    def __init__(self, script: list[Any]) -> None:
        super().__init__({})
        self.script = script
        self.calls: list[list[str]] = []

    def test(self) -> None: ...

    def list_objects(self): return []

    def list_fields(self, object_name: str): return []

    def write_batch(self, object_name, operation, key_field, records):
        self.calls.append([r.key for r in records])
        step = self.script.pop(0) if self.script else None
        if isinstance(step, Exception):
            raise step
        if callable(step):
            return step(records)
        return [RecordResult.success()] * len(records)


def _records(n: int) -> list[Record]:
    return [Record(str(i), {"id": i}) for i in range(n)]


def _state(exc: Exception, attempt: int = 1) -> RetryCallState:
    state = RetryCallState(Retrying(), None, (), {})
    state.attempt_number = attempt
    state.set_exception((type(exc), exc, None))
    return state


def test_wait_uses_retry_after_when_the_server_sent_one() -> None:
    wait = RetryAfterWait(RetryPolicy())
    assert 7.0 <= wait(_state(RetryableError("slow", retry_after=7, code="RATE_LIMIT"))) < 7.1
    assert wait(_state(RetryableError("slow", retry_after=10_000))) <= RetryPolicy().max_retry_after_s + 0.1
    assert wait(_state(RetryableError("down"), attempt=1)) <= 1.0


def test_whole_batch_failures_are_retried_until_they_pass() -> None:
    destination = ScriptedDestination([RetryableError("429", retry_after=0.01), RetryableError("503")])
    outcome = write_with_retries(destination, None, object_name="o", operation="upsert",
                                 key_field="id", records=_records(3), policy=FAST)
    assert all(r.ok for r in outcome.results)
    assert len(destination.calls) == 3


def test_retries_run_out_and_the_error_escapes() -> None:
    destination = ScriptedDestination([RetryableError("503")] * 10)
    with pytest.raises(RetryableError):
        write_with_retries(destination, None, object_name="o", operation="upsert",
                           key_field="id", records=_records(2), policy=FAST)
    assert len(destination.calls) == FAST.attempts


def test_auth_errors_are_not_retried() -> None:
    destination = ScriptedDestination([AuthError("bad token")])
    with pytest.raises(AuthError):
        write_with_retries(destination, None, object_name="o", operation="upsert",
                           key_field="id", records=_records(2), policy=FAST)
    assert len(destination.calls) == 1


def test_only_retryable_records_are_sent_again_and_refusals_are_kept() -> None:
    def first(records):
        return [RecordResult.success(), RecordResult.failure("RATE_LIMIT", "busy", retryable=True),
                RecordResult.failure("DESTINATION_VALIDATION", "bad email")]

    destination = ScriptedDestination([first])
    outcome = write_with_retries(destination, None, object_name="o", operation="upsert",
                                 key_field="id", records=_records(3), policy=FAST)
    assert destination.calls == [["0", "1", "2"], ["1"]]
    assert [r.ok for r in outcome.results] == [True, True, False]
    assert outcome.results[2].message == "bad email"


def test_a_failure_while_resending_retryable_records_keeps_the_ones_already_accepted() -> None:
    def first_round(records):
        return [RecordResult.success()] + [
            RecordResult.failure("RATE_LIMIT", "locked", retryable=True) for _ in records[1:]
        ]

    down = RetryableError("503 from the vendor")
    destination = ScriptedDestination([first_round] + [down] * FAST.attempts)
    outcome = write_with_retries(
        destination, None, object_name="o", operation="upsert", key_field="id",
        records=_records(3), policy=FAST,
    )
    assert outcome.results[0].ok
    assert [r.ok for r in outcome.results[1:]] == [False, False]
    assert outcome.error is down


def test_a_failure_of_the_first_call_still_fails_the_whole_batch() -> None:
    destination = ScriptedDestination([AuthError("bad token")])
    with pytest.raises(AuthError):
        write_with_retries(
            destination, None, object_name="o", operation="upsert", key_field="id",
            records=_records(2), policy=FAST,
        )


def test_a_wait_longer_than_a_task_sleeps_asks_to_park_the_batch() -> None:
    from worker.executor import MustWait

    destination = ScriptedDestination([RetryableError("429", retry_after=30, code="RATE_LIMIT")])
    with pytest.raises(MustWait) as parked:
        write_with_retries(destination, None, object_name="o", operation="upsert",
                           key_field="id", records=_records(2), policy=RetryPolicy())
    assert 30 <= parked.value.seconds < 31
    assert parked.value.tries == 1 and parked.value.error.code == "RATE_LIMIT"
    assert len(destination.calls) == 1


def test_tries_spent_before_a_parking_count_towards_the_attempts() -> None:
    destination = ScriptedDestination([RetryableError("503")] * 10)
    with pytest.raises(RetryableError):
        write_with_retries(destination, None, object_name="o", operation="upsert",
                           key_field="id", records=_records(2), policy=FAST, tries_before=3)
    assert len(destination.calls) == FAST.attempts - 3
