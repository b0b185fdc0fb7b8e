-- Guards: a sync's limits on what one run may remove or change. A run whose plan crosses them
-- ends `held`, its batches kept in held_batches (where no writer, follower or reaper looks)
-- until it is approved (they move to run_batches) or cancelled (they are dropped).
ALTER TABLE syncs ADD COLUMN guard jsonb;

ALTER TABLE runs DROP CONSTRAINT runs_status_check;
ALTER TABLE runs ADD CONSTRAINT runs_status_check
    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'held'));

-- UNLOGGED like the rest of a run's staging (run_ops, run_progress): a crash empties them all
-- together, and approving a plan that was lost is refused.
CREATE UNLOGGED TABLE held_batches (
    run_id          text NOT NULL,
    batch_no        integer NOT NULL,
    operation       text NOT NULL,
    record_keys     text[] NOT NULL,
    content_hashes  text[],
    payload         bytea NOT NULL,
    PRIMARY KEY (run_id, batch_no)
);
