//! The Postgres side: every statement names the owner in its `WHERE`, so a
//! task of another user is never read, changed or deleted, and looks
//! exactly like a missing one.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    Metrics, TaskError,
    domain::{Cursor, RequestId, TaskDescription, TaskStatus, TaskTitle},
};

/// A stored task, as the service hands it out (the owner is implied).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// The task id (UUIDv7, so ids roughly follow creation order).
    pub id: Uuid,
    /// The title.
    pub title: String,
    /// The description; may be empty.
    pub description: String,
    /// The status.
    pub status: TaskStatus,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// Bumped by every write; the etag is derived from it.
    pub version: i64,
}

impl Task {
    /// Where a page that ends with this task continues.
    pub fn cursor(&self) -> Cursor {
        Cursor { created_at: self.created_at, id: self.id }
    }
}

/// A row as Postgres returns it; the status is still text.
#[derive(sqlx::FromRow)]
struct TaskRow {
    id: Uuid,
    title: String,
    description: String,
    status: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    version: i64,
}

impl TryFrom<TaskRow> for Task {
    type Error = TaskError;

    fn try_from(row: TaskRow) -> Result<Self, TaskError> {
        let status = TaskStatus::from_db(&row.status).ok_or_else(|| {
            TaskError::Unexpected(anyhow::anyhow!("unknown status {:?} in task {}", row.status, row.id))
        })?;
        Ok(Task {
            id: row.id,
            title: row.title,
            description: row.description,
            status,
            created_at: row.created_at,
            updated_at: row.updated_at,
            version: row.version,
        })
    }
}

/// The fields an update writes; `None` keeps the stored value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskChanges {
    /// A new title.
    pub title: Option<TaskTitle>,
    /// A new description.
    pub description: Option<TaskDescription>,
    /// A new status.
    pub status: Option<TaskStatus>,
}

/// How long a create's request id is remembered (AIP-155).
pub const REQUEST_ID_LIFETIME: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The fields of a task to create, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTask {
    /// The title.
    pub title: TaskTitle,
    /// The description.
    pub description: TaskDescription,
    /// The status.
    pub status: TaskStatus,
}

impl NewTask {
    /// A digest of the payload, stored with a request id so that a retry
    /// with another payload is told apart from a true retry.
    pub fn payload_hash(&self) -> [u8; 32] {
        use sha2::Digest as _;
        let mut hasher = sha2::Sha256::new();
        // Length-prefixed, so no two payloads share an encoding.
        for part in [self.title.as_str(), self.description.as_str(), self.status.as_db()] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        hasher.finalize().into()
    }
}

/// What a create did.
#[derive(Debug, Clone)]
pub struct Created {
    /// The task.
    pub task: Task,
    /// True when a request id matched an earlier create: nothing was
    /// written, and `task` is that create's task.
    pub replayed: bool,
}

/// Postgres access for tasks.
#[derive(Clone)]
pub struct Repository {
    /// The pool, whose sessions use the `task` schema.
    pool: PgPool,
    /// Where list queries are counted.
    metrics: Arc<Metrics>,
    /// Whether Postgres answered last time; flips are logged, so an outage
    /// is logged once however many requests it fails.
    up: Arc<AtomicBool>,
}

impl Repository {
    /// Queries through `pool`, counting list queries in `metrics`.
    pub fn new(pool: PgPool, metrics: Arc<Metrics>) -> Self {
        Repository { pool, metrics, up: Arc::new(AtomicBool::new(true)) }
    }

    /// Classifies a query result, logging when Postgres goes away and when
    /// it comes back.
    fn observe<T>(&self, result: Result<T, sqlx::Error>, doing: &'static str) -> Result<T, TaskError> {
        match result {
            Ok(value) => {
                if !self.up.swap(true, Ordering::SeqCst) {
                    tracing::info!("database recovered");
                }
                Ok(value)
            }
            Err(e) => {
                let error = TaskError::from_db(e, doing);
                if matches!(error, TaskError::Unavailable) && self.up.swap(false, Ordering::SeqCst) {
                    self.metrics.database_outage();
                    tracing::warn!("database unavailable: task calls answer UNAVAILABLE until it returns");
                }
                Err(error)
            }
        }
    }

    /// Inserts a task owned by `owner` and returns it. With a request id,
    /// the id is recorded in the same transaction: a second call with the
    /// same id (within [`REQUEST_ID_LIFETIME`]) creates nothing and returns
    /// the first call's task, or refuses a different payload.
    #[tracing::instrument(name = "tasks insert", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "INSERT", db.collection.name = "tasks"))]
    pub async fn create(&self, owner: Uuid, new: &NewTask, request: Option<&RequestId>) -> Result<Created, TaskError> {
        let result = self.create_in_transaction(owner, new, request).await;
        self.observe(result, "creating a task")?
    }

    async fn create_in_transaction(
        &self,
        owner: Uuid,
        new: &NewTask,
        request: Option<&RequestId>,
    ) -> Result<Result<Created, TaskError>, sqlx::Error> {
        let id = Uuid::now_v7();
        let mut tx = self.pool.begin().await?;
        if let Some(request) = request {
            let hash = new.payload_hash();
            // Claims the id, or takes over one older than the lifetime. When
            // another transaction holds the same id uncommitted, this waits
            // for it; if that one commits, nothing is returned here.
            let claimed: Option<Uuid> = sqlx::query_scalar(
                "INSERT INTO create_requests (owner_id, request_id, payload_hash, task_id, created_at) \
                 VALUES ($1, $2, $3, $4, now()) \
                 ON CONFLICT (owner_id, request_id) DO UPDATE \
                     SET payload_hash = EXCLUDED.payload_hash, task_id = EXCLUDED.task_id, created_at = now() \
                     WHERE create_requests.created_at < now() - make_interval(secs => $5) \
                 RETURNING task_id",
            )
            .bind(owner)
            .bind(request.as_str())
            .bind(hash.as_slice())
            .bind(id)
            .bind(REQUEST_ID_LIFETIME.as_secs_f64())
            .fetch_optional(&mut *tx)
            .await?;
            if claimed.is_none() {
                let (stored_hash, task_id): (Vec<u8>, Uuid) = sqlx::query_as(
                    "SELECT payload_hash, task_id FROM create_requests WHERE owner_id = $1 AND request_id = $2",
                )
                .bind(owner)
                .bind(request.as_str())
                .fetch_one(&mut *tx)
                .await?;
                tx.rollback().await?;
                if stored_hash != hash {
                    return Ok(Err(TaskError::invalid(
                        "request_id",
                        "was already used for a different task in the last 24 hours",
                    )));
                }
                let row = sqlx::query_as::<_, TaskRow>(
                    "SELECT id, title, description, status, created_at, updated_at, version \
                     FROM tasks WHERE id = $1 AND owner_id = $2",
                )
                .bind(task_id)
                .bind(owner)
                .fetch_optional(&self.pool)
                .await?;
                return Ok(match row {
                    Some(row) => row.try_into().map(|task| Created { task, replayed: true }),
                    None => Err(TaskError::RequestDeleted),
                });
            }
        }
        let row = sqlx::query_as::<_, TaskRow>(
            "INSERT INTO tasks (id, owner_id, title, description, status, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, clock_timestamp(), clock_timestamp()) \
             RETURNING id, title, description, status, created_at, updated_at, version",
        )
        .bind(id)
        .bind(owner)
        .bind(new.title.as_str())
        .bind(new.description.as_str())
        .bind(new.status.as_db())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row.try_into().map(|task| Created { task, replayed: false }))
    }

    /// Forgets request ids older than [`REQUEST_ID_LIFETIME`].
    pub async fn sweep_request_ids(&self) -> Result<u64, TaskError> {
        let done = sqlx::query("DELETE FROM create_requests WHERE created_at < now() - make_interval(secs => $1)")
            .bind(REQUEST_ID_LIFETIME.as_secs_f64())
            .execute(&self.pool)
            .await;
        self.observe(done, "sweeping old request ids").map(|done| done.rows_affected())
    }

    /// The task `id` if `owner` owns it.
    #[tracing::instrument(name = "tasks select", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "SELECT", db.collection.name = "tasks"))]
    pub async fn get(&self, owner: Uuid, id: Uuid) -> Result<Task, TaskError> {
        let row = sqlx::query_as::<_, TaskRow>(
            "SELECT id, title, description, status, created_at, updated_at, version \
             FROM tasks WHERE id = $1 AND owner_id = $2",
        )
        .bind(id)
        .bind(owner)
        .fetch_optional(&self.pool)
        .await;
        self.observe(row, "reading a task")?.ok_or(TaskError::NotFound)?.try_into()
    }

    /// Applies `changes` to task `id` if `owner` owns it (and, with
    /// `expected`, only if its version is still that one), and returns it.
    #[tracing::instrument(name = "tasks update", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "UPDATE", db.collection.name = "tasks"))]
    pub async fn update(
        &self,
        owner: Uuid,
        id: Uuid,
        changes: &TaskChanges,
        expected: Option<i64>,
    ) -> Result<Task, TaskError> {
        let row = sqlx::query_as::<_, TaskRow>(
            "UPDATE tasks SET \
                 title = COALESCE($3, title), \
                 description = COALESCE($4, description), \
                 status = COALESCE($5, status), \
                 updated_at = clock_timestamp(), \
                 version = version + 1 \
             WHERE id = $1 AND owner_id = $2 AND ($6::bigint IS NULL OR version = $6) \
             RETURNING id, title, description, status, created_at, updated_at, version",
        )
        .bind(id)
        .bind(owner)
        .bind(changes.title.as_ref().map(TaskTitle::as_str))
        .bind(changes.description.as_ref().map(TaskDescription::as_str))
        .bind(changes.status.map(TaskStatus::as_db))
        .bind(expected)
        .fetch_optional(&self.pool)
        .await;
        match self.observe(row, "updating a task")? {
            Some(row) => row.try_into(),
            None => Err(self.missing_or_changed(owner, id, expected).await),
        }
    }

    /// Why a conditional write matched no row: the task is gone (or someone
    /// else's), or its version moved on.
    async fn missing_or_changed(&self, owner: Uuid, id: Uuid, expected: Option<i64>) -> TaskError {
        if expected.is_none() {
            return TaskError::NotFound;
        }
        let exists =
            sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM tasks WHERE id = $1 AND owner_id = $2)")
                .bind(id)
                .bind(owner)
                .fetch_one(&self.pool)
                .await;
        match self.observe(exists, "checking a task after a conditional write") {
            Ok(true) => TaskError::EtagMismatch,
            Ok(false) => TaskError::NotFound,
            Err(e) => e,
        }
    }

    /// Deletes task `id` if `owner` owns it (and, with `expected`, only if
    /// its version is still that one).
    #[tracing::instrument(name = "tasks delete", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "DELETE", db.collection.name = "tasks"))]
    pub async fn delete(&self, owner: Uuid, id: Uuid, expected: Option<i64>) -> Result<(), TaskError> {
        let done =
            sqlx::query("DELETE FROM tasks WHERE id = $1 AND owner_id = $2 AND ($3::bigint IS NULL OR version = $3)")
                .bind(id)
                .bind(owner)
                .bind(expected)
                .execute(&self.pool)
                .await;
        let done = self.observe(done, "deleting a task")?;
        if done.rows_affected() == 0 { Err(self.missing_or_changed(owner, id, expected).await) } else { Ok(()) }
    }

    /// Up to `limit` of `owner`'s tasks, newest first, optionally only those
    /// with `status`, starting after `after`.
    ///
    /// Four static statements rather than one with `$n IS NULL OR ...`, so
    /// each has a plan that walks the `(owner_id, created_at DESC, id DESC)`
    /// index from the cursor: page 200 costs what page 1 costs.
    #[tracing::instrument(name = "tasks list", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "SELECT", db.collection.name = "tasks"))]
    pub async fn list(
        &self,
        owner: Uuid,
        status: Option<TaskStatus>,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<Vec<Task>, TaskError> {
        self.metrics.list_query();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let query = match (status, after) {
            (None, None) => sqlx::query_as::<_, TaskRow>(
                "SELECT id, title, description, status, created_at, updated_at, version FROM tasks \
                 WHERE owner_id = $1 \
                 ORDER BY created_at DESC, id DESC LIMIT $2",
            )
            .bind(owner)
            .bind(limit),
            (Some(status), None) => sqlx::query_as::<_, TaskRow>(
                "SELECT id, title, description, status, created_at, updated_at, version FROM tasks \
                 WHERE owner_id = $1 AND status = $2 \
                 ORDER BY created_at DESC, id DESC LIMIT $3",
            )
            .bind(owner)
            .bind(status.as_db())
            .bind(limit),
            (None, Some(cursor)) => sqlx::query_as::<_, TaskRow>(
                "SELECT id, title, description, status, created_at, updated_at, version FROM tasks \
                 WHERE owner_id = $1 AND (created_at, id) < ($2, $3) \
                 ORDER BY created_at DESC, id DESC LIMIT $4",
            )
            .bind(owner)
            .bind(cursor.created_at)
            .bind(cursor.id)
            .bind(limit),
            (Some(status), Some(cursor)) => sqlx::query_as::<_, TaskRow>(
                "SELECT id, title, description, status, created_at, updated_at, version FROM tasks \
                 WHERE owner_id = $1 AND status = $2 AND (created_at, id) < ($3, $4) \
                 ORDER BY created_at DESC, id DESC LIMIT $5",
            )
            .bind(owner)
            .bind(status.as_db())
            .bind(cursor.created_at)
            .bind(cursor.id)
            .bind(limit),
        };
        let rows = self.observe(query.fetch_all(&self.pool).await, "listing tasks")?;
        rows.into_iter().map(Task::try_from).collect()
    }

    /// Records that a write of `owner`'s tasks could not reach Redis (its
    /// cache invalidation and its event).
    pub async fn record_missed_invalidation(&self, owner: Uuid) -> Result<(), TaskError> {
        let done =
            sqlx::query("INSERT INTO cache_invalidations (owner_id) VALUES ($1)").bind(owner).execute(&self.pool).await;
        self.observe(done, "recording a missed cache invalidation").map(|_| ())
    }

    /// The users named by missed-invalidation records up to `id` (`None`
    /// stands for records that name nobody).
    pub async fn missed_invalidation_owners(&self, id: i64) -> Result<Vec<Option<Uuid>>, TaskError> {
        let owners = sqlx::query_scalar("SELECT DISTINCT owner_id FROM cache_invalidations WHERE id <= $1")
            .bind(id)
            .fetch_all(&self.pool)
            .await;
        self.observe(owners, "reading missed cache invalidations")
    }

    /// The newest missed-invalidation record, if any.
    pub async fn newest_missed_invalidation(&self) -> Result<Option<i64>, TaskError> {
        let newest = sqlx::query_scalar("SELECT max(id) FROM cache_invalidations").fetch_one(&self.pool).await;
        self.observe(newest, "reading missed cache invalidations")
    }

    /// Deletes the missed-invalidation records up to `id`.
    pub async fn clear_missed_invalidations(&self, id: i64) -> Result<(), TaskError> {
        let done = sqlx::query("DELETE FROM cache_invalidations WHERE id <= $1").bind(id).execute(&self.pool).await;
        self.observe(done, "clearing missed cache invalidations").map(|_| ())
    }
}
