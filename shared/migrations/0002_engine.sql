-- Sync engine: per-sync snapshot of what destinations accepted, and a run's staged plan.
--
-- The snapshot must survive a crash (it decides what the next run sends), so it is logged.
-- Everything a run stages is UNLOGGED: after a crash Postgres empties those tables, and the
-- reaper redoes the run from its source, which is all that losing them costs.

-- (record key, content hash) of every record the destination last accepted, per sync.
-- The hash covers the mapped columns and the mapping definition (see worker/mapping.py).
CREATE TABLE sync_snapshots (
    sync_id       text NOT NULL,
    record_key    text NOT NULL,
    content_hash  text NOT NULL,
    PRIMARY KEY (sync_id, record_key)
);

-- One row per run the engine has taken: its phase and the fan-in counter of its batches.
CREATE UNLOGGED TABLE run_progress (
    run_id         text PRIMARY KEY,
    phase          text NOT NULL DEFAULT 'planning' CHECK (phase IN ('planning', 'writing', 'finished')),
    batches_total  integer,               -- known once planning has packed every batch
    batches_done   integer NOT NULL DEFAULT 0,
    -- Set by the first whole-batch failure (auth, destination down): later batches stop.
    abort_error    text,
    abort_code     text,
    finished_at    timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- The planned operations of a run: one row per record the run sends, with its change class
-- and the hash the snapshot takes once the destination accepts it.
CREATE UNLOGGED TABLE run_ops (
    run_id        text NOT NULL,
    record_key    text NOT NULL,
    operation     text NOT NULL CHECK (operation IN ('upsert', 'insert', 'update', 'delete')),
    change        text NOT NULL CHECK (change IN ('added', 'changed', 'unchanged', 'removed')),
    content_hash  text,
    PRIMARY KEY (run_id, record_key)
);

-- Batches of a run: which records (keys, and the mapped records themselves) go in one write,
-- with status and attempts for idempotent claims, the reaper and fan-in.
CREATE UNLOGGED TABLE run_batches (
    run_id        text NOT NULL,
    batch_no      integer NOT NULL,
    operation     text NOT NULL,
    record_keys   text[] NOT NULL,
    payload       bytea NOT NULL,
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'running', 'done', 'skipped')),
    -- Incremented by every claim; a claimant may record its outcome only while it still holds
    -- the latest claim, so a batch taken over by the reaper is recorded once.
    attempts      integer NOT NULL DEFAULT 0,
    rows_ok       integer NOT NULL DEFAULT 0,
    rows_failed   integer NOT NULL DEFAULT 0,
    enqueued_at   timestamptz NOT NULL DEFAULT now(),
    claimed_by    text,
    claimed_until timestamptz,
    finished_at   timestamptz,
    PRIMARY KEY (run_id, batch_no)
);
CREATE INDEX run_batches_unfinished ON run_batches (status, claimed_until)
    WHERE status IN ('pending', 'running');

-- Records of a run the destination (or the mapping) refused, with the reason.
-- record_key '' stands for the rows whose key was null.
CREATE UNLOGGED TABLE run_failures (
    run_id      text NOT NULL,
    record_key  text NOT NULL,
    key_value   text,
    error_code  text NOT NULL,
    message     text NOT NULL,
    rows        integer NOT NULL DEFAULT 1,
    PRIMARY KEY (run_id, record_key)
);
