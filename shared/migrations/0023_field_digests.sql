-- Field digests of the record the destination last accepted, beside its content hash in the
-- snapshot: one 4-byte digest per field of the record as sent (destination name and value, see
-- worker/field_digests.py), sorted and packed into one bytea. A preview digests the record it
-- would send now and names the fields whose digest is not stored. In the snapshot's own row:
-- a table of their own cost each accepted record a second row and a second index entry (about
-- as much as the snapshot's), where a column costs 4 bytes a field. NULL: the record was last
-- sent before digests were kept.
ALTER TABLE sync_snapshots ADD COLUMN field_digests bytea;

-- Batches carry the field digests of their records (aligned with record_keys); NULL for a batch
-- of deletes.
ALTER TABLE run_batches ADD COLUMN field_digests bytea[];
ALTER TABLE run_batches ALTER COLUMN field_digests SET STORAGE EXTERNAL;
ALTER TABLE held_batches ADD COLUMN field_digests bytea[];
