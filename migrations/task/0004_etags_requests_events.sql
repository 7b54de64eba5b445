-- AIP-154 etags: every write bumps a task's version; the etag is derived
-- from it, and a conditional write names the version it expects.
ALTER TABLE tasks ADD COLUMN version bigint NOT NULL DEFAULT 1;

-- AIP-155 idempotent create: one row per (owner, request id), written in the
-- same transaction as the task it created, so a retry on any replica (and
-- during a Redis outage) finds it. Rows older than 24 hours are ignored and
-- swept.
CREATE TABLE create_requests (
    owner_id     uuid        NOT NULL,
    request_id   text        NOT NULL CHECK (char_length(request_id) BETWEEN 1 AND 128),
    payload_hash bytea       NOT NULL,
    task_id      uuid        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner_id, request_id)
);
CREATE INDEX create_requests_created ON create_requests (created_at);

-- Whose write could not reach Redis, so the sweep can also tell that user's
-- watchers to list again (NULL: unknown, every watcher is told).
ALTER TABLE cache_invalidations ADD COLUMN owner_id uuid;
