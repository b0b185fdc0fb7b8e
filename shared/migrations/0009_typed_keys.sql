-- Keys keep their type. The diff compares keys as text (record_key, unchanged), and each key
-- also says how the source typed it, so deletes and DLQ record_keys give it back as it was
-- sent: 'number' (integers, decimals: a JSON number) or 'text' (text, UUIDs as their text, and
-- anything else). NULL: a snapshot row written before this migration; its run's kind is used.
ALTER TABLE sync_snapshots ADD COLUMN key_kind text;
-- The kind of the run's keys, found by its planner before its first batch is stored.
ALTER TABLE run_progress ADD COLUMN key_kind text;
