-- Users of taskgate. Any of username, email and phone may be the login name;
-- uniqueness is case-insensitive for username and email.
CREATE TABLE users (
    id            uuid PRIMARY KEY,
    username      text,
    email         text,
    phone         text,
    password_hash text        NOT NULL,
    is_admin      boolean     NOT NULL DEFAULT false,
    disabled_at   timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_has_login CHECK (username IS NOT NULL OR email IS NOT NULL OR phone IS NOT NULL)
);

CREATE UNIQUE INDEX users_username_lower ON users (lower(username)) WHERE username IS NOT NULL;
CREATE UNIQUE INDEX users_email_lower ON users (lower(email)) WHERE email IS NOT NULL;
CREATE UNIQUE INDEX users_phone ON users (phone) WHERE phone IS NOT NULL;
