-- A workspace's syncs_version moves with every statement that changes one of its syncs (create,
-- update, toggle, delete, the scheduler's next run time). The API reads it in the statement that
-- looks the request's key up, and answers a sync read from the answer it kept for that version
-- (see api/answers.py): one round trip, and the answer is never older than the syncs.
ALTER TABLE workspaces ADD COLUMN syncs_version bigint NOT NULL DEFAULT 0;

CREATE FUNCTION bump_syncs_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE workspaces SET syncs_version = syncs_version + 1
    WHERE id IN (SELECT DISTINCT workspace_id FROM changed_syncs);
    RETURN NULL;
END
$$;

-- Once per statement (a scheduler tick moving 500 syncs bumps each workspace once).
CREATE TRIGGER syncs_inserted AFTER INSERT ON syncs
    REFERENCING NEW TABLE AS changed_syncs FOR EACH STATEMENT EXECUTE FUNCTION bump_syncs_version();
CREATE TRIGGER syncs_updated AFTER UPDATE ON syncs
    REFERENCING NEW TABLE AS changed_syncs FOR EACH STATEMENT EXECUTE FUNCTION bump_syncs_version();
CREATE TRIGGER syncs_deleted AFTER DELETE ON syncs
    REFERENCING OLD TABLE AS changed_syncs FOR EACH STATEMENT EXECUTE FUNCTION bump_syncs_version();
