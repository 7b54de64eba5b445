-- Users of taskgate. Any of username, email and phone may be the login name;
-- uniqueness is case-insensitive for username and email.
CREATE TABLE users (
    id            uuid PRIMARY KEY,
    username      text,
    email         text,
    phone         text,
    -- argon2id PHC string; rehashed on login when its parameters are outdated.
    password_hash text        NOT NULL,
    is_admin      boolean     NOT NULL DEFAULT false,
    disabled_at   timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_has_login CHECK (username IS NOT NULL OR email IS NOT NULL OR phone IS NOT NULL)
);

CREATE UNIQUE INDEX users_username_lower ON users (lower(username)) WHERE username IS NOT NULL;
CREATE UNIQUE INDEX users_email_lower ON users (lower(email)) WHERE email IS NOT NULL;
CREATE UNIQUE INDEX users_phone ON users (phone) WHERE phone IS NOT NULL;

-- Ed25519 signing keys shared by every replica. A key is published in the
-- JWKS from `created_at`, signs from `activate_at` (publish before use) and
-- stays published until every token it signed has expired.
CREATE TABLE signing_keys (
    kid         text PRIMARY KEY,
    -- PKCS#8 DER of the private key.
    private_der bytea       NOT NULL,
    -- The raw 32-byte Ed25519 public key.
    public_key  bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    activate_at timestamptz NOT NULL
);

CREATE INDEX signing_keys_activate_at ON signing_keys (activate_at);
