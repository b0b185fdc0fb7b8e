-- Field digests of every record the destination last accepted, per sync: one 4-byte digest per
-- field of the record as sent (destination name and value, see worker/field_digests.py),
-- sorted and packed into one bytea. A preview digests the record it would send now and names
-- the fields whose digest is not stored. Kept beside sync_snapshots rather than in it: the
-- planner's diff scans the snapshot, and wider rows would slow every plan. A key's digests go
-- wherever its snapshot row goes; a key without digests was last sent before they were kept,
-- or was deleted.
CREATE TABLE sync_field_digests (
    sync_id     text NOT NULL,
    record_key  text NOT NULL,
    digests     bytea NOT NULL,
    PRIMARY KEY (sync_id, record_key)
);

-- Batches carry the field digests of their records (aligned with record_keys); NULL for a batch
-- of deletes, whose accepted keys lose their digests.
ALTER TABLE run_batches ADD COLUMN field_digests bytea[];
ALTER TABLE run_batches ALTER COLUMN field_digests SET STORAGE EXTERNAL;
ALTER TABLE held_batches ADD COLUMN field_digests bytea[];
