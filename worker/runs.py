"""The sync engine's service, one entry point per Celery task: execute a run (lease, then
plan it with worker.planner), write one batch, finalize a run once its last batch is in, and
reap what crashed workers and lost messages left behind.

Postgres is the truth: a Celery message only says "look at run X / batch N". Every state write
is fenced by the run's token, every batch is claimed before it is written, so a message
delivered twice, or a worker that lost its lease, never records anything twice."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from connectors.destinations.base import Record, RecordResult
from connectors.errors import AuthError, ConnectorError, RetryableError
from shared import db
from shared.db import transaction
from shared.repositories import connections, dlq, runs, syncs
from shared.repositories import engine as repo
from shared.repositories.engine import LeaseLost
from shared.services.connections import record_status, redactor_for
from shared.services.run_events import run_ended, run_started
from shared.settings import get_settings
from worker import dispatch, keys, payloads
from worker.destinations import destination_for
from worker.executor import MustWait, RetryPolicy, write_with_retries
from worker.planner import (
    Heartbeat,
    PlannerMustWait,
    PlannerStopping,
    RunCancelled,
    RunFailed,
    RunHeld,
    load_context,
    plan_run,
)
from worker.planner import stopping as planner_stopping

log = logging.getLogger(__name__)

# Staging of finished runs is kept this long for inspection, then purged by the reaper.
KEEP_STAGING_S = 3600.0


# -- execute a run -------------------------------------------------------------------------------


def execute_run(run_id: str) -> float | None:
    """Take the run and plan it, dispatching its batches. Answers seconds after which to ask
    again (another run of the sync is running, or a live planner still holds the lease)."""
    settings = get_settings()
    if stopping.is_set():
        dispatch.enqueue_run(run_id)  # this worker is shutting down: another takes it
        return None
    try:
        with transaction() as conn:
            lease = repo.take_lease(conn, run_id, dispatch.worker_id(), settings.lease_seconds,
                                    settings.max_runs_per_workspace)
    except psycopg.errors.UniqueViolation:
        log.debug("run %s waits: another run of its sync is running", run_id)
        return max(1.0, settings.lease_seconds / 4)
    if lease is None:
        with transaction() as conn:
            state = repo.run_state(conn, run_id)
        if state is not None and state.status == "running" and state.phase in (None, "planning"):
            return state.seconds_left + 0.5
        if state is not None and state.status == "queued":
            # Its workspace has RETL_MAX_RUNS_PER_WORKSPACE runs running: it stays queued, and
            # no message waits for it. The end of one of them rings it (`_start_next_queued`);
            # the reaper rings it again if that message is lost.
            log.info("run %s stays queued: its workspace has its most runs running", run_id)
        return None
    run_started(run_id)
    try:
        with Heartbeat(run_id, lease.fencing_token) as heartbeat:
            context = load_context(lease)
            batches = plan_run(context, heartbeat)
            with transaction() as conn:
                repo.fence(conn, run_id, lease.fencing_token)
                progress = repo.planning_done(conn, run_id, batches)
        if progress.complete:
            finalize(run_id, lease.fencing_token)
        else:
            _call_writers(lease)
            _help_followers(run_id, lease.fencing_token)
    except LeaseLost:
        log.warning("run %s: lease lost while planning; its new holder carries on", run_id)
    except PlannerStopping:
        _hand_back_run(lease)
    except PlannerMustWait as wait:
        _hand_back_run(lease, wait.seconds, wait.message)
    except RunCancelled:
        _stop_planning_cancelled(lease)
    except RunHeld as exc:
        _hold(lease, exc)
    except RunFailed as exc:
        _end_early(lease, "failed", exc.message)
        if exc.auth:
            record_status(lease_destination(lease), "auth_failed", exc.message)
    except Exception as exc:
        log.exception("run %s failed", run_id)
        _end_early(lease, "failed", f"internal error: {type(exc).__name__}: {exc}")
    return None


def _call_writers(lease: repo.Lease) -> None:
    """Planning is over: call as many more writers as the destination's concurrency cap lets
    write at once (this process is one), one doorbell each for the run's next pending batches.
    A writer whose batch another took first takes what is left after it (`follow_planner`),
    so a doorbell too many costs a claim, and a fleet with free processes fills the
    destination's allowance at once rather than one writer a second. With following off, every
    batch already has its doorbell."""
    if get_settings().writer_follow_s <= 0:
        return
    with transaction() as conn:
        sync = syncs.get_by_id(conn, lease.sync_id)
        record = connections.get_by_id(conn, sync.destination_id)
    if record is None:
        return
    _, limiter = destination_for(record)
    with transaction() as conn:
        batch_nos = repo.pending_batches_after_first(
            conn, lease.run_id, limiter.max_concurrency - 1)
    for batch_no in batch_nos:
        dispatch.enqueue_batch(lease.run_id, batch_no, lease.fencing_token)


def _help_followers(run_id: str, token: int) -> None:
    """Planning is over and this process is free: write the batches still left to the run's
    followers (stored with no doorbell) beside them, rather than leave the run's last batches
    to one writer. A failure here is a writer's, never the run's: the batch's claim runs out
    and the reaper hands it on."""
    settings = get_settings()
    if settings.writer_follow_s <= 0:
        return
    taker = _Taker(run_id, token, dispatch.worker_id(), settings.lease_seconds, unrung_only=True)
    try:
        taker.take_all()
        taker.hand_on()
    except Exception:
        log.exception("run %s: writing its last batches after planning failed", run_id)


def _hand_back_run(lease: repo.Lease, wait_s: float = 0.0, why: str | None = None) -> None:
    """Give the run being planned back: its lease ends in `wait_s` (0: now, this worker is
    stopping; else the destination asked to wait) and the run is rung for then, so another
    worker plans it at once rather than after the lease runs out. Its new token fences every
    batch stored so far; what was written of them is in the snapshot and not sent again."""
    with transaction() as conn:
        waits = repo.release_lease(conn, lease.run_id, lease.fencing_token, wait_s)
    if waits is None:
        return
    if wait_s > 0 and waits > RetryPolicy().attempts:
        # The destination kept asking to wait (or stayed away) through every try a batch
        # would get: the run fails, as a batch's records would go to the DLQ.
        _end_early(lease, "failed", f"the destination is unavailable: {why}")
        return
    log.info("run %s handed back for %.1f s: %s", lease.run_id, wait_s,
             why or "this worker is stopping")
    dispatch.enqueue_run(lease.run_id, countdown=wait_s)


def _stop_planning_cancelled(lease: repo.Lease) -> None:
    """A cancel stopped the planner: the batches stored so far are all the run has. A batch
    being written is recorded as usual (counted, and in the snapshot); the others are skipped
    at their claim (it answers `stop`), here at once rather than when their messages come;
    the last one to finish ends the run `cancelled`."""
    run_id, token = lease.run_id, lease.fencing_token
    try:
        with transaction() as conn:
            repo.fence(conn, run_id, token)
            progress = repo.planning_done(conn, run_id, runs.stored_batches(conn, run_id))
    except LeaseLost:
        log.warning("run %s: lease lost while stopping on a cancel", run_id)
        return
    if progress.complete:
        finalize(run_id, token)
        return
    taker = _Taker(run_id, token, dispatch.worker_id(), get_settings().lease_seconds)
    try:
        taker.take_all()
        taker.hand_on()  # its turn ended first: the next free process skips the rest
    except Exception:  # the skipped batches' claims run out and the reaper hands them on
        log.exception("run %s: skipping its batches after a cancel failed", run_id)


def lease_destination(lease: repo.Lease) -> str:
    with transaction() as conn:
        return syncs.get_by_id(conn, lease.sync_id).destination_id


def _end_early(lease: repo.Lease, status: str, error: str | None) -> None:
    try:
        with transaction() as conn:
            if repo.fence(conn, lease.run_id, lease.fencing_token, durable=True):
                # Cancelled: whatever stopped the planner meanwhile (the cancel interrupting
                # its source query, say), the run ends as its user asked.
                status, error = "cancelled", None
            if error is not None:
                error = _run_redactor(conn, lease.sync_id)(error)
            repo.end_run(conn, lease.run_id, lease.fencing_token, status, error)
    except LeaseLost:
        log.warning("run %s ended elsewhere before it could be marked %s", lease.run_id, status)
        return
    run_ended(lease.run_id)
    _start_next_queued(lease.workspace_id)


def _run_redactor(conn: psycopg.Connection, sync_id: str) -> Callable[[str], str]:
    """What takes the secrets of a sync's source and destination out of a run's texts."""
    sync = syncs.get_by_id(conn, sync_id)
    if sync is None:
        return redactor_for()
    return redactor_for(connections.get_by_id(conn, sync.source_id),
                        connections.get_by_id(conn, sync.destination_id))


def _start_next_queued(workspace_id: str) -> None:
    """A run of the workspace ended: with a cap on its runs in flight, ring the queued run that
    may take the place now rather than let it wait for its next look."""
    if get_settings().max_runs_per_workspace <= 0:
        return
    with transaction() as conn:
        run_id = repo.next_queued_run(conn, workspace_id)
    if run_id is not None:
        dispatch.enqueue_run(run_id)


def _hold(lease: repo.Lease, held: RunHeld) -> None:
    """The plan crossed the sync's guard: the run ends `held`, its batches kept unwritten (or
    `cancelled`, its plan dropped, when a cancel came meanwhile)."""
    log.warning("run %s held: %s", lease.run_id, held.message)
    run_id, token = lease.run_id, lease.fencing_token
    try:
        with transaction() as conn:
            if repo.fence(conn, run_id, token, durable=True):
                repo.discard_plan(conn, run_id)
                repo.end_run(conn, run_id, token, "cancelled", None)
            else:
                repo.hold_run(conn, run_id, token, held.batches, held.message)
    except LeaseLost:
        log.warning("run %s ended elsewhere before it could be held", lease.run_id)
        return
    run_ended(run_id)


# -- write a batch -------------------------------------------------------------------------------


@dataclass
class BatchReport:
    status: str  # written, skipped, parked (it waits, in Postgres), stale (someone else has
    # it or the run moved on)
    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    # The run's next pending batch, claimed in the same transaction (when asked for).
    next_claim: repo.FencedClaim | None = None
    wait_s: float | None = None  # parked: how long until it is tried again


class ClaimLost(Exception):
    """Another worker holds the batch now: this one must not record anything for it."""


# A batch whose claim expired this many times mid-write ends its run instead of looping.
MAX_BATCH_ATTEMPTS = 5


class ClaimKeeper:
    """Keeps a batch's claim while its write runs, so a slow vendor call (a Salesforce bulk job
    polls for minutes) never lets the reaper hand the batch to a second worker; `check` (before
    each attempt) stops a worker whose claim was taken anyway. The renewing is done by the
    process's one `_ClaimRenewer` thread: a thread started per batch costs more than most
    batches' writes take."""

    def __init__(self, run_id: str, batch_no: int, attempts: int, claim_s: float) -> None:
        self.run_id, self.batch_no, self.attempts, self.claim_s = run_id, batch_no, attempts, claim_s
        self.lost = threading.Event()
        self.renew_at = 0.0

    def __enter__(self) -> ClaimKeeper:
        _renewer().hold(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        _renewer().release(self)

    def renew(self) -> bool:
        """Extend the claim; False once another claim holds the batch (or it is finished)."""
        with transaction() as conn:
            return repo.renew_claim(conn, self.run_id, self.batch_no, self.attempts, self.claim_s)

    def check(self) -> None:
        if self.lost.is_set():
            raise ClaimLost(f"{self.run_id}/{self.batch_no}")


class _ClaimRenewer:
    """One thread per process renewing every claim held by that process a third of a claim's
    length after its last renewal. A claim whose renewal finds it taken is marked lost."""

    def __init__(self) -> None:
        self._held: set[ClaimKeeper] = set()
        self._changed = threading.Condition()
        self._wakes_at = 0.0  # when the thread wakes next, unless woken: set before it waits
        self._thread = threading.Thread(target=self._loop, name="claim-renewer", daemon=True)
        self._thread.start()

    def hold(self, keeper: ClaimKeeper) -> None:
        with self._changed:
            keeper.renew_at = time.monotonic() + keeper.claim_s / 3
            self._held.add(keeper)
            # Woken only when this claim is due before the thread would wake anyway: batch
            # after batch, a claim is held for less than a renewal's interval, and waking the
            # thread for each would cost the writer a switch to it and back.
            if keeper.renew_at < self._wakes_at:
                self._changed.notify()

    def release(self, keeper: ClaimKeeper) -> None:
        with self._changed:
            self._held.discard(keeper)

    def _loop(self) -> None:
        while True:
            with self._changed:
                now = time.monotonic()
                due = [k for k in self._held if k.renew_at <= now]
                if not due:
                    self._wakes_at = min((k.renew_at for k in self._held), default=now + 60.0)
                    self._changed.wait(timeout=self._wakes_at - now)
                    continue
            for keeper in due:
                self._renew(keeper)

    def _renew(self, keeper: ClaimKeeper) -> None:
        try:
            held = keeper.renew()
        except Exception as exc:  # a blip (Postgres, the pool): try again, within the claim;
            # the one renewer of the process must outlive any error, or every claim would lapse
            log.warning("renewing the claim of %s/%s failed: %s",
                        keeper.run_id, keeper.batch_no, exc)
            held = True
        with self._changed:
            if keeper not in self._held:
                return  # its write ended meanwhile
            if held:
                keeper.renew_at = time.monotonic() + keeper.claim_s / 3
            else:
                keeper.lost.set()
                self._held.discard(keeper)


_renewer_of_process: tuple[int, _ClaimRenewer] | None = None
_renewer_lock = threading.Lock()


def _renewer() -> _ClaimRenewer:
    """This process's renewer; a forked child (a prefork worker) starts its own."""
    global _renewer_of_process
    with _renewer_lock:
        if _renewer_of_process is None or _renewer_of_process[0] != os.getpid():
            _renewer_of_process = (os.getpid(), _ClaimRenewer())
        return _renewer_of_process[1]


class _Stale(Exception):
    """Another claim of the batch records its outcome, or the run is no longer this token's:
    this transaction must not record anything."""


def write_batch(run_id: str, batch_no: int, token: int) -> BatchReport:
    """Claim batch `batch_no` of the run and write it; the batch that completes the run's last
    finalizes it. Safe to call any number of times for the same batch. While the run is still
    being planned, the writer then follows the planner (`follow_planner`)."""
    claim_s = get_settings().lease_seconds
    if stopping.is_set():
        # This worker is shutting down: the batch goes back at once, for another worker.
        dispatch.enqueue_batch(run_id, batch_no, token)
        return BatchReport("stale")
    with transaction() as conn, conn.pipeline():  # BEGIN travels with the claim
        fenced = repo.claim_batch_fenced(
            conn, run_id, batch_no, token, dispatch.worker_id(), claim_s
        )
    report = BatchReport("stale") if fenced is None else _write_claimed(run_id, token, fenced)
    if report.status != "parked":  # the destination asked to wait: no more of it now
        follow_planner(run_id, token)
    return report


# How long a pool process writes the batches of one run before it hands the run on (one
# doorbell for its next batch, queued behind everyone else's) and takes the next message: a
# large run shares the fleet with the runs triggered after it.
WRITER_TURN_S = 2.0

# Set in a worker process told to stop (see worker.app): writers hand back what they hold at
# the next batch boundary, planners their run at the next chunk (the planner's own flag).
stopping = planner_stopping


def follow_planner(run_id: str, token: int) -> int:
    """While the run is being planned, take its batches as they are stored, most without their
    doorbells (see "writers following the planner" in the engine's repository): promise to
    follow, claim the run's pending batches in order, wait for the next one (a NOTIFY), and
    withdraw the promise after `RETL_WRITER_FOLLOW_SECONDS` without one. Once planning has
    ended, take what was left to followers, then stop. A writer's turn lasts WRITER_TURN_S at
    most: then the run is handed on (`_Taker.hand_on`). The number of batches written."""
    settings = get_settings()
    follow_s = settings.writer_follow_s
    if follow_s <= 0:
        return 0
    taker = _Taker(run_id, token, dispatch.worker_id(), settings.lease_seconds)
    with transaction() as conn:
        following = repo.promise_to_follow(conn, run_id, token, follow_s)
    if not following:
        # Planning is over: batches left to followers (no doorbell) are taken in this turn.
        taker.unrung_only = True
        taker.take_all()
        taker.hand_on()
        return taker.written
    promised_at = idle_since = time.monotonic()
    listener: psycopg.Connection | None = None
    try:
        while True:
            taken = taker.take_next()
            if taker.must_stop:
                taker.hand_on()  # the promise is withdrawn and the run's next batch rung
                return taker.written
            now = time.monotonic()
            if taken:
                idle_since = now
            if not taken or now - promised_at > follow_s / 3:
                with transaction() as conn:
                    following = repo.promise_to_follow(conn, run_id, token, follow_s)
                promised_at = now
                if not following:
                    # Planning has ended (or the run is not this token's): no batch comes any
                    # more, and every stored one is visible now. Take what is left, then stop.
                    taker.take_all()
                    taker.hand_on()
                    return taker.written
            if taken:
                continue
            if now - idle_since >= follow_s:
                with transaction() as conn:
                    if repo.retire_follower(conn, run_id):
                        return taker.written
                idle_since = now  # a batch was stored meanwhile: take it
                continue
            if listener is None:
                # Listen, then look once more before waiting: nothing stored in between is
                # missed.
                listener = db.connect(autocommit=True)
                listener.execute(
                    sql.SQL("LISTEN {}").format(sql.Identifier(repo.followers_channel(run_id)))
                )
                continue
            # Woken by the next stored batch (or the end of planning), or the wait runs out.
            wait_s = min(follow_s - (now - idle_since), taker.turn_left())
            next(listener.notifies(timeout=max(wait_s, 0.0), stop_after=1), None)
    finally:
        if listener is not None:
            listener.close()
        taker.release()


class _Taker:
    """Takes a run's pending batches one after the other, each claimed in the transaction that
    records the one before it: a batch costs its writer one transaction, not two. It stops
    taking (`must_stop`) when its turn is over, when a batch had to be parked, or when the
    worker is stopping; `hand_on` then passes the run on."""

    def __init__(
        self, run_id: str, token: int, owner: str, claim_s: float, *, unrung_only: bool = False,
        turn_s: float | None = None,
    ) -> None:
        self.run_id, self.token, self.owner, self.claim_s = run_id, token, owner, claim_s
        self.unrung_only = unrung_only  # only batches left to followers (no doorbell)
        self.written = 0
        self.turn_ends = time.monotonic() + (WRITER_TURN_S if turn_s is None else turn_s)
        self.parked_for: float | None = None  # the last batch was parked for this long
        self._claimed: repo.FencedClaim | None = None

    @property
    def must_stop(self) -> bool:
        return (
            self.parked_for is not None or stopping.is_set()
            or time.monotonic() >= self.turn_ends
        )

    def turn_left(self) -> float:
        return max(0.0, self.turn_ends - time.monotonic())

    def take_next(self) -> bool:
        """Write the run's next pending batch; False when there was none to take, or when it
        must stop taking."""
        if self.must_stop:
            return False
        fenced, self._claimed = self._claimed, None
        if fenced is None:
            with transaction() as conn, conn.pipeline():
                fenced = repo.claim_next_pending(
                    conn, self.run_id, self.token, self.owner, self.claim_s, self.unrung_only
                )
        if fenced is None:
            return False
        report = _write_claimed(self.run_id, self.token, fenced, then_claim=self._send_claim)
        if report.status == "parked":
            self.parked_for = report.wait_s
            return False
        self._claimed = report.next_claim
        self.written += 1
        return True

    def take_all(self) -> None:
        """Write the run's pending batches until there is none left to take, or it must stop."""
        while self.take_next():
            continue

    def _send_claim(self, conn: psycopg.Connection) -> psycopg.Cursor:
        return repo.send_claim_next_pending(
            conn, self.run_id, self.token, self.owner, self.claim_s, self.unrung_only
        )

    def hand_on(self) -> None:
        """After stopping early: withdraw this writer's promise to follow and ring the run's
        next batch left to followers, so the run goes on with the next free process (after
        the parked batch's wait, when the destination asked for one). Nothing to do when it
        stopped because no batch was left."""
        self.release()
        if not self.must_stop:
            return
        with transaction() as conn:
            batch_no = repo.hand_on(conn, self.run_id)
        if batch_no is not None:
            dispatch.enqueue_batch(self.run_id, batch_no, self.token,
                                   countdown=self.parked_for or 0.0)

    def release(self) -> None:
        """A batch claimed but not written (the taker is stopping) is handed back at once."""
        fenced, self._claimed = self._claimed, None
        if fenced is None:
            return
        batch = fenced.batch
        try:
            with transaction() as conn:
                handed = repo.park_batch(conn, self.run_id, batch.batch_no, batch.attempts,
                                         self.token, wait_s=0.0, tries=batch.tries, error=None)
            if handed:
                dispatch.enqueue_batch(self.run_id, batch.batch_no, self.token)
        except Exception:  # its claim runs out instead, and the reaper hands it on
            log.exception("run %s: handing back batch %s failed", self.run_id, batch.batch_no)


def _write_claimed(
    run_id: str, token: int, fenced: repo.FencedClaim, *,
    then_claim: Callable[[psycopg.Connection], psycopg.Cursor] | None = None,
) -> BatchReport:
    """Write a claimed batch and record what became of it; with `then_claim`, the recording
    transaction also sends the claim of the run's next batch (`repo.send_claim_next_pending`),
    answered as the report's `next_claim`."""
    claimed, stop, has_hashes = fenced.batch, fenced.stop, fenced.has_hashes
    new_keys = has_hashes and fenced.fresh_snapshot
    batch_no = claimed.batch_no
    claim_s = get_settings().lease_seconds
    if stop:
        return _finish(run_id, token, claimed, [], status="skipped", then_claim=then_claim)
    try:
        items = payloads.decode(claimed.payload)
    except payloads.PayloadError as exc:
        # Not data this engine stored (a pickle, a damaged row): never run it, end the run.
        message = f"batch {batch_no} was refused: {exc}"
        log.error("run %s: %s", run_id, message)
        return _finish(run_id, token, claimed, [], status="done", abort=("UNKNOWN", message),
                       then_claim=then_claim)
    records = [Record(key, fields) for key, fields in items]
    try:
        sync, destination_record = _run_targets(run_id)
        destination, limiter = destination_for(destination_record)
    except Exception as exc:  # nothing can be written; the run must end, never wait for ever
        message = exc.message if isinstance(exc, RunFailed) else f"{type(exc).__name__}: {exc}"
        log.warning("run %s batch %s cannot be written: %s", run_id, batch_no, message)
        failures = [repo.Failure(r.key, r.key, "UNKNOWN", message) for r in records]
        return _finish(run_id, token, claimed, failures, status="done",
                       abort=("UNKNOWN", message), total=len(records), then_claim=then_claim)
    key_field = _key_field(sync)
    if claimed.attempts - claimed.parkings > MAX_BATCH_ATTEMPTS:
        # Every earlier claim died mid-write (a worker killed by this batch, say): stop
        # handing it to the next worker and end the run with the reason. Claims that parked
        # the batch (it waited for the destination) were not interrupted.
        interrupted = claimed.attempts - claimed.parkings - 1
        message = f"batch {batch_no} was abandoned after {interrupted} interrupted writes"
        failures = [repo.Failure(r.key, r.key, "UNKNOWN", message) for r in records]
        return _finish(run_id, token, claimed, failures, status="done",
                       abort=("UNKNOWN", message), total=len(records), then_claim=then_claim)

    abort: tuple[str, str] | None = None
    try:
        with ClaimKeeper(run_id, batch_no, claimed.attempts, claim_s) as keeper:
            outcome = write_with_retries(
                destination, limiter, object_name=sync.object_name, operation=claimed.operation,
                key_field=key_field, records=records, before_attempt=keeper.check,
                tries_before=claimed.tries,
            )
        results = outcome.results
        if outcome.error is not None:
            abort = _abort_reason(outcome.error)
    except ClaimLost:
        return BatchReport("stale")
    except MustWait as wait:
        return park(run_id, token, claimed, wait.seconds, wait.tries,
                    None if wait.error is None else wait.error.message)
    except ConnectorError as exc:
        abort = _abort_reason(exc)
        code = "AUTH" if isinstance(exc, AuthError) else exc.code
        results = [RecordResult.failure(code, exc.message)] * len(records)
    except Exception as exc:  # a connector's bug must end the run, not loop through the reaper
        log.exception("run %s batch %s: the connector failed", run_id, batch_no)
        message = f"the destination connector failed: {type(exc).__name__}: {exc}"
        abort = ("UNKNOWN", message)
        results = [RecordResult.failure("UNKNOWN", message)] * len(records)
    # Whatever the destination answered, none of its own secrets goes back into the DLQ.
    redact = redactor_for(destination_record)
    if abort is not None:
        abort = (abort[0], redact(abort[1]))
    failures = [
        repo.Failure(record.key, record.key, result.code or "UNKNOWN",
                     redact(result.message or "refused by the destination"))
        for record, result in zip(records, results, strict=True) if not result.ok
    ]
    return _finish(run_id, token, claimed, failures, status="done", abort=abort,
                   total=len(records), sync_id=sync.id, has_hashes=has_hashes,
                   new_keys=new_keys, key_kind=fenced.key_kind, then_claim=then_claim)


def park(
    run_id: str, token: int, claimed: repo.ClaimedBatch, wait_s: float, tries: int,
    error: str | None,
) -> BatchReport:
    """Hand the claimed batch back to Postgres, to be written again in `wait_s` seconds, and
    ring its doorbell for then: the pool process is free meanwhile (no write of it is in
    flight, so nothing can be written twice; the next claim is fenced as every claim is)."""
    with transaction() as conn:
        parked = repo.park_batch(conn, run_id, claimed.batch_no, claimed.attempts, token,
                                 wait_s=wait_s, tries=tries, error=error)
    if not parked:
        return BatchReport("stale")
    log.info("run %s batch %s parked for %.1f s after %d tries%s", run_id, claimed.batch_no,
             wait_s, tries, f": {error}" if error else "")
    dispatch.enqueue_batch(run_id, claimed.batch_no, token, countdown=wait_s)
    return BatchReport("parked", wait_s=wait_s)


def _abort_reason(exc: ConnectorError) -> tuple[str, str]:
    """The code and message a whole-batch failure ends the run with."""
    if isinstance(exc, AuthError):
        return "AUTH", f"the destination rejected its credentials: {exc.message}"
    if isinstance(exc, RetryableError):
        return exc.code, f"the destination is unavailable after retries: {exc.message}"
    return exc.code, f"the destination refused the batch: {exc.message}"


_targets: dict[str, tuple[syncs.Sync, connections.Connection]] = {}
_targets_lock = threading.Lock()
_TARGETS_KEPT = 64


def _run_targets(run_id: str) -> tuple[syncs.Sync, connections.Connection]:
    """The run's sync and destination as of its first batch in this process: a run writes
    every batch with the same mapping and config, and batches skip three lookups each."""
    with _targets_lock:
        cached = _targets.get(run_id)
    if cached is not None:
        return cached
    with transaction() as conn:
        sync = syncs.get_by_id(conn, runs.get_by_id(conn, run_id).sync_id)
        destination = connections.get_by_id(conn, sync.destination_id)
    if destination is None:
        raise RunFailed(f"the sync's destination {sync.destination_id} no longer exists")
    with _targets_lock:
        if len(_targets) >= _TARGETS_KEPT:
            _targets.pop(next(iter(_targets)))
        _targets[run_id] = (sync, destination)
    return sync, destination


def _key_field(sync: syncs.Sync) -> str:
    for entry in sync.field_mappings:
        if entry.get("key"):
            return str(entry["destination"])
    return ""


def _finish(
    run_id: str, token: int, claimed: repo.ClaimedBatch, failures: list[repo.Failure], *,
    status: str, abort: tuple[str, str] | None = None, total: int = 0,
    sync_id: str | None = None, has_hashes: bool = False, new_keys: bool = False,
    key_kind: str | None = None,
    then_claim: Callable[[psycopg.Connection], psycopg.Cursor] | None = None,
) -> BatchReport:
    ok = total - len(failures) if status == "done" else 0
    next_claim: repo.FencedClaim | None = None
    try:
        # Pipelined: the transaction's statements go to Postgres together and only the last
        # one's answer is awaited, so recording a batch costs two round trips (this, COMMIT).
        with transaction() as conn, conn.pipeline():
            if ok and sync_id is not None:
                # The snapshot advances as batches land, so finalizing a large run costs
                # nothing and a run taken over after a crash does not resend what was accepted.
                # First: it is the longest statement, and it holds no lock of the run's rows.
                repo.accept_batch(conn, run_id, claimed.batch_no, sync_id, claimed.operation,
                                  [f.record_key for f in failures], has_hashes=has_hashes,
                                  new_keys=new_keys, key_kind=key_kind)
            repo.add_failures(conn, run_id, failures)
            # The next batch's claim travels with the record, and is undone with it. It skips
            # locked batches, and no one else locks this claim's batch: no lock waits on it.
            next_cursor = then_claim(conn) if then_claim is not None else None
            # Last, and in one statement: the batch, the run's row (fence and counters), then
            # its progress row, the lock order of the planner and finalize.
            progress = repo.record_batch(
                conn, run_id, claimed.batch_no, claimed.attempts, token, status=status,
                rows_ok=ok, rows_failed=len(failures), abort=abort,
            )
            if progress is None:
                raise _Stale
            if next_cursor is not None:
                next_claim = repo.read_claim(next_cursor)
    except (_Stale, LeaseLost):
        return BatchReport("stale")
    except psycopg.errors.UniqueViolation:
        if not new_keys:
            raise
        # A key of the batch is in the snapshot after all (another claim of this batch got it
        # accepted first): nothing was recorded, record it again the general way.
        return _finish(run_id, token, claimed, failures, status=status, abort=abort,
                       total=total, sync_id=sync_id, has_hashes=has_hashes,
                       key_kind=key_kind, then_claim=then_claim)
    if progress.complete:
        finalize(run_id, token)
    report_status = "written" if status == "done" else "skipped"
    return BatchReport(report_status, ok, len(failures), [abort[1]] if abort else [],
                       next_claim)


# -- finalize ------------------------------------------------------------------------------------


def finalize(run_id: str, token: int) -> str | None:
    """Advance the snapshot, settle the DLQ and end the run; its final status, or None when
    another worker holds the run now."""
    with transaction() as conn:
        try:
            cancel = repo.fence(conn, run_id, token, durable=True)
        except LeaseLost:
            return None
        run = runs.get_by_id(conn, run_id)
        sync = syncs.get_by_id(conn, run.sync_id)
        progress = repo.progress(conn, run_id)
        failures = repo.run_failures(conn, run_id)
        null_keys = any(f.error_code == "NULL_KEY" for f in failures)
        if not null_keys and run.replay_keys is None and not cancel:
            repo.resolve_null_key_entry(conn, sync.id)
        key_field = _key_field(sync) or "key"
        kind = progress.key_kind if progress is not None else None
        dlq.upsert_open(
            conn, workspace_id=run.workspace_id, sync_id=sync.id, run_id=run_id,
            failures=[
                dlq.FailedRecord(f.record_key, {key_field: keys.typed(f.key_value, kind)},
                                 f.error_code, f.message)
                for f in failures
            ],
        )
        if cancel:
            status, error = "cancelled", None
        elif progress is not None and progress.abort_error:
            status, error = "failed", progress.abort_error
        else:
            status, error = "succeeded", None
        repo.end_run(conn, run_id, token, status, error)
        written = runs.get_by_id(conn, run_id).rows_written
    if progress is not None and progress.abort_code == "AUTH":
        record_status(sync.destination_id, "auth_failed", progress.abort_error)
    elif written > 0:
        record_status(sync.destination_id, "connected", None)
    run_ended(run_id)
    _start_next_queued(run.workspace_id)
    return status


# -- reaper --------------------------------------------------------------------------------------


@dataclass
class ReapReport:
    runs_enqueued: list[str]
    batches_enqueued: int
    runs_finalized: list[str]
    staging_purged: int


def reap() -> ReapReport:
    """Find what lost messages and dead workers left behind and ring its doorbell again:
    queued runs never picked up, planners whose lease expired, batches whose claimant died,
    runs whose last batch finished but were never finalized."""
    settings = get_settings()
    lease_s = settings.lease_seconds
    with transaction() as conn:
        queued = repo.stale_queued_runs(conn, lease_s)
        expired = repo.expired_planning_runs(conn)
        stranded = repo.stranded_batches(conn, lease_s * 2)
        unfinished = repo.complete_unfinalized_runs(conn)
        purged = repo.purge_finished_staging(conn, KEEP_STAGING_S)
        if queued:
            runs.mark_enqueued(conn, queued)
    with transaction() as conn:  # its lock timeout must not reach the statements above
        repo.drop_abandoned_stages(conn)
    for run_id in [*queued, *expired]:
        dispatch.enqueue_run(run_id)
    for batch in stranded:
        dispatch.enqueue_batch(batch.run_id, batch.batch_no, batch.fencing_token)
    finalized = []
    for run_id in unfinished:
        with transaction() as conn:
            token = repo.current_token(conn, run_id)
        if token is not None and finalize(run_id, token):
            finalized.append(run_id)
    return ReapReport([*queued, *expired], len(stranded), finalized, purged)
