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
    domain::{Cursor, TaskDescription, TaskStatus, TaskTitle},
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

    /// Inserts a task owned by `owner` and returns it.
    pub async fn create(
        &self,
        owner: Uuid,
        title: &TaskTitle,
        description: &TaskDescription,
        status: TaskStatus,
    ) -> Result<Task, TaskError> {
        let row = sqlx::query_as::<_, TaskRow>(
            "INSERT INTO tasks (id, owner_id, title, description, status, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, clock_timestamp(), clock_timestamp()) \
             RETURNING id, title, description, status, created_at, updated_at",
        )
        .bind(Uuid::now_v7())
        .bind(owner)
        .bind(title.as_str())
        .bind(description.as_str())
        .bind(status.as_db())
        .fetch_one(&self.pool)
        .await;
        self.observe(row, "inserting a task")?.try_into()
    }

    /// The task `id` if `owner` owns it.
    pub async fn get(&self, owner: Uuid, id: Uuid) -> Result<Task, TaskError> {
        let row = sqlx::query_as::<_, TaskRow>(
            "SELECT id, title, description, status, created_at, updated_at \
             FROM tasks WHERE id = $1 AND owner_id = $2",
        )
        .bind(id)
        .bind(owner)
        .fetch_optional(&self.pool)
        .await;
        self.observe(row, "reading a task")?.ok_or(TaskError::NotFound)?.try_into()
    }

    /// Applies `changes` to task `id` if `owner` owns it, and returns it.
    pub async fn update(&self, owner: Uuid, id: Uuid, changes: &TaskChanges) -> Result<Task, TaskError> {
        let row = sqlx::query_as::<_, TaskRow>(
            "UPDATE tasks SET \
                 title = COALESCE($3, title), \
                 description = COALESCE($4, description), \
                 status = COALESCE($5, status), \
                 updated_at = clock_timestamp() \
             WHERE id = $1 AND owner_id = $2 \
             RETURNING id, title, description, status, created_at, updated_at",
        )
        .bind(id)
        .bind(owner)
        .bind(changes.title.as_ref().map(TaskTitle::as_str))
        .bind(changes.description.as_ref().map(TaskDescription::as_str))
        .bind(changes.status.map(TaskStatus::as_db))
        .fetch_optional(&self.pool)
        .await;
        self.observe(row, "updating a task")?.ok_or(TaskError::NotFound)?.try_into()
    }

    /// Deletes task `id` if `owner` owns it.
    pub async fn delete(&self, owner: Uuid, id: Uuid) -> Result<(), TaskError> {
        let done = sqlx::query("DELETE FROM tasks WHERE id = $1 AND owner_id = $2")
            .bind(id)
            .bind(owner)
            .execute(&self.pool)
            .await;
        let done = self.observe(done, "deleting a task")?;
        if done.rows_affected() == 0 { Err(TaskError::NotFound) } else { Ok(()) }
    }

    /// Up to `limit` of `owner`'s tasks, newest first, optionally only those
    /// with `status`, starting after `after`.
    ///
    /// Four static statements rather than one with `$n IS NULL OR ...`, so
    /// each has a plan that walks the `(owner_id, created_at DESC, id DESC)`
    /// index from the cursor: page 200 costs what page 1 costs.
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
                "SELECT id, title, description, status, created_at, updated_at FROM tasks \
                 WHERE owner_id = $1 \
                 ORDER BY created_at DESC, id DESC LIMIT $2",
            )
            .bind(owner)
            .bind(limit),
            (Some(status), None) => sqlx::query_as::<_, TaskRow>(
                "SELECT id, title, description, status, created_at, updated_at FROM tasks \
                 WHERE owner_id = $1 AND status = $2 \
                 ORDER BY created_at DESC, id DESC LIMIT $3",
            )
            .bind(owner)
            .bind(status.as_db())
            .bind(limit),
            (None, Some(cursor)) => sqlx::query_as::<_, TaskRow>(
                "SELECT id, title, description, status, created_at, updated_at FROM tasks \
                 WHERE owner_id = $1 AND (created_at, id) < ($2, $3) \
                 ORDER BY created_at DESC, id DESC LIMIT $4",
            )
            .bind(owner)
            .bind(cursor.created_at)
            .bind(cursor.id)
            .bind(limit),
            (Some(status), Some(cursor)) => sqlx::query_as::<_, TaskRow>(
                "SELECT id, title, description, status, created_at, updated_at FROM tasks \
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

    /// Records that a write's cache invalidation could not reach Redis.
    pub async fn record_missed_invalidation(&self) -> Result<(), TaskError> {
        let done = sqlx::query("INSERT INTO cache_invalidations DEFAULT VALUES").execute(&self.pool).await;
        self.observe(done, "recording a missed cache invalidation").map(|_| ())
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
