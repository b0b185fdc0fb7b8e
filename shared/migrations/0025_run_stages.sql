-- A run's planner stages the source's (key, hash) rows in an unlogged table of its own here,
-- named by the run's id, so that a second session can search them for repeated keys while the
-- first diffs them against the snapshot. The planner drops it once the plan is made; the reaper
-- drops what a planner that died left behind.
CREATE SCHEMA IF NOT EXISTS retl_staging;
