-- Core tables: tenancy, credentials, connections, syncs, runs and the dead-letter queue.

CREATE TABLE workspaces (
    id          text PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id            text PRIMARY KEY,
    workspace_id  text NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    key_hash      text NOT NULL UNIQUE,
    display_hint  text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);

-- Sources and destinations share one shape; `kind` tells them apart.
CREATE TABLE connections (
    id                text PRIMARY KEY,
    workspace_id      text NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    kind              text NOT NULL CHECK (kind IN ('source', 'destination')),
    name              text NOT NULL,
    connector         text NOT NULL,
    config_encrypted  text NOT NULL,
    status            text NOT NULL DEFAULT 'untested',
    status_message    text,
    checked_at        timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX connections_workspace ON connections (workspace_id, kind, id DESC);

CREATE TABLE syncs (
    id              text PRIMARY KEY,
    workspace_id    text NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name            text NOT NULL,
    -- No foreign keys: a connection may be deleted once no live sync uses it, while deleted
    -- syncs (kept for their run history) still name it.
    source_id       text NOT NULL,
    destination_id  text NOT NULL,
    object_name     text NOT NULL,
    source_query    text NOT NULL,
    field_mappings  jsonb NOT NULL,
    sync_mode       text NOT NULL,
    enabled         boolean NOT NULL DEFAULT true,
    schedule        jsonb NOT NULL DEFAULT '{"type": "manual"}',
    next_run_at     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at      timestamptz
);
CREATE INDEX syncs_workspace ON syncs (workspace_id, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX syncs_due ON syncs (next_run_at) WHERE deleted_at IS NULL AND enabled;

CREATE TABLE runs (
    id               text PRIMARY KEY,
    workspace_id     text NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    sync_id          text NOT NULL REFERENCES syncs (id),
    status           text NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    trigger          text NOT NULL DEFAULT 'manual' CHECK (trigger IN ('manual', 'schedule', 'replay')),
    full_refresh     boolean NOT NULL DEFAULT false,
    scheduled_for    timestamptz,
    replay_keys      jsonb,
    rows_read        bigint NOT NULL DEFAULT 0,
    rows_written     bigint NOT NULL DEFAULT 0,
    rows_failed      bigint NOT NULL DEFAULT 0,
    rows_added       bigint NOT NULL DEFAULT 0,
    rows_changed     bigint NOT NULL DEFAULT 0,
    rows_removed     bigint NOT NULL DEFAULT 0,
    rows_unchanged   bigint NOT NULL DEFAULT 0,
    error            text,
    cancel_requested boolean NOT NULL DEFAULT false,
    -- Lease: the worker that owns the run, until when, and a token every state write checks.
    lease_owner      text,
    lease_expires_at timestamptz,
    fencing_token    bigint NOT NULL DEFAULT 0,
    enqueued_at      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
-- At most one queued and one running run per sync: triggers coalesce onto the queued one.
CREATE UNIQUE INDEX runs_one_queued_per_sync ON runs (sync_id) WHERE status = 'queued';
CREATE UNIQUE INDEX runs_one_running_per_sync ON runs (sync_id) WHERE status = 'running';
-- Each scheduled tick of a sync creates one run, however many beats see it.
CREATE UNIQUE INDEX runs_one_per_tick ON runs (sync_id, scheduled_for) WHERE scheduled_for IS NOT NULL;
CREATE INDEX runs_workspace ON runs (workspace_id, id DESC);
CREATE INDEX runs_sync ON runs (sync_id, id DESC);
CREATE INDEX runs_active ON runs (status) WHERE status IN ('queued', 'running');

CREATE TABLE dlq_entries (
    id             text PRIMARY KEY,
    workspace_id   text NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    sync_id        text NOT NULL REFERENCES syncs (id),
    run_id         text NOT NULL REFERENCES runs (id),
    record_key     text NOT NULL,
    record_keys    jsonb NOT NULL,
    error_code     text NOT NULL,
    message        text NOT NULL,
    attempts       integer NOT NULL DEFAULT 1,
    first_seen_at  timestamptz NOT NULL DEFAULT now(),
    last_seen_at   timestamptz NOT NULL DEFAULT now(),
    resolved       boolean NOT NULL DEFAULT false,
    resolved_at    timestamptz,
    resolution     text
);
-- One open entry per record of a sync; a later failure updates it.
CREATE UNIQUE INDEX dlq_one_open_per_record ON dlq_entries (sync_id, record_key) WHERE NOT resolved;
CREATE INDEX dlq_workspace ON dlq_entries (workspace_id, resolved, id DESC);
CREATE INDEX dlq_sync ON dlq_entries (sync_id, resolved, id DESC);
