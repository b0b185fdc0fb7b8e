-- Batches of a one-pass run carry the content hash of each record (aligned with record_keys),
-- so the snapshot takes them from the batch itself; NULL when the hashes are in run_ops.
ALTER TABLE run_batches ADD COLUMN content_hashes text[];

-- A batch's payload and keys are written once, read once and dropped: compressing them on the
-- way in (TOAST's default for large values) costs more CPU than the space it saves.
ALTER TABLE run_batches ALTER COLUMN payload SET STORAGE EXTERNAL;
ALTER TABLE run_batches ALTER COLUMN record_keys SET STORAGE EXTERNAL;
ALTER TABLE run_batches ALTER COLUMN content_hashes SET STORAGE EXTERNAL;
