"""Planning: staging the source's keys and hashes, the set-based diff against the snapshot,
rejected rows and the plan's counts."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from shared.repositories.engine.batches import Progress
from shared.repositories.engine.followers import followers_channel


def reset_staging(conn: psycopg.Connection, run_id: str) -> None:
    """Forget whatever an earlier attempt at this run staged, and start its progress row."""
    for table in ("run_ops", "run_batches", "run_failures", "held_batches"):
        conn.execute(f"DELETE FROM {table} WHERE run_id = %s", (run_id,))
    conn.execute(
        "INSERT INTO run_progress (run_id) VALUES (%s) ON CONFLICT (run_id) DO UPDATE"
        " SET phase = 'planning', batches_total = NULL, batches_done = 0, abort_error = NULL,"
        " abort_code = NULL, finished_at = NULL, snapshot_was_empty = false, writer_until = NULL,"
        " key_kind = NULL,"
        " backlog_rung_at = NULL, updated_at = now()",
        (run_id,),
    )


# A preview's stage: session-private, gone with the preview's rolled-back transaction.
PREVIEW_STAGE = sql.Identifier("retl_stage")


def run_stage(run_id: str) -> sql.Identifier:
    """A run's stage: an unlogged table of its own (schema retl_staging), which a second
    session can search for repeated keys while the planner's diffs it (`stage_has_rejects`)."""
    return sql.Identifier("retl_staging", run_id)


def create_stage(conn: psycopg.Connection, stage: sql.Identifier) -> None:
    """A table for (key, hash) of every row the source returned: `PREVIEW_STAGE` as a temporary
    table, a `run_stage` as an unlogged one (an earlier attempt's is dropped). Its rows lie in
    the order they arrived (a new table is filled from its start), so a row's `ctid` is its
    position: numbering them cost the COPY half as much again."""
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(stage))
    kind = sql.SQL("TEMP" if stage is PREVIEW_STAGE else "UNLOGGED")
    conn.execute(
        sql.SQL("CREATE {} TABLE {} (record_key text, content_hash text)").format(kind, stage)
    )
    # ANALYZE samples 3,000 rows instead of 30,000: the plans need the row count and that the
    # keys are mostly distinct, which that many show (a sixth of the time at a million rows).
    conn.execute(
        sql.SQL(
            "ALTER TABLE {} ALTER COLUMN record_key SET STATISTICS 10,"
            " ALTER COLUMN content_hash SET STATISTICS 10"
        ).format(stage)
    )


def drop_stage(conn: psycopg.Connection, stage: sql.Identifier) -> None:
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(stage))


def copy_into_stage(
    conn: psycopg.Connection, stage: sql.Identifier,
    chunks: Iterable[list[tuple[str | None, str]]] | Iterable[bytes], on_chunk=None, *,
    copy_text: bool = False,
) -> int:
    """COPY the (key, hash) chunks into the stage in arrival order; the number of rows.
    `copy_text`: the chunks are blocks of COPY text already (`stream_key_hash_copy`), written
    as they are; a row is a line."""
    read = 0
    with conn.cursor() as cur:
        statement = sql.SQL("COPY {} (record_key, content_hash) FROM STDIN").format(stage)
        with cur.copy(statement) as copy:
            for chunk in chunks:
                if copy_text:
                    copy.write(chunk)
                    read += chunk.count(b"\n")
                else:
                    for row in chunk:
                        copy.write_row(row)
                    read += len(chunk)
                if on_chunk is not None:
                    on_chunk(read)
    return read


def restrict_stage_to_keys(conn: psycopg.Connection, stage: sql.Identifier, keys: list[str]) -> None:
    """A replay: keep only the rows of the records asked for."""
    conn.execute(
        sql.SQL(
            "DELETE FROM {} WHERE record_key IS NULL OR NOT (record_key = ANY(%s::text[]))"
        ).format(stage),
        (keys,),
    )


def size_for_staging(conn: psycopg.Connection, work_mem_mb: int) -> None:
    """For the rest of this dedicated session: the hash tables of the search and the diff over
    the stage keep to memory up to `work_mem_mb` each (ten million keys need about 1 GB; with
    less they spill to disk and take half as long again), no JIT compiling, which costs more
    than it saves on these few simple statements, and parallel plans whenever Postgres can
    make them: the diff keeps few of the rows it joins, which the planner cannot know, so the
    default cost per row gathered keeps it in one process. Postgres takes only what a plan
    uses."""
    conn.execute(
        "SELECT set_config('work_mem', %s, false), set_config('jit', 'off', false),"
        " set_config('parallel_setup_cost', '0', false),"
        " set_config('parallel_tuple_cost', '0', false)",
        (f"{work_mem_mb}MB",),
    )


def analyze_stage(conn: psycopg.Connection, stage: sql.Identifier) -> None:
    """Statistics of the filled stage, which the search and the diff are planned by (without
    them the planner may hash the larger side)."""
    conn.execute(sql.SQL("ANALYZE {}").format(stage))


# A sync with at least this many rows staged is worth an ANALYZE when Postgres believes its
# snapshot holds far fewer (below it, a misjudged join costs little).
ANALYZE_FROM_ROWS = 100_000


def refresh_snapshot_statistics(conn: psycopg.Connection, sync_id: str, staged: int) -> bool:
    """ANALYZE the snapshots when Postgres's statistics of them are missing or stale: none yet,
    a fifth of their rows changed since (and ten thousand), or — for a sync that staged
    `ANALYZE_FROM_ROWS` rows or more — an estimate of under a quarter of what it staged while
    at least a quarter as many rows changed since, as when a new sync's rows came after the
    last ANALYZE. The diff is planned by them: planned for a few thousand snapshot rows, it
    reads the snapshot's whole primary key in one process, or builds the hash table once in
    each parallel process, and grows it step by step (at ten million rows 8.9–9.5 s instead of
    6.7–7.9 s, the ANALYZE 0.2–0.3 s). Autovacuum gets there in time for most; when it is off
    or behind, this does. Skipped while another session analyzes them. Whether it analyzed."""
    stale, changed = conn.execute(
        "SELECT c.reltuples < 0 OR coalesce(s.n_mod_since_analyze, 0) > 0.2 * c.reltuples + 10000,"
        " coalesce(s.n_mod_since_analyze, 0)"
        " FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid"
        " WHERE c.oid = 'sync_snapshots'::regclass"
    ).fetchone()
    # Unless a quarter as many rows changed since the last ANALYZE, another would find what
    # it found (a sync whose destination refused most of its records holds few).
    if not stale and staged >= ANALYZE_FROM_ROWS and changed >= staged / 4:
        plan = conn.execute(
            "EXPLAIN (FORMAT JSON) SELECT 1 FROM sync_snapshots WHERE sync_id = %s", (sync_id,)
        ).fetchone()[0]
        stale = plan[0]["Plan"]["Plan Rows"] < staged / 4
    if stale:
        conn.execute("ANALYZE (SKIP_LOCKED) sync_snapshots")
    return bool(stale)


@dataclass
class Rejected:
    record_key: str
    error_code: str
    rows: int


def stage_has_rejects(conn: psycopg.Connection, stage: sql.Identifier) -> bool:
    """Whether the stage holds a null key or a key more than once (read only: another session
    may diff the stage meanwhile)."""
    row = conn.execute(
        sql.SQL(
            "SELECT EXISTS (SELECT 1 FROM {} GROUP BY record_key"
            " HAVING count(*) > 1 OR record_key IS NULL)"
        ).format(stage)
    ).fetchone()
    return bool(row[0])


def stage_rejects(conn: psycopg.Connection, stage: sql.Identifier, run_id: str) -> list[Rejected]:
    """Rows with a null key (one failure, key '') and every later occurrence of a duplicate key
    become failures of the run; the rows that stay are the first occurrence of each key."""
    # One pass over the stage finds both: the null keys are a group of their own.
    conn.execute(
        sql.SQL(
            "CREATE TEMP TABLE retl_dups ON COMMIT DROP AS"
            " SELECT record_key, min(ctid) AS first_row, count(*) - 1 AS extra FROM {}"
            " GROUP BY record_key HAVING count(*) > 1 OR record_key IS NULL"
        ).format(stage)
    )
    found = dict(conn.execute(
        "SELECT record_key IS NULL, sum(extra + 1) FROM retl_dups GROUP BY 1"
    ).fetchall())
    nulls = int(found.get(True) or 0)
    if found.get(False):
        conn.execute(
            sql.SQL(
                "DELETE FROM {} s USING retl_dups d"
                " WHERE s.record_key = d.record_key AND s.ctid <> d.first_row"
            ).format(stage)
        )
    if nulls:
        conn.execute(sql.SQL("DELETE FROM {} WHERE record_key IS NULL").format(stage))
    conn.execute(
        "INSERT INTO run_failures (run_id, record_key, key_value, error_code, message, rows)"
        " SELECT %s, record_key, record_key, 'DUPLICATE_KEY',"
        "  'the key ' || record_key || ' appears ' || (extra + 1)"
        "  || ' times in the result; the first row was used', extra FROM retl_dups"
        " WHERE record_key IS NOT NULL",
        (run_id,),
    )
    if nulls:
        conn.execute(
            "INSERT INTO run_failures (run_id, record_key, key_value, error_code, message, rows)"
            " VALUES (%s, '', NULL, 'NULL_KEY', %s, %s)",
            (run_id, f"{nulls} row(s) of the result have a null key and were not sent", nulls),
        )
    rows = conn.execute(
        "SELECT record_key, error_code, rows FROM run_failures WHERE run_id = %s", (run_id,)
    ).fetchall()
    return [Rejected(*row) for row in rows]


@dataclass
class DiffCounts:
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: int = 0
    outgoing: int = 0  # operations planned, deletes included
    deletes: int = 0


def diff_into_ops(
    conn: psycopg.Connection, stage: sql.Identifier, *, run_id: str, sync_id: str,
    fingerprint: str, mode: str, resend_all: bool, detect_removed: bool, salted: bool,
    staged: int | None = None,
) -> DiffCounts:
    """Classify the staged rows against the snapshot and stage the operations the mode sends.

    The snapshot holds the content hash salted with the mapping fingerprint, so a changed
    mapping makes every record `changed`; `salted` says the source salted the staged hashes
    itself, otherwise it happens here. `resend_all` (full refresh, replay) sends unchanged
    records too. `staged`: the stage's row count when the caller knows it (else counted)."""
    operation = {"mirror": "upsert", "upsert": "upsert", "insert": "insert",
                 "update": "update", "delete": "delete"}[mode]
    content = "s.content_hash" if salted else "md5(s.content_hash || %(fp)s)"
    change = (
        "CASE WHEN p.record_key IS NULL THEN 'added'"
        f" WHEN p.content_hash = {content} THEN 'unchanged'"
        " ELSE 'changed' END"
    )
    # The stage's name is a composed identifier; the rest stays text with %(name)s parameters.
    table = stage.as_string(conn)
    joined = (
        f" FROM {table} s LEFT JOIN sync_snapshots p"
        " ON p.sync_id = %(sync)s AND p.record_key = s.record_key"
    )
    params = {"fp": fingerprint, "sync": sync_id, "run": run_id, "op": operation}
    if resend_all:
        sends = "true"
    elif mode == "insert":
        sends = "p.record_key IS NULL"
    else:
        sends = f"p.content_hash IS DISTINCT FROM {content}"
    # The classifying join is made by CREATE TABLE AS, which Postgres runs in parallel (an
    # INSERT … SELECT it runs in one process): half the time on two cores. What goes out is
    # then copied into run_ops, usually a small part of the stage.
    conn.execute("DROP TABLE IF EXISTS retl_outgoing")
    conn.execute(
        "CREATE TEMP TABLE retl_outgoing ON COMMIT DROP AS"
        f" SELECT s.record_key, {change} AS change, {content} AS content_hash"
        f"{joined} WHERE {sends}",
        params,
    )
    conn.execute(
        "INSERT INTO run_ops (run_id, record_key, operation, change, content_hash)"
        " SELECT %(run)s, record_key, %(op)s, change, content_hash FROM retl_outgoing",
        params,
    )
    added, changed, outgoing = conn.execute(
        "SELECT count(*) FILTER (WHERE change = 'added'),"
        " count(*) FILTER (WHERE change = 'changed'), count(*) FROM retl_outgoing"
    ).fetchone()
    if mode == "insert" and not resend_all:
        # Only the added go out, so the changed and the unchanged are told apart by a pass
        # of their own.
        added, unchanged, total = conn.execute(
            "SELECT count(*) FILTER (WHERE p.record_key IS NULL),"
            f" count(*) FILTER (WHERE p.content_hash = {content}),"
            f" count(*){joined}",
            params,
        ).fetchone()
        counts = DiffCounts(added=added, unchanged=unchanged, changed=total - added - unchanged,
                            outgoing=outgoing)
    else:
        # Every record that is not unchanged goes out, so the classes are counted from what
        # went out and the unchanged are the rest of the stage.
        if staged is None:
            staged = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        counts = DiffCounts(
            added=added, changed=changed, unchanged=staged - added - changed, outgoing=outgoing
        )
    if detect_removed:
        # In parallel too (see above), then copied.
        conn.execute("DROP TABLE IF EXISTS retl_removed")
        conn.execute(
            "CREATE TEMP TABLE retl_removed ON COMMIT DROP AS"
            " SELECT p.record_key FROM sync_snapshots p WHERE p.sync_id = %s AND NOT EXISTS"
            f"  (SELECT 1 FROM {table} s WHERE s.record_key = p.record_key)",
            (sync_id,),
        )
        counts.removed = counts.deletes = conn.execute(
            "INSERT INTO run_ops (run_id, record_key, operation, change, content_hash)"
            " SELECT %s, record_key, 'delete', 'removed', NULL FROM retl_removed",
            (run_id,),
        ).rowcount
        counts.outgoing += counts.deletes
    elif mode == "delete":
        counts.deletes = counts.outgoing
    return counts


def snapshot_is_empty(conn: psycopg.Connection, sync_id: str) -> bool:
    """No record of the sync was ever accepted: every row of its result is new."""
    row = conn.execute(
        "SELECT NOT EXISTS (SELECT 1 FROM sync_snapshots WHERE sync_id = %s)", (sync_id,)
    ).fetchone()
    return bool(row[0])


def snapshot_holds_md5(conn: psycopg.Connection, sync_id: str) -> bool:
    """Whether the sync's snapshot holds md5 hashes (32 hex characters), as every snapshot
    written before sources hashed typed values does (one row, by the primary key, decides)."""
    row = conn.execute(
        "SELECT length(content_hash) = 32 FROM sync_snapshots WHERE sync_id = %s"
        " ORDER BY record_key LIMIT 1", (sync_id,),
    ).fetchone()
    return bool(row and row[0])


def mark_snapshot_empty(conn: psycopg.Connection, run_id: str) -> None:
    """The sync's snapshot was empty when this run was planned: its one-pass batches hold
    records the snapshot has never seen (see `accept_batch`)."""
    conn.execute(
        "UPDATE run_progress SET snapshot_was_empty = true WHERE run_id = %s", (run_id,)
    )


def create_seen(conn: psycopg.Connection) -> None:
    """A session-private table of the keys a one-pass read has staged (first occurrences)."""
    conn.execute("DROP TABLE IF EXISTS retl_seen")
    conn.execute(
        "CREATE TEMP TABLE retl_seen (record_key text PRIMARY KEY, content_hash text)"
        " ON COMMIT PRESERVE ROWS"
    )


@dataclass
class StagedRows:
    added: int
    changed: int
    unchanged: int
    batch_stored: bool
    # Keys staged by this call, in order, when some of the keys given were staged already
    # (duplicates); None when every key was new.
    staged_keys: list[str] | None


def stage_rows_and_batch(
    conn: psycopg.Connection, *, run_id: str, sync_id: str, operation: str, keys: list[str],
    hashes: list[str], batch_no: int | None, batch_keys: list[str] | None,
    batch_hashes: list[str] | None, payload: bytes | None, digests: list[bytes] | None,
    keys_unseen: bool = False, snapshot_empty: bool = False,
) -> StagedRows:
    """One pass over the source, for rows that all go out: mark their keys seen (`create_seen`,
    same session), classify them against the snapshot and store their batch with its content
    hashes (salted), in one statement.

    The first occurrence of a key wins (ON CONFLICT DO NOTHING, in the order given); when a key
    was seen before, the batch is not stored and the caller gets the keys that were staged,
    to drop the later occurrences and store the batch itself. `batch_keys` and `batch_hashes`
    None: the batch holds every row given (the usual case; the arrays are sent once).
    `digests`: the field digests of the batch's records, aligned with its keys.

    It relaxes its transaction (`relax`) itself: one round trip fewer per batch.

    `keys_unseen`: the caller expects none of the keys to be seen yet (no duplicates so far),
    so they are inserted without the conflict check, which costs about a third of the
    statement; a key seen after all raises UniqueViolation, and the caller rolls back and
    stages the rows again without it.

    `snapshot_empty`: the sync's snapshot was empty when this planning began (a first run), so
    every key staged first is added and the snapshot is not looked up — about half of the
    statement's work. It holds for the whole run: the snapshot gains only keys of this run's
    batches, each of which the seen keys let through once."""
    if snapshot_empty:
        counts = " SELECT (SELECT count(*) FROM fresh), 0, 0,"
    else:
        counts = (
            ", classified AS ("
            " SELECT CASE WHEN p.record_key IS NULL THEN 'added'"
            "  WHEN p.content_hash = f.content_hash THEN 'unchanged' ELSE 'changed' END AS change"
            " FROM fresh f LEFT JOIN sync_snapshots p"
            "  ON p.sync_id = %(sync)s AND p.record_key = f.record_key)"
            " SELECT (SELECT count(*) FILTER (WHERE change = 'added') FROM classified),"
            " (SELECT count(*) FILTER (WHERE change = 'changed') FROM classified),"
            " (SELECT count(*) FILTER (WHERE change = 'unchanged') FROM classified),"
        )
    row = conn.execute(
        "WITH fresh AS ("
        " INSERT INTO retl_seen (record_key, content_hash)"
        " SELECT u.k, u.h FROM unnest(%(keys)b::text[], %(hashes)b::text[])"
        "  WITH ORDINALITY AS u(k, h, n)"
        " ORDER BY u.n" + ("" if keys_unseen else " ON CONFLICT (record_key) DO NOTHING")
        + " RETURNING record_key, content_hash),"
        " stored AS ("
        " INSERT INTO run_batches (run_id, batch_no, operation, record_keys, content_hashes,"
        "  field_digests, payload)"
        " SELECT %(run)s, %(batch)s, %(op)s, coalesce(%(bkeys)b, %(keys)b),"
        "  coalesce(%(bhashes)b, %(hashes)b), %(digests)b, %(payload)b"
        " WHERE %(store)s AND (SELECT count(*) FROM fresh) = %(n)s RETURNING 1)"
        + counts
        + " (SELECT count(*) FROM stored) > 0,"
        " (SELECT CASE WHEN count(*) < %(n)s THEN array_agg(record_key) END FROM fresh),"
        " set_config('synchronous_commit', 'off', true)",
        {"run": run_id, "sync": sync_id, "op": operation, "keys": keys, "hashes": hashes,
         "batch": batch_no, "bkeys": batch_keys, "bhashes": batch_hashes,
         "digests": digests, "payload": payload, "store": batch_no is not None, "n": len(keys)},
    ).fetchone()
    return StagedRows(row[0], row[1], row[2], row[3], row[4])


def stage_removed(conn: psycopg.Connection, run_id: str, sync_id: str) -> int:
    """Mirror after a one-pass read (same session as `create_seen`): what the snapshot holds
    and the result no longer does is staged as a removal; the number staged."""
    return conn.execute(
        "INSERT INTO run_ops (run_id, record_key, operation, change, content_hash)"
        " SELECT %s, p.record_key, 'delete', 'removed', NULL FROM sync_snapshots p"
        " WHERE p.sync_id = %s AND NOT EXISTS"
        "  (SELECT 1 FROM retl_seen s WHERE s.record_key = p.record_key)",
        (run_id, sync_id),
    ).rowcount


def add_rejects(
    conn: psycopg.Connection, run_id: str, *, duplicates: dict[str, int], null_keys: int
) -> None:
    """Failures for the later occurrences of duplicate keys (key -> extra rows) and for rows
    with a null key (one failure, key ''), worded as `stage_rejects` words them."""
    if duplicates:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO run_failures (run_id, record_key, key_value, error_code, message, rows)"
                " VALUES (%s, %s, %s, 'DUPLICATE_KEY', %s, %s) ON CONFLICT (run_id, record_key)"
                " DO UPDATE SET error_code = 'DUPLICATE_KEY', message = EXCLUDED.message,"
                " rows = EXCLUDED.rows",
                [
                    (run_id, key, key, f"the key {key} appears {extra + 1} times in the result;"
                     " the first row was used", extra)
                    for key, extra in duplicates.items()
                ],
            )
    if null_keys:
        conn.execute(
            "INSERT INTO run_failures (run_id, record_key, key_value, error_code, message, rows)"
            " VALUES (%s, '', NULL, 'NULL_KEY', %s, %s) ON CONFLICT (run_id, record_key)"
            " DO UPDATE SET message = EXCLUDED.message, rows = EXCLUDED.rows",
            (run_id, f"{null_keys} row(s) of the result have a null key and were not sent",
             null_keys),
        )


def outgoing_keys(conn: psycopg.Connection, run_id: str) -> list[str]:
    """Keys of the records whose content must be read again to be sent (not the removals)."""
    rows = conn.execute(
        "SELECT record_key FROM run_ops WHERE run_id = %s AND change <> 'removed'", (run_id,)
    ).fetchall()
    return [row[0] for row in rows]


def removed_keys(
    conn: psycopg.Connection, run_id: str, sync_id: str
) -> list[tuple[str, str | None]]:
    """(key, how the source typed it when the snapshot took it) of the run's removals."""
    rows = conn.execute(
        "SELECT o.record_key, s.key_kind FROM run_ops o LEFT JOIN sync_snapshots s"
        " ON s.sync_id = %s AND s.record_key = o.record_key"
        " WHERE o.run_id = %s AND o.change = 'removed' ORDER BY o.record_key",
        (sync_id, run_id),
    ).fetchall()
    return [(row[0], row[1]) for row in rows]


def set_key_kind(conn: psycopg.Connection, run_id: str, kind: str) -> None:
    """How the source types the run's keys ('number' or 'text'), for its writers (the snapshot
    keeps it) and finalization (DLQ record_keys); set before the run's first batch is stored."""
    conn.execute("UPDATE run_progress SET key_kind = %s WHERE run_id = %s", (kind, run_id))


def stored_field_digests(
    conn: psycopg.Connection, sync_id: str, keys: list[str]
) -> dict[str, bytes]:
    """Key -> the field digests of the record the destination last accepted, for those of
    `keys` that have them (see worker/field_digests.py)."""
    rows = conn.execute(
        "SELECT record_key, field_digests FROM sync_snapshots"
        " WHERE sync_id = %s AND record_key = ANY(%s::text[]) AND field_digests IS NOT NULL",
        (sync_id, keys),
    ).fetchall()
    return {key: bytes(digests) for key, digests in rows}


def snapshot_key_kind(conn: psycopg.Connection, sync_id: str) -> str | None:
    """How the sync's keys were typed when the snapshot last took one (None: never said)."""
    row = conn.execute(
        "SELECT key_kind FROM sync_snapshots WHERE sync_id = %s AND key_kind IS NOT NULL"
        " LIMIT 1",
        (sync_id,),
    ).fetchone()
    return None if row is None else row[0]


def set_plan_counts(
    conn: psycopg.Connection, run_id: str, *, read: int, counts: DiffCounts, failed: int
) -> None:
    conn.execute(
        "UPDATE runs SET rows_read = %s, rows_added = %s, rows_changed = %s,"
        " rows_unchanged = %s, rows_removed = %s, rows_failed = rows_failed + %s,"
        " updated_at = now() WHERE id = %s",
        (read, counts.added, counts.changed, counts.unchanged, counts.removed, failed, run_id),
    )


def set_removed(conn: psycopg.Connection, run_id: str, removed: int) -> None:
    conn.execute(
        "UPDATE runs SET rows_removed = %s, updated_at = now() WHERE id = %s", (removed, run_id)
    )


def set_rows_read(conn: psycopg.Connection, run_id: str, read: int) -> None:
    conn.execute("UPDATE runs SET rows_read = %s, updated_at = now() WHERE id = %s", (read, run_id))


@dataclass
class Failure:
    record_key: str
    key_value: str | None
    error_code: str
    message: str


def add_failures(conn: psycopg.Connection, run_id: str, failures: list[Failure]) -> None:
    """Record refused records; a record refused twice in a run keeps its latest reason."""
    if not failures:
        return
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO run_failures (run_id, record_key, key_value, error_code, message)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (run_id, record_key) DO UPDATE"
            " SET error_code = EXCLUDED.error_code, message = EXCLUDED.message",
            [(run_id, f.record_key, f.key_value, f.error_code, f.message) for f in failures],
        )


def add_counts(conn: psycopg.Connection, run_id: str, *, written: int = 0, failed: int = 0) -> None:
    if written or failed:
        conn.execute(
            "UPDATE runs SET rows_written = rows_written + %s, rows_failed = rows_failed + %s,"
            " updated_at = now() WHERE id = %s",
            (written, failed, run_id),
        )


def planning_done(conn: psycopg.Connection, run_id: str, batches_total: int) -> Progress:
    """Every batch is stored: the run's phase moves on, and its followers are woken to take what
    is left to them and stop."""
    conn.execute("SELECT pg_notify(%s, '')", (followers_channel(run_id),))
    with conn.cursor(row_factory=class_row(Progress)) as cur:
        cur.execute(
            "UPDATE run_progress SET phase = 'writing', batches_total = %s, updated_at = now()"
            " WHERE run_id = %s"
            " RETURNING phase, batches_total, batches_done, abort_error, abort_code, key_kind",
            (batches_total, run_id),
        )
        return cur.fetchone()


def outgoing_changes(conn: psycopg.Connection, run_id: str) -> dict[str, str]:
    """Key -> change class (added, changed, unchanged) of the records whose content is sent."""
    rows = conn.execute(
        "SELECT record_key, change FROM run_ops WHERE run_id = %s AND change <> 'removed'",
        (run_id,),
    ).fetchall()
    return dict(rows)


def first_keys(conn: psycopg.Connection, run_id: str, *, removed: bool, limit: int) -> list[str]:
    """The first `limit` keys (in key order) of the run's removals, or of its other operations."""
    rows = conn.execute(
        "SELECT record_key FROM run_ops WHERE run_id = %s AND (change = 'removed') = %s"
        " ORDER BY record_key LIMIT %s",
        (run_id, removed, limit),
    ).fetchall()
    return [row[0] for row in rows]
