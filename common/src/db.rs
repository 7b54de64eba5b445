//! Postgres pools and migrations.
//!
//! All services may share one database: each owns a schema (`auth`, `task`)
//! with its own tables and its own `_sqlx_migrations` table, selected through
//! the connection's `search_path`. No foreign key crosses schemas.
//!
//! Migrations run at a service's start (unless `MIGRATE_AT_START=false`) and
//! with `<service> migrate`, the form a deployment's one-off job uses; any
//! number of replicas may run them at once (see [`migrate`]).

use std::{str::FromStr as _, time::Duration};

use anyhow::Context as _;
use sqlx::{
    AssertSqlSafe, Connection as _, PgPool,
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

/// A pooled connection idle for at least this long is pinged before it is
/// handed out; one used more recently is handed out as it is (HikariCP's
/// `aliveBypassWindowMs`, the same half second).
///
/// sqlx pings every connection it hands out by default: a second round trip
/// to Postgres for every query, on the hot path of every write and of every
/// login. A connection that was working half a second ago almost always still
/// is; one that has sat idle (across a Postgres restart, say) is checked, and
/// replaced when dead, before any request sees it. If Postgres goes away in
/// the window itself, the query fails and the request gets UNAVAILABLE
/// ([`crate::fault`]), as a query on a connection that died mid-request does;
/// sqlx pings every connection as it comes back to the pool (off the
/// request's path) and closes it when that fails, so a broken connection
/// fails one query at most.
pub const PING_IF_IDLE_FOR: Duration = Duration::from_millis(500);

/// Builds a lazily connecting pool whose sessions use `schema` by default.
///
/// Lazy, so a service starts (and answers UNAVAILABLE) while Postgres is down
/// and recovers by itself when it returns. `acquire_timeout` bounds how long a
/// request waits for a connection during an outage. Only connections idle for
/// [`PING_IF_IDLE_FOR`] are pinged before use.
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
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_lazy_with(options))
}

/// The advisory lock that serialises the migrations of `schema` across every
/// process migrating the same database: a stable number derived from the name
/// (FNV-1a), so every replica of every version computes the same one.
pub fn migration_lock_key(schema: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in b"taskgate-migrate:".iter().chain(schema.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// Creates `schema` if needed and applies `migrator` inside it.
///
/// Safe to run from many replicas at once: everything runs on one connection
/// holding a session advisory lock per schema ([`migration_lock_key`]), so one
/// process migrates while the others wait and then find nothing left to do.
/// (sqlx's own lock covers the migrations but not `CREATE SCHEMA`, which two
/// sessions racing on a fresh database would otherwise both attempt, one
/// failing on a unique violation.) Needs a single connection, so a pool of
/// one is enough.
pub async fn migrate(pool: &PgPool, schema: &str, migrator: &Migrator) -> anyhow::Result<()> {
    anyhow::ensure!(
        schema.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
        "schema name {schema:?} must be lowercase letters and underscores"
    );
    let mut conn = pool.acquire().await.context("connecting to postgres to migrate")?;
    let key = migration_lock_key(schema);
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(key)
        .execute(&mut *conn)
        .await
        .with_context(|| format!("waiting for the migration lock of schema {schema}"))?;
    let applied = async {
        sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS {schema}")))
            .execute(&mut *conn)
            .await
            .with_context(|| format!("creating schema {schema}"))?;
        // `run_direct` on the locked connection itself: `run(&mut *conn)` does
        // the same, but its `Acquire` bound makes callers' futures fail the
        // `Send` check (sqlx documents `run_direct` as the way around it).
        migrator
            .run_direct(None, &mut *conn, false)
            .await
            .with_context(|| format!("applying migrations for schema {schema}"))
    }
    .await;
    // Released explicitly: the connection goes back to the pool, where a
    // session lock would otherwise outlive this call.
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)").bind(key).execute(&mut *conn).await;
    if unlocked.is_err() {
        // The connection's state is unknown: close it instead of pooling it.
        conn.detach();
    }
    applied
}

/// How long a starting service waits for Postgres to accept its migrations
/// ([`migrate_when_ready`]).
pub const MIGRATION_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

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
