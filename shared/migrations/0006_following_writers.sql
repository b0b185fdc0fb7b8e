-- A writer that has written a batch of a run still being planned may follow the planner: it
-- promises (writer_until) to take the run's next batches itself, and a batch stored under that
-- promise is sent no message (rung false). Followers find the run's pending batches in order.
ALTER TABLE run_progress ADD COLUMN writer_until timestamptz;
ALTER TABLE run_batches ADD COLUMN rung boolean NOT NULL DEFAULT true;
CREATE INDEX run_batches_pending ON run_batches (run_id, batch_no) WHERE status = 'pending';
