-- How many times a run's planner handed the run back because its destination asked to wait
-- (a quota answer, an outage while its fields were read): past the retry policy's attempts the
-- run fails instead of waiting for ever.
ALTER TABLE runs ADD COLUMN plan_waits integer NOT NULL DEFAULT 0;
