-- The durable record of every session (a refresh-token family). Redis keeps
-- a mirror of the live ones for the verifiers (auth-service/README.md,
-- "Sessions"); when Redis loses its data, the live sessions are rebuilt from
-- here and the revoked ones stay dead.
CREATE TABLE sessions (
    id                 uuid        PRIMARY KEY,
    user_id            uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at         timestamptz NOT NULL,
    -- The absolute end: no refresh extends a session past it.
    expires_at         timestamptz NOT NULL,
    -- When the current refresh token expires (capped by expires_at).
    refresh_expires_at timestamptz NOT NULL,
    -- The jti of the one current refresh token, and of its predecessor,
    -- which gets the same successor within the grace window after rotated_at.
    current_jti        text        NOT NULL,
    previous_jti       text,
    rotated_at         timestamptz,
    -- The current pair's access jti and issue time (epoch seconds), so a
    -- retry within the grace window is handed byte-identical tokens.
    access_jti         text        NOT NULL,
    issued_at          bigint      NOT NULL,
    user_agent         text        NOT NULL DEFAULT '',
    ip                 text        NOT NULL DEFAULT '',
    revoked_at         timestamptz,
    revoked_reason     text,
    CONSTRAINT sessions_revocation_has_reason CHECK ((revoked_at IS NULL) = (revoked_reason IS NULL))
);

-- A user's live sessions, newest first (the per-user cap, logout-all).
CREATE INDEX sessions_live_by_user ON sessions (user_id, created_at DESC) WHERE revoked_at IS NULL;
-- Pushing recent revocations into the mirror.
CREATE INDEX sessions_revoked_at ON sessions (revoked_at) WHERE revoked_at IS NOT NULL;
-- Purging sessions long over.
CREATE INDEX sessions_refresh_expires_at ON sessions (refresh_expires_at);
