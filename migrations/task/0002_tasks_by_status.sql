-- ListTasks with a status filter walks this index from the cursor, as the
-- unfiltered listing walks tasks_owner_created.
CREATE INDEX tasks_owner_status_created ON tasks (owner_id, status, created_at DESC, id DESC);
