-- Alert channels: where a workspace is told that a sync started failing, recovered, or piles
-- up dead letters. The channel's URL and headers are encrypted like connection configs.
CREATE TABLE alert_channels (
    id                     text PRIMARY KEY,
    workspace_id           text NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name                   text NOT NULL,
    kind                   text NOT NULL,
    config_encrypted       text NOT NULL,
    events                 text[] NOT NULL,
    dlq_threshold          integer,
    enabled                boolean NOT NULL DEFAULT true,
    last_delivery_at       timestamptz,
    last_delivery_status   text,
    last_delivery_error    text,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alert_channels_workspace ON alert_channels (workspace_id, id DESC);
