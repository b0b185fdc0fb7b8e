-- A batch that must wait longer than a task should sleep (a Retry-After, a quota answer, a long
-- backoff, the destination's limits) is parked: back to pending, not to be claimed before
-- not_before, with the write attempts it spent (tries, counted across parkings) and what the
-- destination last answered. parkings counts the times it was handed back cleanly, so a batch
-- whose claims keep dying mid-write is still told apart from one that waited.
ALTER TABLE run_batches ADD COLUMN not_before timestamptz;
ALTER TABLE run_batches ADD COLUMN tries integer NOT NULL DEFAULT 0;
ALTER TABLE run_batches ADD COLUMN parkings integer NOT NULL DEFAULT 0;
ALTER TABLE run_batches ADD COLUMN last_error text;
CREATE INDEX run_batches_parked ON run_batches (run_id, not_before)
    WHERE status = 'pending' AND not_before IS NOT NULL;
