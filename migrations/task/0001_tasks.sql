-- Each user's tasks. owner_id is the auth service's user id; no foreign key
-- crosses services.
CREATE TABLE tasks (
    id          uuid PRIMARY KEY,
    owner_id    uuid        NOT NULL,
    title       text        NOT NULL CHECK (char_length(title) BETWEEN 1 AND 200),
    description text        NOT NULL DEFAULT '' CHECK (char_length(description) <= 10000),
    status      text        NOT NULL DEFAULT 'todo' CHECK (status IN ('todo', 'in_progress', 'done')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Keyset pagination: newest first per owner, id as the tie-breaker.
CREATE INDEX tasks_owner_created ON tasks (owner_id, created_at DESC, id DESC);
