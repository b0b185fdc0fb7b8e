-- Whether the sync's snapshot was empty when the run was planned (its first run): every record
-- of a one-pass batch is then new to the snapshot, which takes them with a plain insert.
ALTER TABLE run_progress ADD COLUMN snapshot_was_empty boolean NOT NULL DEFAULT false;
