"""Planning a run: find the records that go out, map them and pack them into batches that any
worker of the fleet can write.

Two ways, one result. An incremental run reads (key, hash) from the source into a staging
table, diffs it against the snapshot in Postgres and reads the full rows of only the records
that go out. A run that sends every row (the sync's first, a full refresh) reads the source
once: key, hash and row together, staged and packed as they stream."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from connectors.destinations.base import Destination, DestinationField
from connectors.errors import AuthError, ConnectorError, RetryableError
from connectors.sources.base import QueryCancelled, Source
from shared import db, guards
from shared.db import transaction
from shared.repositories import connections, runs, syncs
from shared.repositories import engine as repo
from shared.repositories.engine import LeaseLost
from shared.services.connections import open_connector
from shared.settings import get_settings
from worker import dispatch, keys, mapping, payloads
from worker.destinations import destination_for
from worker.executor import MustWait, RetryPolicy, call_or_must_wait
from worker.field_digests import record_digests

log = logging.getLogger(__name__)

HASH_CHUNK = 10_000
ROW_CHUNK = 10_000
# How often a planner looks for a cancel of its run (between lease renewals).
CANCEL_POLL_S = 1.0
# How often a planner staging the source's rows writes how many it has read.
PROGRESS_EVERY_S = 1.0


class RunFailed(Exception):
    """The run cannot go on: bad query or mapping, source down, credentials rejected."""

    def __init__(self, message: str, *, auth: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.auth = auth


class RunCancelled(Exception):
    """A cancel was requested while the run was being planned."""


class PlannerStopping(Exception):
    """This worker is shutting down: the planner hands its run back (see worker.runs)."""


class PlannerMustWait(Exception):
    """The destination asked to wait before the run can be planned (a quota answer while its
    fields are read): the planner hands the run back until then (see worker.runs)."""

    def __init__(self, seconds: float, message: str) -> None:
        super().__init__(message)
        self.seconds, self.message = seconds, message


# Set in a worker process told to stop (worker.app); checked with the lease, between chunks.
stopping = threading.Event()


class RunHeld(Exception):
    """The plan crossed the sync's guard: its `batches` are kept unwritten, and the run is held
    until someone approves or cancels it."""

    def __init__(self, message: str, batches: int) -> None:
        super().__init__(message)
        self.message = message
        self.batches = batches


class Heartbeat:
    """Renews the planner's lease in the background and watches for a cancel: the planner
    checks it between chunks, and a source query running meanwhile is stopped at once by the
    callbacks given to `when_cancelled`."""

    def __init__(self, run_id: str, token: int) -> None:
        settings = get_settings()
        self.run_id = run_id
        self.token = token
        self.lease_s = settings.lease_seconds
        self.every_s = min(settings.heartbeat_seconds, settings.lease_seconds / 3)
        self.lost = threading.Event()
        self.cancel = threading.Event()
        self._on_cancel: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{run_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        beat_at = time.monotonic() + self.every_s
        while not self._stop.wait(max(0.0, min(CANCEL_POLL_S, beat_at - time.monotonic()))):
            try:
                with transaction() as conn:
                    if time.monotonic() < beat_at:
                        answer: bool | None = runs.cancel_requested(conn, self.run_id)
                    else:
                        beat_at = time.monotonic() + self.every_s
                        answer = repo.heartbeat(conn, self.run_id, self.token, self.lease_s)
            except psycopg.Error as exc:  # a blip: the next beat tries again, within the lease
                log.warning("heartbeat of %s failed: %s", self.run_id, exc)
                continue
            if answer is None:
                self.lost.set()
                return
            if answer and not self.cancel.is_set():
                self._cancelled()

    def _cancelled(self) -> None:
        with self._lock:
            self.cancel.set()
            callbacks, self._on_cancel = self._on_cancel, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # the planner still stops at its next check
                log.exception("run %s: stopping its work on cancel failed", self.run_id)

    def when_cancelled(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from the heartbeat's thread) once a cancel is seen; at once if it
        was seen already."""
        with self._lock:
            if not self.cancel.is_set():
                self._on_cancel.append(callback)
                return
        callback()

    def check(self) -> None:
        if self.lost.is_set():
            raise LeaseLost(self.run_id)
        if self.cancel.is_set():
            raise RunCancelled(self.run_id)
        if stopping.is_set():
            raise PlannerStopping(self.run_id)



# -- planning ------------------------------------------------------------------------------------


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


def load_context(lease: repo.Lease) -> RunContext:
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
    """The destination's fields for casting. A passing failure (429, 5xx) is retried like a
    write, and fails the run when it lasts; a destination that cannot describe the object
    (None) gets its values uncast."""
    try:
        fields = call_or_must_wait(
            RetryPolicy(), "field discovery", destination.list_fields, object_name
        )
        return {f.name: f for f in fields}
    except MustWait as wait:
        raise PlannerMustWait(wait.seconds, str(wait)) from None
    except AuthError as exc:
        raise RunFailed(f"the destination rejected its credentials: {exc.message}", auth=True) from None
    except RetryableError as exc:
        raise RunFailed(f"the destination is unavailable: {exc.message}") from None
    except ConnectorError as exc:
        log.warning("field discovery of %s failed (%s); values are sent uncast", object_name, exc)
        return None


def plan_run(context: RunContext, heartbeat: Heartbeat) -> int:
    """Extract, diff and pack the run's batches; the number of batches dispatched."""
    sync, run_id = context.sync, context.run_id
    try:
        source = open_connector(context.source_record)
    except ConnectorError as exc:
        raise RunFailed(f"the source cannot be opened: {exc.message}") from None
    # A cancel stops the source query running at that moment, not only the next chunk.
    heartbeat.when_cancelled(source.interrupt)
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
        held: str | None = None  # why the sync's guard holds the plan
        if _sends_every_row(context, source, destination):
            packer: BatchPacker = _pack_in_one_pass(
                context, source, plan, builder, destination, heartbeat
            )
        else:
            counts, dup_keys = _diff(context, source, plan, heartbeat)
            held = _guard_verdict(context, counts)
            packer = BatchPacker(context, destination, counts.outgoing, held=held is not None)
            _pack_changed_rows(context, source, plan, builder, packer, counts, dup_keys, heartbeat)
        with transaction() as conn:
            if sync.sync_mode == "delete":
                removals = [(key, None) for key in repo.outgoing_keys(conn, run_id)]
            else:
                removals = repo.removed_keys(conn, run_id, sync.id)
        packer.operation = "delete"
        if removals:
            run_kind = packer.key_kind or _key_kind_without_rows(context, source, plan, builder)
            for key, kind in removals:
                # Deleted as the source typed the key: as the snapshot took it, else as now.
                packer.add(key, {plan.key_field: keys.typed(key, kind or run_kind)})
        packer.flush()
        if held is not None:
            raise RunHeld(held, packer.batches)
        return packer.batches
    except ConnectorError as exc:
        if isinstance(exc, QueryCancelled) or heartbeat.cancel.is_set():
            raise RunCancelled(context.run_id) from None
        raise RunFailed(exc.message, auth=isinstance(exc, AuthError)) from None
    finally:
        source.close()


def _learn_key_kind(
    context: RunContext, packer: BatchPacker, chunk: list[tuple],
    build: Callable[[tuple], dict[str, Any]], key_field: str,
) -> None:
    """Before the run's first batch is stored: how the run's keys are typed as its records
    send them (the source's type, or the destination field's when it casts), from the first
    record with a key, for the snapshot, the deletes and the DLQ (`repo.set_key_kind`)."""
    if not key_field:
        return
    for row in chunk:
        if row[0] is None:
            continue
        try:
            value = build(row).get(key_field)
        except mapping.RecordMappingError:
            continue
        if value is not None:
            with transaction() as conn:
                repo.set_key_kind(conn, context.run_id, keys.kind_of(value))
            packer.key_kind = keys.kind_of(value)
            return


def _key_kind_without_rows(
    context: RunContext, source: Source, plan: mapping.Plan, builder: mapping.RecordBuilder
) -> str:
    """The kind of the run's keys when it built no record (deletes, removals only): as the
    snapshot last took them, else as the first row of the result would be sent."""
    with transaction() as conn:
        kind = repo.snapshot_key_kind(conn, context.sync.id)
    if kind is not None or plan.key_column is None:
        return kind or keys.TEXT
    query = context.sync.source_query
    columns = source.columns(query)
    with closing(source.stream(query, 1)) as rows:
        first = next(iter(rows), [])
    if not first:
        return keys.TEXT
    row = first[0]
    key = row[columns.index(plan.key_column)]
    try:
        record = builder.build((key, *(row[columns.index(c)] for c in plan.read_columns)))
    except mapping.RecordMappingError:
        return keys.TEXT
    return keys.kind_of(record.get(plan.key_field))


def _hash_options(context: RunContext, source: Source) -> dict[str, Any]:
    """`fast=True` when the source hashes typed values (`fast_hashes`) and the sync's snapshot
    does not hold md5 hashes from before: a snapshot keeps the kind it was written with until a
    full refresh rewrites it, so upgrading never makes every record look changed."""
    if not source.fast_hashes:
        return {}
    if not context.lease.full_refresh:
        with transaction() as conn:
            if repo.snapshot_holds_md5(conn, context.sync.id):
                return {}
    return {"fast": True}


def _salted(source: Source) -> bool:
    return bool(getattr(type(source), "hashes_take_salt", False))


def _sends_every_row(context: RunContext, source: Source, destination: Destination) -> bool:
    """Whether every row of the result goes out, so one read of the source is enough: a full
    refresh, or the sync's first run (empty snapshot). Never for deletes or replays, whose
    records are chosen by the diff, nor for a destination whose batch size depends on how many
    records the run sends (a bulk API for large runs): one pass packs before it knows."""
    sync, lease = context.sync, context.lease
    # The batches carry the hashes the snapshot takes: they must be salted at the source.
    if not (getattr(source, "streams_rows_with_hashes", False) and _salted(source)):
        return False
    operation = "upsert" if sync.sync_mode == "mirror" else sync.sync_mode
    if destination.batch_size_for(operation, 1) != destination.batch_size_for(operation, 1 << 40):
        return False
    if sync.sync_mode == "delete" or lease.replay_keys is not None:
        return False
    with transaction() as conn:
        snapshot_empty = repo.snapshot_is_empty(conn, sync.id)
    # A plan that may be held is complete before any batch may be written: the diff first.
    if guards.may_hold(guards.effective(sync.sync_mode, sync.guard), snapshot_empty=snapshot_empty):
        return False
    return lease.full_refresh or snapshot_empty


def _pack_in_one_pass(
    context: RunContext, source: Source, plan: mapping.Plan, builder: mapping.RecordBuilder,
    destination: Destination, heartbeat: Heartbeat,
) -> BatchPacker:
    """Read key, hash and row in one query; map and pack every row as it streams, marking its
    key seen in this session and storing the hashes with the batch. Mirror's removals are what
    the snapshot holds and the whole result did not."""
    sync = context.sync
    with db.connect() as pg:
        repo.create_seen(pg)
        snapshot_empty = repo.snapshot_is_empty(pg, sync.id)
        if snapshot_empty:
            repo.mark_snapshot_empty(pg, context.run_id)
            repo.fence_last(pg, context.run_id, context.token)
        pg.commit()
        with OnePassPacker(context, destination, pg, snapshot_empty=snapshot_empty) as packer:
            # Chunks of one batch: the first batch goes out as soon as its rows are read.
            # Closed on the way out, error or not: the stream holds the source's transaction,
            # which a traceback kept alive (a logged failure) would otherwise keep open.
            chunks = closing(source.stream_rows_with_hashes(
                sync.source_query, plan.key_column, plan.read_columns,
                max(1, min(ROW_CHUNK, packer.size)), salt=plan.fingerprint,
                **_value_forms(source, builder), **_hash_options(context, source),
            ))
            build = builder.for_offset(2).build  # rows are (key, hash, *columns)
            add_row = packer.add_row
            with chunks as stream:
                for chunk in stream:
                    heartbeat.check()
                    if packer.key_kind is None:
                        _learn_key_kind(context, packer, chunk, build, plan.key_field)
                    for row in chunk:
                        key = row[0]
                        if key is None:
                            packer.null_key()
                            continue
                        try:
                            fields = build(row)
                        except mapping.RecordMappingError as exc:
                            add_row(key, row[1], None, str(exc))
                            continue
                        add_row(key, row[1], fields, None)
            packer.finish()
        if sync.sync_mode == "mirror":
            repo.relax(pg)
            removed = repo.stage_removed(pg, context.run_id, sync.id)
            repo.set_removed(pg, context.run_id, removed)
            repo.fence_last(pg, context.run_id, context.token)
            pg.commit()
    return BatchPacker(context, destination, 0, batches=packer.batches,
                       key_kind=packer.key_kind)


def _diff(
    context: RunContext, source: Source, plan: mapping.Plan, heartbeat: Heartbeat
) -> tuple[repo.DiffCounts, set[str]]:
    """Stream (key, hash) from the source into the run's stage and classify it in Postgres."""
    sync, lease = context.sync, context.lease
    replay = lease.replay_keys is not None

    told_at = time.monotonic()

    def on_chunk(rows: int) -> None:
        # Every chunk looks for a cancel or a lost lease; the rows read so far are written
        # about once a second (a transaction per chunk of 10,000 rows held the stream up).
        nonlocal told_at
        heartbeat.check()
        if time.monotonic() - told_at < PROGRESS_EVERY_S:
            return
        told_at = time.monotonic()
        with transaction() as conn:
            repo.fence(conn, lease.run_id, lease.fencing_token)
            repo.set_rows_read(conn, lease.run_id, rows)

    keys_unique = _keys_unique(source, sync.source_query, plan.key_column)
    stage = repo.run_stage(lease.run_id)
    with db.connect() as pg:
        try:
            repo.size_for_staging(pg, get_settings().plan_work_mem_mb)
            repo.create_stage(pg, stage)
            salted = _salted(source)
            # Rows made COPY text by the source are staged without a Python call each.
            copy_text = bool(getattr(type(source), "streams_key_hash_copy", False)) and salted
            read_key_hashes = source.stream_key_hash_copy if copy_text else source.stream_key_hashes
            if salted:
                chunks = read_key_hashes(
                    sync.source_query, plan.key_column, plan.read_columns, HASH_CHUNK,
                    salt=plan.fingerprint, **_hash_options(context, source),
                )
            else:
                chunks = source.stream_key_hashes(
                    sync.source_query, plan.key_column, plan.read_columns, HASH_CHUNK
                )
            # Closed on the way out, error or not: the stream holds the source's transaction
            # (and a divided read its readers' threads), which a traceback kept alive would
            # otherwise keep.
            with closing(chunks):
                read = repo.copy_into_stage(pg, stage, chunks, on_chunk, copy_text=copy_text)
            heartbeat.check()
            if replay:
                repo.restrict_stage_to_keys(pg, stage, lease.replay_keys or [])
            repo.analyze_stage(pg, stage)
            pg.commit()  # the stage is read by a second session from here on
            repo.refresh_snapshot_statistics(pg, sync.id, read)
            pg.commit()  # not held through the diff

            def diff(staged: int | None = None) -> repo.DiffCounts:
                return repo.diff_into_ops(
                    pg, stage, run_id=lease.run_id, sync_id=sync.id,
                    fingerprint=plan.fingerprint, mode=sync.sync_mode,
                    resend_all=lease.full_refresh or replay,
                    detect_removed=sync.sync_mode == "mirror" and not replay, salted=salted,
                    staged=staged,
                )

            # Until rows leave it (a replay's, or rejected rows), the stage holds what was read.
            staged = None if replay else read
            if keys_unique:
                rejects, counts = [], diff(staged)
            else:
                rejects, counts = _rejects_beside_diff(pg, stage, lease.run_id, staged, diff)
            failed_rows = sum(r.rows for r in rejects)
            # Fenced last: the run's row stays locked only from here to the commit, so the
            # lease's renewal is not held up by the diff (a minute and more at ten million rows).
            repo.fence(pg, lease.run_id, lease.fencing_token)
            repo.set_plan_counts(pg, lease.run_id, read=read, counts=counts, failed=failed_rows)
            pg.commit()
        finally:
            _drop_stage(pg, stage)
    dup_keys = {r.record_key for r in rejects if r.error_code == "DUPLICATE_KEY"}
    return counts, dup_keys


def _rejects_beside_diff(
    pg: psycopg.Connection, stage: sql.Identifier, run_id: str, staged: int | None,
    diff: Callable[[int | None], repo.DiffCounts],
) -> tuple[list[repo.Rejected], repo.DiffCounts]:
    """Search the stage for null and repeated keys in a second session while `diff` runs in
    `pg`: the two take about as long, on two cores instead of one after the other, and most
    results hold neither. When the search finds some, the diff is undone, the rows that do not
    count leave the stage (`repo.stage_rejects`) and the diff is made again."""
    found: list[bool] = []
    failed: list[BaseException] = []

    def search() -> None:
        try:
            with db.connect() as conn:
                repo.size_for_staging(conn, get_settings().plan_work_mem_mb)
                found.append(repo.stage_has_rejects(conn, stage))
        except BaseException as exc:  # raised in the planner's thread below
            failed.append(exc)

    searching = threading.Thread(target=search, name=f"rejects-{run_id}", daemon=True)
    searching.start()
    refused: psycopg.Error | None = None
    try:
        counts = diff(staged)
    except (psycopg.errors.UniqueViolation, psycopg.errors.NotNullViolation) as exc:
        refused = exc  # a key twice, or a null key, among what goes out: the search finds it
    finally:
        searching.join()
    if failed:
        raise failed[0]
    if not found[0]:
        if refused is not None:
            raise refused
        return [], counts
    pg.rollback()
    rejects = repo.stage_rejects(pg, stage, run_id)
    return rejects, diff()


def _drop_stage(pg: psycopg.Connection, stage: sql.Identifier) -> None:
    """Drop the run's stage once the plan is made or failed; if the session cannot (it broke),
    the reaper drops it later (`repo.drop_abandoned_stages`)."""
    try:
        pg.rollback()
        repo.drop_stage(pg, stage)
        pg.commit()
    except psycopg.Error as exc:
        log.warning("the stage %s stays for the reaper: %s", stage, exc)


def _guard_verdict(context: RunContext, counts: repo.DiffCounts) -> str | None:
    """Why the diffed plan must be held by the sync's guard, or None. A replay (records an
    operator asked for) is never held."""
    sync = context.sync
    guard = guards.effective(sync.sync_mode, sync.guard)
    if guard is None or context.lease.replay_keys is not None:
        return None
    if sync.sync_mode == "mirror":
        # Every record of the snapshot is in the result (changed or unchanged) or removed.
        held = counts.changed + counts.unchanged + counts.removed
    else:
        with transaction() as conn:
            held = repo.snapshot_size(conn, sync.id)
    return guards.verdict(guard, plan_numbers(sync.sync_mode, counts, held))


def plan_numbers(mode: str, counts: repo.DiffCounts, held: int) -> guards.PlanNumbers:
    """A diff's numbers as a guard judges them: a delete sync removes what it sends."""
    removed = counts.deletes if mode == "delete" else counts.removed
    return guards.PlanNumbers(
        held=held, removed=removed, changed=0 if mode == "delete" else counts.changed,
        source_rows=counts.added + counts.changed + counts.unchanged,
    )


def _keys_unique(source: Source, query: str, key_column: str | None) -> bool:
    """Whether the source, asked before its rows are read, counts no null or repeated key."""
    if key_column is None or not getattr(type(source), "proves_unique_keys", False):
        return False
    return source.keys_unique(query, key_column)


def _pack_changed_rows(
    context: RunContext, source: Source, plan: mapping.Plan, builder: mapping.RecordBuilder,
    packer: BatchPacker, counts: repo.DiffCounts, dup_keys: set[str], heartbeat: Heartbeat,
) -> None:
    """Read the full rows of the records that go out (filtered in the source) and pack them."""
    sync = context.sync
    to_send = counts.outgoing - counts.deletes
    if to_send == 0 or sync.sync_mode == "delete":
        return
    valid = counts.added + counts.changed + counts.unchanged
    if to_send == valid and context.lease.replay_keys is None:
        outgoing = None  # everything the result holds goes out: no filter to ship to the source
    else:
        with transaction() as conn:
            outgoing = repo.outgoing_keys(conn, context.run_id)
    packer.operation = {"mirror": "upsert"}.get(sync.sync_mode, sync.sync_mode)
    seen_dups: set[str] = set()
    forms = _value_forms(source, builder)
    for chunk in _rows_for_keys(source, sync.source_query, plan, outgoing, forms):
        heartbeat.check()
        if packer.key_kind is None:
            _learn_key_kind(context, packer, chunk, builder.build, plan.key_field)
        for row in chunk:
            key = row[0]
            if key is None:
                continue
            if key in dup_keys:
                # The first occurrence wins. Both reads see the rows in the same order when
                # the query orders them; otherwise "first" is the source's own order.
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


def _value_forms(source: Source, builder: mapping.RecordBuilder) -> dict[str, bool]:
    """The read option that has the source give values in their JSON form, when it can and
    the records take them so (see `connectors.json_forms`)."""
    if source.reads_json_forms and builder.takes_json_forms:
        return {"json_forms": True}
    return {}


def _rows_for_keys(
    source: Source, query: str, plan: mapping.Plan, keys: list[str] | None,
    forms: dict[str, bool],
) -> Iterator[list[tuple]]:
    """(key text, *read_columns) of the rows whose key is in `keys` (all when None): filtered
    in the source when it can, else from its plain stream (keys as Python text)."""
    if source.filters_keys:
        yield from source.stream_rows_for_keys(
            query, plan.key_column, plan.read_columns, keys, ROW_CHUNK, **forms
        )
        return
    if plan.key_column is None:
        raise RunFailed(f"the {source.type} source cannot run a sync without a key mapping")
    columns = source.columns(query)
    positions = [columns.index(c) for c in [plan.key_column, *plan.read_columns]]
    wanted = None if keys is None else set(keys)
    for chunk in source.stream(query, ROW_CHUNK):
        rows = []
        for row in chunk:
            key = None if row[positions[0]] is None else str(row[positions[0]])
            if wanted is None or key in wanted:
                rows.append((key, *(row[i] for i in positions[1:])))
        yield rows


class BatchPacker:
    """Collects records into batches of the destination's size; stores and dispatches each.
    `held`: the plan crossed its guard, so its batches are kept where no writer takes them
    (`repo.insert_held_batch`) and nothing is dispatched."""

    def __init__(
        self, context: RunContext, destination: Destination, total: int, *, batches: int = 0,
        key_kind: str | None = None, held: bool = False,
    ) -> None:
        self.context = context
        self.key_kind = key_kind  # how the source types the run's keys, once known
        self.held = held
        self.operation = "upsert"
        operation = "upsert" if context.sync.sync_mode == "mirror" else context.sync.sync_mode
        self.size = max(1, destination.batch_size_for(operation, total))
        self.batches = batches  # stored so far; the next one is batches + 1
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
        batch_no = self.batches + 1 if self._records else None
        with _fenced_writes(self.context) as conn:
            if batch_no is not None:
                insert = repo.insert_held_batch if self.held else repo.insert_batch
                insert(
                    conn, run_id, batch_no, self.operation, [key for key, _ in self._records],
                    encode_payload(self._records), digests=self._digests(),
                )
            repo.add_failures(conn, run_id, self._failures)
            followed = _fence_last_storing(
                conn, run_id, token, None if self.held else batch_no, read=None, added=0,
                changed=0, unchanged=0, failed=len(self._failures),
            )
        self._records, self._failures = [], []
        if batch_no is not None:
            self._stored(batch_no, ring=not (followed or self.held))

    def _digests(self) -> list[bytes] | None:
        """The field digests of the records to store (none for deletes: a deleted record has
        no fields the destination holds)."""
        if self.operation == "delete":
            return None
        return [record_digests(fields) for _, fields in self._records]

    def _stored(self, batch_no: int, *, ring: bool) -> None:
        """Batch `batch_no` is committed: ring its doorbell unless a follower takes it."""
        self.batches = batch_no
        if ring:
            dispatch.enqueue_batch(self.context.run_id, batch_no, self.context.token)


def _fence_last_storing(
    conn: psycopg.Connection, run_id: str, token: int, batch_no: int | None, **counts: Any
) -> bool:
    """`repo.fence_last` for a transaction that stored batch `batch_no` (None: none); whether a
    writer following the run takes the batch (no doorbell then)."""
    if batch_no is None or get_settings().writer_follow_s <= 0:
        repo.fence_last(conn, run_id, token, **counts)
        return False  # no batch, or writers do not follow: no promise can be held
    return repo.fence_last_storing(conn, run_id, token, batch_no, **counts)


class OnePassPacker(BatchPacker):
    """Packs every row of a one-pass read, in the planner's own session (`pg`, holding the
    seen keys): each batch is stored with its records' hashes, the first occurrence of a key
    wins and later ones become DUPLICATE_KEY failures, rows with a null key are counted.

    Storing runs in a thread of its own, in batch order, so the planner maps the next batch
    while Postgres stores the last one. Use as a context manager: leaving it stops the
    thread."""

    def __init__(
        self, context: RunContext, destination: Destination, pg: psycopg.Connection, *,
        snapshot_empty: bool = False,
    ) -> None:
        super().__init__(context, destination, 0)
        sync = context.sync
        self.operation = "upsert" if sync.sync_mode == "mirror" else sync.sync_mode
        self.pg = pg
        self.snapshot_empty = snapshot_empty  # when planning began: every fresh key is added
        self.read = 0
        self.null_keys = 0
        self.duplicates: dict[str, int] = {}
        self._keys_repeat = False  # a key of the result came twice: stage with the check
        # (key, hash, fields or None, mapping error or None) of the rows not yet staged.
        self._rows: list[tuple[str, str, dict[str, Any] | None, str | None]] = []
        self._ready = 0  # rows of _rows that have fields
        # Two batches in hand at most: mapping runs ahead of storing by that much, no more.
        self._jobs: queue.Queue[tuple[list, int, int, bool] | None] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._store_loop, name=f"stager-{context.run_id}", daemon=True
        )

    def __enter__(self) -> OnePassPacker:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: Any) -> None:
        if exc_type is None:
            self._stop()
            return
        # The planner is failing already: stop the thread, and let its own error stand.
        try:
            self._stop()
        except BaseException as exc:
            log.debug("run %s: storing stopped with %s", self.context.run_id, exc)

    def null_key(self) -> None:
        self.read += 1
        self.null_keys += 1

    def add_row(
        self, key: str, content_hash: str, fields: dict[str, Any] | None, error: str | None
    ) -> None:
        self.read += 1
        self._rows.append((key, content_hash, fields, error))
        if fields is not None:
            self._ready += 1
            if self._ready >= self.size:
                self._submit(final=False)
        elif len(self._rows) >= 4 * self.size:
            self._submit(final=False)

    def finish(self) -> None:
        """Stage what is left and record the null-key rows; the counts are final after it."""
        self._submit(final=True)
        self._stop()

    def _submit(self, *, final: bool) -> None:
        self._raise_stored_error()
        rows, self._rows, self._ready = self._rows, [], 0
        # The counts as of these rows: the thread records them with the batch.
        self._jobs.put((rows, self.read, self.null_keys, final))

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()
        self._raise_stored_error()

    def _raise_stored_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _store_loop(self) -> None:
        # After a failure the jobs still queued are drained unstored: the planner raises the
        # error at its next hand-over, and nothing after a failed batch may be recorded.
        failed = False
        while (job := self._jobs.get()) is not None:
            if failed:
                continue
            try:
                self._stage(*job)
            except BaseException as exc:
                self._error, failed = exc, True

    def _stage(
        self, rows: list[tuple[str, str, dict[str, Any] | None, str | None]], read: int,
        null_keys: int, final: bool,
    ) -> None:
        context, conn = self.context, self.pg
        run_id, token = context.run_id, context.token
        batch = [row for row in rows if row[2] is not None]
        batch_no = self.batches + 1 if batch else None
        added = changed = unchanged = failed = 0
        try:
            if not rows:
                repo.relax(conn)  # else the staging statement relaxes the transaction
            else:
                whole = len(batch) == len(rows)
                staged = self._stage_rows(
                    conn, run_id=run_id, sync_id=context.sync.id, operation=self.operation,
                    keys=[row[0] for row in rows], hashes=[row[1] for row in rows],
                    batch_no=batch_no,
                    batch_keys=None if whole else [row[0] for row in batch],
                    batch_hashes=None if whole else [row[1] for row in batch],
                    payload=encode_payload([(row[0], row[2]) for row in batch]) if batch else None,
                    digests=[record_digests(row[2]) for row in batch] if batch else None,
                )
                added, changed, unchanged = staged.added, staged.changed, staged.unchanged
                if staged.staged_keys is not None:
                    rows, dropped = self._first_occurrences(rows, staged.staged_keys)
                    failed += sum(dropped.values())
                    batch = [row for row in rows if row[2] is not None]
                    batch_no = self.batches + 1 if batch else None
                    if batch_no is not None and not staged.batch_stored:
                        repo.insert_batch(
                            conn, run_id, batch_no, self.operation, [row[0] for row in batch],
                            encode_payload([(row[0], row[2]) for row in batch]),
                            hashes=[row[1] for row in batch],
                            digests=[record_digests(row[2]) for row in batch],
                        )
                    repo.add_rejects(
                        conn, run_id, duplicates={k: self.duplicates[k] for k in dropped},
                        null_keys=0,
                    )
                failures = [
                    repo.Failure(key, key, "MAPPING", error)
                    for key, _, fields, error in rows if fields is None and error is not None
                ]
                repo.add_failures(conn, run_id, failures)
                failed += len(failures)
            if final and null_keys:
                repo.add_rejects(conn, run_id, duplicates={}, null_keys=null_keys)
                failed += null_keys
            followed = _fence_last_storing(
                conn, run_id, token, batch_no, read=read, added=added, changed=changed,
                unchanged=unchanged, failed=failed,
            )
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        if batch_no is not None:
            self._stored(batch_no, ring=not followed)

    def _stage_rows(self, conn: psycopg.Connection, **rows: Any) -> repo.StagedRows:
        """`repo.stage_rows_and_batch` as the statement's first: without the conflict check
        until a key turns out to be seen already (the rest of the run then checks)."""
        if not self._keys_repeat:
            try:
                return repo.stage_rows_and_batch(
                    conn, keys_unseen=True, snapshot_empty=self.snapshot_empty, **rows
                )
            except psycopg.errors.UniqueViolation:
                conn.rollback()  # nothing else is in this transaction yet
                self._keys_repeat = True
        return repo.stage_rows_and_batch(conn, snapshot_empty=self.snapshot_empty, **rows)

    def _first_occurrences(
        self, rows: list[tuple[str, str, dict[str, Any] | None, str | None]],
        staged_keys: list[str],
    ) -> tuple[list[tuple[str, str, dict[str, Any] | None, str | None]], dict[str, int]]:
        """The rows whose key this batch staged first; the others are later occurrences of a
        key (key -> how many were dropped here), added to the run's running tally."""
        fresh = set(staged_keys)
        kept, dropped = [], {}
        for row in rows:
            if row[0] in fresh:
                fresh.discard(row[0])
                kept.append(row)
            else:
                dropped[row[0]] = dropped.get(row[0], 0) + 1
        for key, extra in dropped.items():
            self.duplicates[key] = self.duplicates.get(key, 0) + extra
        return kept, dropped


def encode_payload(records: list[tuple[str, dict[str, Any]]]) -> bytes:
    """A batch's records as stored for any writer of the fleet (data, never a pickle)."""
    return payloads.encode(records)


@contextmanager
def _fenced_writes(context: RunContext) -> Iterator[psycopg.Connection]:
    """A relaxed transaction whose writes the caller fences last (`repo.fence_last`). A batch
    number already taken can only mean another planner holds the run now: lease lost."""
    try:
        with transaction() as conn:
            repo.relax(conn)
            yield conn
    except psycopg.errors.UniqueViolation:
        with transaction() as conn:
            repo.fence(conn, context.run_id, context.token)
        raise
