-- When the planner last rang a doorbell because the run's followers fell behind: it rings for
-- that reason at most once a second, so a worker whose processes are all busy is not sent
-- messages it can only take after the batches are written.
ALTER TABLE run_progress ADD COLUMN backlog_rung_at timestamptz;
