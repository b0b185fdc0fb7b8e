"""The dead-letter queue through the API: list, stats, resolve and replay."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass

from shared.db import read, transaction
from shared.errors import NotFound
from shared.pagination import Page, decode_cursor, page_of
from shared.repositories import dlq, syncs
from shared.services import runs as run_service


def list_page(
    workspace_id: str, *, sync_id: str | None, resolved: bool, cursor: str | None, limit: int
) -> Page[dlq.DlqEntry]:
    after = decode_cursor(cursor)
    with read() as conn:
        rows = dlq.list_page(conn, workspace_id, sync_id=sync_id, resolved=resolved, after=after, limit=limit + 1)
    return page_of(rows, limit)


@dataclass
class Stats:
    open_count: int
    resolved_count: int
    by_error_code: dict[str, int]
    computed_at: dt.datetime


def stats(workspace_id: str, *, sync_id: str | None, since: dt.datetime | None) -> Stats:
    with transaction() as conn:
        counts = dlq.stats(conn, workspace_id, sync_id=sync_id, since=since)
    return Stats(counts.open_count, counts.resolved_count, counts.by_error_code, dt.datetime.now(dt.UTC))


@dataclass
class Resolution:
    resolved_ids: list[str]
    replay_run_id: str | None
    replay_run_ids: list[str]
    resolved_at: dt.datetime


def resolve(
    workspace_id: str, entry_ids: list[str] | None, resolution: str, replay: bool, *,
    sync_id: str | None = None, error_code: str | None = None,
) -> Resolution:
    """Mark entries resolved — the listed ones, or with no list every open entry matching the
    filter (`sync_id`, `error_code`) — and with replay, queue one run per sync that writes only
    their records.

    Listed entries already resolved are answered as resolved without change; an unknown id is a
    404 and nothing is resolved; so is a filter naming an unknown sync."""
    new_runs: list[str] = []
    replay_runs: list[str] = []
    with transaction() as conn:
        if entry_ids is None:
            if sync_id is not None and syncs.get(conn, workspace_id, sync_id) is None:
                raise NotFound(f"no sync {sync_id}", pointer="/filter/syncId")
            entries = dlq.open_entries_matching(
                conn, workspace_id, sync_id=sync_id, error_code=error_code
            )
            wanted = [e.id for e in entries]
        else:
            wanted = list(dict.fromkeys(entry_ids))
            entries = dlq.entries_by_ids(conn, workspace_id, wanted)
            found = {e.id for e in entries}
            missing = [i for i in wanted if i not in found]
            if missing:
                raise NotFound(f"no DLQ entries {', '.join(missing)}", pointer="/entryIds")
        resolved_at = dlq.resolve(conn, [e.id for e in entries if not e.resolved], resolution)
        if replay:
            keys_by_sync: dict[str, list[str]] = defaultdict(list)
            for entry in entries:
                keys_by_sync[entry.sync_id].append(entry.record_key)
            for entry_sync_id, keys in keys_by_sync.items():
                sync = syncs.get(conn, workspace_id, entry_sync_id, for_update=True)
                if sync is None:  # deleted since: nothing to replay into
                    continue
                run, is_new = run_service.queue_run(conn, sync, trigger="replay", replay_keys=keys)
                replay_runs.append(run.id)
                if is_new:
                    new_runs.append(run.id)
    run_service.enqueue(new_runs)
    return Resolution(wanted, replay_runs[0] if replay_runs else None, replay_runs, resolved_at)
