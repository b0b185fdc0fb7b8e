"""Previews: what a run of a sync would send now, planned as a run plans it (the same staging, the
same set-based diff against the snapshot, the same mapping) inside one Postgres transaction of
its own that is rolled back, so nothing is written: not the snapshot, not a run, not the DLQ.

It runs in the API process, synchronously and bounded: the source's statement timeout is at most
RETL_PREVIEW_SECONDS, the whole preview stops past that time, and a query returning more than
RETL_PREVIEW_MAX_ROWS rows is refused. It takes no lease and stages under an id of its own, so it
never waits for a run of the sync, nor a run for it."""

from __future__ import annotations

import time
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

import psycopg

from connectors.errors import ConnectorError, RetryableError
from connectors.json_forms import json_value
from connectors.sources.base import Source
from shared import db, ids
from shared.db import transaction
from shared.errors import ServiceError, Unavailable
from shared.repositories import connections, syncs
from shared.repositories import engine as repo
from shared.services import syncs as sync_service
from shared.services.connections import open_connector
from shared.settings import get_settings
from worker import keys, mapping, planner
from worker.field_digests import changed_fields

REASONS = ("NULL_KEY", "DUPLICATE_KEY", "MAPPING")
_JSON_TYPES = (str, int, float, bool, type(None), list, dict)


class PreviewFailed(ServiceError):
    """The sync cannot be planned: bad query or mapping, source or destination refusing."""

    status = 422
    code = "preview_failed"


class PreviewLimit(ServiceError):
    """The preview would read more rows, or take longer, than a preview may."""

    status = 422
    code = "preview_limit"


@dataclass
class Preview:
    counts: dict[str, int]
    rejected_by_reason: dict[str, int]
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def preview_sync(workspace_id: str, sync_id: str, sample: int) -> Preview:
    """A saved sync, against its snapshot."""
    return _preview(sync_service.get(workspace_id, sync_id), sample)


def preview_draft(workspace_id: str, body: dict[str, Any], sample: int) -> Preview:
    """An unsaved sync (a create body): it has no snapshot, so every record is added."""
    return _preview(sync_service.draft(workspace_id, body), sample)


@dataclass
class _Budget:
    deadline: float
    seconds: float
    max_rows: int

    def check(self, rows: int = 0) -> None:
        if rows > self.max_rows:
            raise PreviewLimit(
                f"the query returns more than {self.max_rows} rows, the most a preview reads"
                " (RETL_PREVIEW_MAX_ROWS)"
            )
        if time.monotonic() > self.deadline:
            raise PreviewLimit(
                f"the preview took longer than {self.seconds:g} s (RETL_PREVIEW_SECONDS)"
            )


def _preview(sync: syncs.Sync, sample: int) -> Preview:
    settings = get_settings()
    budget = _Budget(time.monotonic() + settings.preview_seconds, settings.preview_seconds,
                     settings.preview_max_rows)
    with transaction() as conn:
        source_record = connections.get_by_id(conn, sync.source_id)
        destination_record = connections.get_by_id(conn, sync.destination_id)
    if source_record is None or destination_record is None:
        raise PreviewFailed("the sync's source or destination no longer exists")
    try:
        source = open_connector(source_record)
        destination = open_connector(destination_record)
    except ConnectorError as exc:
        raise PreviewFailed(f"a connection cannot be opened: {exc.message}") from None
    source.statement_timeout_s = min(source.statement_timeout_s, settings.preview_seconds)
    try:
        columns = source.columns(sync.source_query)
        plan = mapping.plan_for(
            sync.field_mappings, columns, object_name=sync.object_name, mode=sync.sync_mode
        )
        fields = planner._discover_fields(destination, sync.object_name)
        builder = mapping.RecordBuilder(plan, destination, fields)
        # Planned as a run of the sync that is neither a full refresh nor a replay would be.
        lease = repo.Lease(ids.new_id("retl_preview"), sync.id, sync.workspace_id, 0, False, None)
        context = planner.RunContext(lease, sync, source_record, destination_record)
        with closing(db.connect()) as pg:
            try:
                return _plan(pg, context, source, plan, builder, sample, budget)
            except psycopg.errors.QueryCanceled:
                raise PreviewLimit(
                    f"the preview took longer than {budget.seconds:g} s (RETL_PREVIEW_SECONDS)"
                ) from None
            finally:
                pg.rollback()  # everything it staged goes: nothing of a preview is kept
    except mapping.MappingError as exc:
        raise PreviewFailed(str(exc)) from None
    except planner.RunFailed as exc:
        raise PreviewFailed(exc.message) from None
    except RetryableError as exc:
        raise Unavailable(f"the source is unavailable: {exc.message}") from None
    except ConnectorError as exc:
        raise PreviewFailed(exc.message) from None
    finally:
        source.close()
        destination.close()


def _plan(
    pg: psycopg.Connection, context: planner.RunContext, source: Source, plan: mapping.Plan,
    builder: mapping.RecordBuilder, sample: int, budget: _Budget,
) -> Preview:
    """Stage, diff and map as a run does, in `pg`'s transaction (the caller rolls it back)."""
    sync = context.sync
    preview_id = context.run_id  # its staging never meets a run's, nor another preview's
    mode = sync.sync_mode
    pg.execute("SELECT set_config('statement_timeout', %s, true)",
               (str(int(budget.seconds * 1000)),))
    stage = repo.PREVIEW_STAGE
    repo.size_for_staging(pg, get_settings().plan_work_mem_mb)
    repo.create_stage(pg, stage)
    salted = planner._salted(source)
    salt = {"salt": plan.fingerprint, **planner._hash_options(context, source)} if salted else {}
    chunks = source.stream_key_hashes(
        sync.source_query, plan.key_column, plan.read_columns,
        min(planner.HASH_CHUNK, budget.max_rows + 1), **salt,  # the cap is checked per chunk
    )
    repo.copy_into_stage(pg, stage, chunks, budget.check)
    repo.analyze_stage(pg, stage)
    rejects = repo.stage_rejects(pg, stage, preview_id)
    diff = repo.diff_into_ops(
        pg, stage, run_id=preview_id, sync_id=sync.id, fingerprint=plan.fingerprint, mode=mode,
        resend_all=False, detect_removed=mode == "mirror", salted=salted,
    )
    numbers = planner.plan_numbers(mode, diff, 0)
    counts = {"added": 0 if mode == "delete" else diff.added, "changed": numbers.changed,
              "removed": numbers.removed, "unchanged": diff.unchanged, "rejected": 0}
    by_reason = dict.fromkeys(REASONS, 0)
    samples: dict[str, list[dict[str, Any]]] = {
        "added": [], "changed": [], "removed": [], "rejected": []
    }
    failures = {f.record_key: f for f in repo.run_failures(pg, preview_id)}
    for reject in rejects:
        by_reason[reject.error_code] += reject.rows
        if len(samples["rejected"]) < sample:
            failure = failures[reject.record_key]
            samples["rejected"].append({"key": failure.key_value, "reason": reject.error_code,
                                        "message": failure.message})
    if mode in ("mirror", "delete"):  # mirror's removals, or every record a delete sync sends
        # What a delete sends: the key alone, typed as the snapshot says the sync's keys are.
        kind = (repo.snapshot_key_kind(pg, sync.id) if sync.id else None) or keys.TEXT
        for key in repo.first_keys(pg, preview_id, removed=mode == "mirror", limit=sample):
            samples["removed"].append(
                {"key": key, "operation": "delete", "record": {plan.key_field: keys.typed(key, kind)}}
            )
    if mode != "delete":
        _map_outgoing(pg, preview_id, sync, source, plan, builder, diff, sample, budget,
                      counts, by_reason, samples)
    counts["rejected"] = sum(by_reason.values())
    return Preview(counts, by_reason, samples)


def _map_outgoing(
    pg: psycopg.Connection, preview_id: str, sync: syncs.Sync, source: Source,
    plan: mapping.Plan, builder: mapping.RecordBuilder, diff: repo.DiffCounts, sample: int,
    budget: _Budget, counts: dict[str, int], by_reason: dict[str, int],
    samples: dict[str, list[dict[str, Any]]],
) -> None:
    """Read and map every record that goes out, as the run would: a record the mapping refuses
    is rejected (MAPPING) rather than added or changed; the first `sample` of each are kept,
    a changed one with the fields that differ from what the destination last accepted."""
    change_of = repo.outgoing_changes(pg, preview_id)
    if not change_of:
        return
    operation = "upsert" if sync.sync_mode == "mirror" else sync.sync_mode
    everything = len(change_of) == diff.added + diff.changed + diff.unchanged
    keys = None if everything else list(change_of)
    forms = planner._value_forms(source, builder)
    done: set[str] = set()
    changed: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (sample, record as sent)
    for chunk in planner._rows_for_keys(source, sync.source_query, plan, keys, forms):
        budget.check()
        for row in chunk:
            key = row[0]
            change = change_of.get(key) if key is not None else None
            if change is None or key in done:
                continue  # not sent, or a later occurrence of a duplicate key
            done.add(key)
            try:
                record = builder.build(row)
            except mapping.RecordMappingError as exc:
                counts[change] -= 1
                by_reason["MAPPING"] += 1
                if len(samples["rejected"]) < sample:
                    samples["rejected"].append({"key": key, "reason": "MAPPING",
                                                "message": str(exc)})
                continue
            if change in ("added", "changed") and len(samples[change]) < sample:
                item = {"key": key, "operation": operation, "record": _as_json(record)}
                if change == "changed":
                    changed.append((item, record))
                samples[change].append(item)
    if changed:
        stored = repo.stored_field_digests(pg, sync.id, [item["key"] for item, _ in changed])
        for item, record in changed:
            digests = stored.get(item["key"])
            # None: the record was last sent before field digests were kept (or deleted).
            item["changed_fields"] = None if digests is None else changed_fields(record, digests)


def _as_json(record: dict[str, Any]) -> dict[str, Any]:
    """A record's values as the API's JSON answer can hold them (dates, decimals: JSON forms)."""
    return {name: value if isinstance(value, _JSON_TYPES) else json_value(value)
            for name, value in record.items()}
