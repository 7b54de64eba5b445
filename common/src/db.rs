//! Postgres pools and migrations.
//!
//! All services may share one database: each owns a schema (`auth`, `task`)
//! with its own tables and its own `_sqlx_migrations` table, selected through
//! the connection's `search_path`. No foreign key crosses schemas.

use std::{str::FromStr as _, time::Duration};

use anyhow::Context as _;
use sqlx::{
    AssertSqlSafe, PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};

/// The schema the auth service owns.
pub const AUTH_SCHEMA: &str = "auth";
/// The schema the task service owns.
pub const TASK_SCHEMA: &str = "task";

/// The auth service's migrations (`migrations/auth`).
pub static AUTH_MIGRATOR: Migrator = sqlx::migrate!("../migrations/auth");
/// The task service's migrations (`migrations/task`).
pub static TASK_MIGRATOR: Migrator = sqlx::migrate!("../migrations/task");

/// Builds a lazily connecting pool whose sessions use `schema` by default.
///
/// Lazy, so a service starts (and answers UNAVAILABLE) while Postgres is down
/// and recovers by itself when it returns. `acquire_timeout` bounds how long a
/// request waits for a connection during an outage.
pub fn pool(url: &str, schema: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url)
        .context("DATABASE_URL is not a valid postgres url")?
        .options([("search_path", schema)])
        .application_name(&format!("taskgate-{schema}"));
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(3))
        .idle_timeout(Duration::from_secs(300))
        .connect_lazy_with(options))
}

/// Creates `schema` if needed and applies `migrator` inside it. Safe to run
/// from several replicas at once: sqlx takes an advisory lock.
pub async fn migrate(pool: &PgPool, schema: &str, migrator: &Migrator) -> anyhow::Result<()> {
    anyhow::ensure!(
        schema.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
        "schema name {schema:?} must be lowercase letters and underscores"
    );
    sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS {schema}")))
        .execute(pool)
        .await
        .with_context(|| format!("creating schema {schema}"))?;
    migrator.run(pool).await.with_context(|| format!("applying migrations for schema {schema}"))?;
    Ok(())
}

/// Retries `migrate` until Postgres answers or `patience` runs out, so that a
/// service started together with its database waits for it.
pub async fn migrate_when_ready(
    pool: &PgPool,
    schema: &str,
    migrator: &Migrator,
    patience: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match migrate(pool, schema, migrator).await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %format!("{e:#}"), "database not ready, retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}
