"""Planning a run: read (key, hash) from the source into a staging table, diff it against the
snapshot in Postgres, read the full rows of the records that go out, map them and pack them
into batches that any worker of the fleet can write."""

from __future__ import annotations

import logging
import pickle
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg

from connectors.destinations.base import Destination, DestinationField
from connectors.errors import AuthError, ConnectorError, RetryableError
from connectors.sources.base import Source
from shared import db
from shared.db import transaction
from shared.repositories import connections, syncs
from shared.repositories import engine as repo
from shared.repositories.engine import LeaseLost
from shared.services.connections import open_connector
from shared.settings import get_settings
from worker import dispatch, mapping
from worker.destinations import destination_for
from worker.executor import RetryPolicy, retrying_passing_failures

log = logging.getLogger(__name__)

HASH_CHUNK = 50_000
ROW_CHUNK = 10_000


class RunFailed(Exception):
    """The run cannot go on: bad query or mapping, source down, credentials rejected."""

    def __init__(self, message: str, *, auth: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.auth = auth


class RunCancelled(Exception):
    """A cancel was requested while the run was being planned."""


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
        fields = retrying_passing_failures(RetryPolicy(), "field discovery")(
            destination.list_fields, object_name
        )
        return {f.name: f for f in fields}
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
        packer = BatchPacker(context, destination, counts.outgoing)
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


def _diff(
    context: RunContext, source: Source, plan: mapping.Plan, heartbeat: Heartbeat
) -> tuple[repo.DiffCounts, set[str]]:
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
        keys = None  # everything the result holds goes out: no filter to ship to the source
    else:
        with transaction() as conn:
            keys = repo.outgoing_keys(conn, context.run_id)
    packer.operation = {"mirror": "upsert"}.get(sync.sync_mode, sync.sync_mode)
    seen_dups: set[str] = set()
    for chunk in _rows_for_keys(source, sync.source_query, plan, keys):
        heartbeat.check()
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


def _rows_for_keys(
    source: Source, query: str, plan: mapping.Plan, keys: list[str] | None
) -> Iterator[list[tuple]]:
    """(key text, *read_columns) of the rows whose key is in `keys` (all when None): filtered
    in the source when it can, else from its plain stream (keys as Python text)."""
    if hasattr(source, "stream_rows_for_keys"):
        yield from source.stream_rows_for_keys(
            query, plan.key_column, plan.read_columns, keys, ROW_CHUNK
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
    """Collects records into batches of the destination's size; stores and dispatches each."""

    def __init__(self, context: RunContext, destination: Destination, total: int) -> None:
        self.context = context
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
            dispatch.enqueue_batch(run_id, batch_no, token)
