"""The sync engine's service: run a queued run (lease → extract → diff → pack batches), write
one batch, finalize a run once its last batch is in, and reap what crashed workers left behind.

Postgres is the truth: a Celery message only says "look at run X / batch N". Every state write
is fenced by the run's token, every batch is claimed before it is written, so a message
delivered twice, or a worker that lost its lease, never records anything twice."""

from __future__ import annotations

import logging
import os
import pickle
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from connectors.destinations.base import Destination, DestinationField, Record, RecordResult
from connectors.errors import AuthError, ConnectorError, RetryableError
from shared import db
from shared.db import transaction
from shared.queue import EXECUTE_RUN, WRITE_BATCH, send
from shared.repositories import connections, dlq, runs, syncs
from shared.repositories import engine as repo
from shared.repositories.engine import LeaseLost
from shared.services.connections import open_connector, record_status
from shared.settings import get_settings
from worker import mapping
from worker.destinations import destination_for
from worker.executor import write_with_retries

log = logging.getLogger(__name__)

HASH_CHUNK = 50_000
ROW_CHUNK = 10_000
# Staging of finished runs is kept this long for inspection, then purged by the reaper.
KEEP_STAGING_S = 3600.0


class RunFailed(Exception):
    """The run cannot go on: bad query or mapping, source down, credentials rejected."""

    def __init__(self, message: str, *, auth: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.auth = auth


class RunCancelled(Exception):
    pass


def worker_id() -> str:
    """Who holds a lease or a claim: host and process, so a takeover is traceable."""
    return f"{socket.gethostname()}:{os.getpid()}"


def enqueue_batch(run_id: str, batch_no: int, token: int) -> None:
    """Ring the doorbell of one batch (tests replace this to drive batches themselves)."""
    send(WRITE_BATCH, run_id, batch_no, token)


def enqueue_run(run_id: str) -> None:
    send(EXECUTE_RUN, run_id)


# -- lease heartbeat -----------------------------------------------------------------------------


class Heartbeat:
    """Renews the planner's lease in the background; the planner checks it between chunks."""

    def __init__(self, run_id: str, token: int) -> None:
        settings = get_settings()
        self.run_id = run_id
        self.token = token
        self.lease_s = settings.lease_seconds
        self.every_s = min(settings.heartbeat_seconds, settings.lease_seconds / 3)
        self.lost = threading.Event()
        self.cancel = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{run_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                with transaction() as conn:
                    answer = repo.heartbeat(conn, self.run_id, self.token, self.lease_s)
            except psycopg.Error as exc:  # a blip: the next beat tries again, within the lease
                log.warning("heartbeat of %s failed: %s", self.run_id, exc)
                continue
            if answer is None:
                self.lost.set()
                return
            if answer:
                self.cancel.set()

    def check(self) -> None:
        if self.lost.is_set():
            raise LeaseLost(self.run_id)
        if self.cancel.is_set():
            raise RunCancelled(self.run_id)


# -- execute a run -------------------------------------------------------------------------------


@dataclass
class RunContext:
    lease: repo.Lease
    sync: syncs.Sync
    source_record: connections.Connection
    destination_record: connections.Connection

    @property
    def run_id(self) -> str:
        return self.lease.run_id

    @property
    def token(self) -> int:
        return self.lease.fencing_token


def execute_run(run_id: str) -> float | None:
    """Take the run and plan it, dispatching its batches. Answers seconds after which to ask
    again (another run of the sync is running, or a live planner still holds the lease)."""
    settings = get_settings()
    try:
        with transaction() as conn:
            lease = repo.take_lease(conn, run_id, worker_id(), settings.lease_seconds)
    except psycopg.errors.UniqueViolation:
        log.info("run %s waits: another run of its sync is running", run_id)
        return max(1.0, settings.lease_seconds / 4)
    if lease is None:
        with transaction() as conn:
            state = repo.run_state(conn, run_id)
        if state is not None and state.status == "running" and state.phase in (None, "planning"):
            return state.seconds_left + 0.5
        return None
    try:
        with Heartbeat(run_id, lease.fencing_token) as heartbeat:
            context = _context(lease)
            batches = _plan(context, heartbeat)
            with transaction() as conn:
                repo.fence(conn, run_id, lease.fencing_token)
                progress = repo.planning_done(conn, run_id, batches)
        if progress.complete:
            finalize(run_id, lease.fencing_token)
    except LeaseLost:
        log.warning("run %s: lease lost while planning; its new holder carries on", run_id)
    except RunCancelled:
        _end_early(lease, "cancelled", None)
    except RunFailed as exc:
        _end_early(lease, "failed", exc.message)
        if exc.auth:
            record_status(lease_destination(lease), "auth_failed", exc.message)
    except Exception as exc:
        log.exception("run %s failed", run_id)
        _end_early(lease, "failed", f"internal error: {type(exc).__name__}: {exc}")
    return None


def lease_destination(lease: repo.Lease) -> str:
    with transaction() as conn:
        return syncs.get_by_id(conn, lease.sync_id).destination_id


def _end_early(lease: repo.Lease, status: str, error: str | None) -> None:
    try:
        with transaction() as conn:
            repo.fence(conn, lease.run_id, lease.fencing_token, durable=True)
            repo.end_run(conn, lease.run_id, lease.fencing_token, status, error)
    except LeaseLost:
        log.warning("run %s ended elsewhere before it could be marked %s", lease.run_id, status)


def _context(lease: repo.Lease) -> RunContext:
    with transaction() as conn:
        repo.fence(conn, lease.run_id, lease.fencing_token)
        sync = syncs.get_by_id(conn, lease.sync_id)
        source = connections.get_by_id(conn, sync.source_id)
        destination = connections.get_by_id(conn, sync.destination_id)
        repo.reset_staging(conn, lease.run_id)
    if source is None:
        raise RunFailed(f"the sync's source {sync.source_id} no longer exists")
    if destination is None:
        raise RunFailed(f"the sync's destination {sync.destination_id} no longer exists")
    return RunContext(lease, sync, source, destination)


def _discover_fields(destination: Destination, object_name: str) -> dict[str, DestinationField] | None:
    """The destination's fields for casting; None (values sent uncast) when discovery fails."""
    try:
        return {f.name: f for f in destination.list_fields(object_name)}
    except AuthError as exc:
        raise RunFailed(f"the destination rejected its credentials: {exc.message}", auth=True) from None
    except ConnectorError as exc:
        log.warning("field discovery of %s failed (%s); values are sent uncast", object_name, exc)
        return None


def _plan(context: RunContext, heartbeat: Heartbeat) -> int:
    """Extract, diff and pack the run's batches; the number of batches dispatched."""
    sync, run_id = context.sync, context.run_id
    try:
        source = open_connector(context.source_record)
    except ConnectorError as exc:
        raise RunFailed(f"the source cannot be opened: {exc.message}") from None
    destination, _ = destination_for(context.destination_record)
    try:
        try:
            columns = source.columns(sync.source_query)
            plan = mapping.plan_for(
                sync.field_mappings, columns, object_name=sync.object_name, mode=sync.sync_mode
            )
        except mapping.MappingError as exc:
            raise RunFailed(str(exc)) from None
        fields = _discover_fields(destination, sync.object_name)
        builder = mapping.RecordBuilder(plan, destination, fields)
        counts, dup_keys = _diff(context, source, plan, heartbeat)
        packer = BatchPacker(context, plan, destination, counts.outgoing)
        _pack_changed_rows(context, source, plan, builder, packer, counts, dup_keys, heartbeat)
        with transaction() as conn:
            removals = repo.removed_keys(conn, run_id)
            if sync.sync_mode == "delete":
                removals = repo.outgoing_keys(conn, run_id)
        packer.operation = "delete"
        for key in removals:
            packer.add(key, {plan.key_field: key})
        packer.flush()
        return packer.batches
    except ConnectorError as exc:
        raise RunFailed(exc.message, auth=isinstance(exc, AuthError)) from None
    finally:
        source.close()


def _diff(context: RunContext, source: Any, plan: mapping.Plan, heartbeat: Heartbeat):
    """Stream (key, hash) from the source into a staging table and classify it in Postgres."""
    sync, lease = context.sync, context.lease
    replay = lease.replay_keys is not None

    def on_chunk(rows: int) -> None:
        heartbeat.check()
        with transaction() as conn:
            repo.fence(conn, lease.run_id, lease.fencing_token)
            repo.set_rows_read(conn, lease.run_id, rows)

    with db.connect() as pg:
        repo.create_stage(pg)
        salted = bool(getattr(type(source), "hashes_take_salt", False))
        if salted:
            chunks = source.stream_key_hashes(
                sync.source_query, plan.key_column, plan.read_columns, HASH_CHUNK,
                salt=plan.fingerprint,
            )
        else:
            chunks = source.stream_key_hashes(
                sync.source_query, plan.key_column, plan.read_columns, HASH_CHUNK
            )
        read = repo.copy_into_stage(pg, chunks, on_chunk)
        heartbeat.check()
        repo.fence(pg, lease.run_id, lease.fencing_token)
        if replay:
            repo.restrict_stage_to_keys(pg, lease.replay_keys or [])
        rejects = repo.stage_rejects(pg, lease.run_id)
        counts = repo.diff_into_ops(
            pg, run_id=lease.run_id, sync_id=sync.id, fingerprint=plan.fingerprint,
            mode=sync.sync_mode, resend_all=lease.full_refresh or replay,
            detect_removed=sync.sync_mode == "mirror" and not replay, salted=salted,
        )
        failed_rows = sum(r.rows for r in rejects)
        repo.set_plan_counts(pg, lease.run_id, read=read, counts=counts, failed=failed_rows)
        pg.commit()
    dup_keys = {r.record_key for r in rejects if r.error_code == "DUPLICATE_KEY"}
    return counts, dup_keys


def _pack_changed_rows(
    context: RunContext, source: Any, plan: mapping.Plan, builder: mapping.RecordBuilder,
    packer: BatchPacker, counts: repo.DiffCounts, dup_keys: set[str], heartbeat: Heartbeat,
) -> None:
    """Read the full rows of the records that go out (filtered in the source) and pack them."""
    sync = context.sync
    to_send = counts.outgoing - counts.deletes
    if to_send == 0 or sync.sync_mode == "delete":
        return
    valid = counts.added + counts.changed + counts.unchanged
    if to_send == valid and context.lease.replay_keys is None:
        keys = None  # everything the result holds goes out: no filter to ship to the source
    else:
        with transaction() as conn:
            keys = repo.outgoing_keys(conn, context.run_id)
    packer.operation = {"mirror": "upsert"}.get(sync.sync_mode, sync.sync_mode)
    seen_dups: set[str] = set()
    for chunk in source.stream_rows_for_keys(
        sync.source_query, plan.key_column, plan.read_columns, keys, ROW_CHUNK
    ):
        heartbeat.check()
        for row in chunk:
            key = row[0]
            if key is None:
                continue
            if key in dup_keys:
                if key in seen_dups:
                    continue
                seen_dups.add(key)
            try:
                fields = builder.build(row)
            except mapping.RecordMappingError as exc:
                packer.fail(key, "MAPPING", str(exc))
                continue
            packer.add(key, fields)
    packer.flush()


class BatchPacker:
    """Collects records into batches of the destination's size; stores and dispatches each."""

    def __init__(
        self, context: RunContext, plan: mapping.Plan, destination: Destination, total: int
    ) -> None:
        self.context = context
        self.key_field = plan.key_field
        self.operation = "upsert"
        operation = "upsert" if context.sync.sync_mode == "mirror" else context.sync.sync_mode
        self.size = max(1, destination.batch_size_for(operation, total))
        self.batches = 0
        self._records: list[tuple[str, dict[str, Any]]] = []
        self._failures: list[repo.Failure] = []

    def add(self, key: str, fields: dict[str, Any]) -> None:
        self._records.append((key, fields))
        if len(self._records) >= self.size:
            self.flush()

    def fail(self, key: str, code: str, message: str) -> None:
        self._failures.append(repo.Failure(key, key, code, message))
        if len(self._failures) >= self.size:
            self.flush()

    def flush(self) -> None:
        if not self._records and not self._failures:
            return
        run_id, token = self.context.run_id, self.context.token
        batch_no = None
        with transaction() as conn:
            repo.fence(conn, run_id, token)
            if self._records:
                batch_no = self.batches + 1
                repo.insert_batch(
                    conn, run_id, batch_no, self.operation, [key for key, _ in self._records],
                    pickle.dumps(self._records, protocol=pickle.HIGHEST_PROTOCOL),
                )
            repo.add_failures(conn, run_id, self._failures)
            repo.add_counts(conn, run_id, failed=len(self._failures))
        self._records, self._failures = [], []
        if batch_no is not None:
            self.batches = batch_no
            enqueue_batch(run_id, batch_no, token)


# -- write a batch -------------------------------------------------------------------------------


@dataclass
class BatchReport:
    status: str  # written, skipped, stale (someone else has it or the run moved on)
    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


class ClaimLost(Exception):
    pass


def write_batch(run_id: str, batch_no: int, token: int) -> BatchReport:
    """Claim batch `batch_no` of the run and write it; the batch that completes the run's last
    finalizes it. Safe to call any number of times for the same batch."""
    claim_s = get_settings().lease_seconds
    with transaction() as conn:
        try:
            cancel = repo.fence(conn, run_id, token)
        except LeaseLost:
            return BatchReport("stale")
        claimed = repo.claim_batch(conn, run_id, batch_no, worker_id(), claim_s)
        if claimed is None:
            return BatchReport("stale")
        progress = repo.progress(conn, run_id)
        stop = cancel or (progress is not None and progress.abort_error is not None)
        if not stop:
            sync, destination_record = _run_targets(conn, run_id)
    if stop:
        return _finish(run_id, token, claimed, [], status="skipped")
    destination, limiter = destination_for(destination_record)
    items: list[tuple[str, dict[str, Any]]] = pickle.loads(claimed.payload)
    records = [Record(key, fields) for key, fields in items]
    key_field = _key_field(sync)

    attempts = 0

    def renew() -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            return  # the claim was just taken
        with transaction() as conn:
            if not repo.renew_claim(conn, run_id, batch_no, claimed.attempts, claim_s):
                raise ClaimLost(f"{run_id}/{batch_no}")

    abort: tuple[str, str] | None = None
    try:
        outcome = write_with_retries(
            destination, limiter, object_name=sync.object_name, operation=claimed.operation,
            key_field=key_field, records=records, before_attempt=renew,
        )
        results = outcome.results
    except ClaimLost:
        return BatchReport("stale")
    except AuthError as exc:
        abort = ("AUTH", f"the destination rejected its credentials: {exc.message}")
        results = [RecordResult.failure("AUTH", exc.message)] * len(records)
    except RetryableError as exc:
        abort = (exc.code, f"the destination is unavailable after retries: {exc.message}")
        results = [RecordResult.failure(exc.code, exc.message)] * len(records)
    except ConnectorError as exc:
        abort = (exc.code, f"the destination refused the batch: {exc.message}")
        results = [RecordResult.failure(exc.code, exc.message)] * len(records)
    failures = [
        repo.Failure(record.key, record.key, result.code or "UNKNOWN",
                     result.message or "refused by the destination")
        for record, result in zip(records, results, strict=True) if not result.ok
    ]
    return _finish(run_id, token, claimed, failures, status="done", abort=abort,
                   total=len(records), sync_id=sync.id)


_targets: dict[str, tuple[syncs.Sync, connections.Connection]] = {}
_targets_lock = threading.Lock()
_TARGETS_KEPT = 64


def _run_targets(
    conn: psycopg.Connection, run_id: str
) -> tuple[syncs.Sync, connections.Connection]:
    """The run's sync and destination as of its first batch in this process: a run writes
    every batch with the same mapping and config, and batches skip three lookups each."""
    with _targets_lock:
        cached = _targets.get(run_id)
    if cached is not None:
        return cached
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
    sync_id: str | None = None,
) -> BatchReport:
    ok = total - len(failures) if status == "done" else 0
    with transaction() as conn:
        try:
            repo.fence(conn, run_id, token)
        except LeaseLost:
            return BatchReport("stale")
        if not repo.finish_batch(conn, run_id, claimed.batch_no, claimed.attempts,
                                 status=status, rows_ok=ok, rows_failed=len(failures)):
            return BatchReport("stale")
        repo.add_failures(conn, run_id, failures)
        repo.add_counts(conn, run_id, written=ok, failed=len(failures))
        if ok and sync_id is not None:
            # The snapshot advances as batches land, so finalizing a large run costs nothing
            # and a run taken over after a crash does not resend what was accepted.
            repo.accept_batch(conn, run_id, claimed.batch_no, sync_id, claimed.operation,
                              [f.record_key for f in failures])
        if abort is not None:
            repo.abort(conn, run_id, *abort)
        progress = repo.count_batch_done(conn, run_id)
    if progress.complete:
        finalize(run_id, token)
    report_status = "written" if status == "done" else "skipped"
    return BatchReport(report_status, ok, len(failures), [abort[1]] if abort else [])


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
        dlq.upsert_open(
            conn, workspace_id=run.workspace_id, sync_id=sync.id, run_id=run_id,
            failures=[
                dlq.FailedRecord(f.record_key, {key_field: f.key_value}, f.error_code, f.message)
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
    return status


# -- reaper --------------------------------------------------------------------------------------


@dataclass
class ReapReport:
    runs_enqueued: list[str]
    batches_enqueued: int
    runs_finalized: list[str]
    staging_purged: int


def reap(*, resend: Callable[[str, int, int], None] | None = None) -> ReapReport:
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
    for run_id in [*queued, *expired]:
        enqueue_run(run_id)
    for batch in stranded:
        (resend or enqueue_batch)(batch.run_id, batch.batch_no, batch.fencing_token)
    finalized = []
    for run_id in unfinished:
        with transaction() as conn:
            token = repo.current_token(conn, run_id)
        if token is not None and finalize(run_id, token):
            finalized.append(run_id)
    return ReapReport([*queued, *expired], len(stranded), finalized, purged)
