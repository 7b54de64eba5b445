//! What the pool's ping costs: pooled `SELECT 1` queries in a row through the services' pool
//! (`taskgate_common::db::pool`, which pings only connections idle for `PING_IF_IDLE_FOR`) and
//! through a pool with sqlx's default, which pings every connection it hands out.
//!
//! ```text
//! cargo run --release -p fleet-tests --example pool_ping
//! ```
//!
//! Needs `TASKGATE_TEST_DATABASE_URL` (a fresh database is made on it); three rounds of 5,000
//! queries each way, one at a time, on 127.0.0.1 or wherever that URL points.

use std::time::Instant;

use sqlx::{PgPool, postgres::PgPoolOptions};

/// Queries per pool per round.
const QUERIES: u32 = 5_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = taskgate_test_support::fresh_database().await;
    let ours = taskgate_common::db::pool(&url, "public", 4)?;
    let pinging = PgPoolOptions::new().max_connections(4).connect(&url).await?;
    for round in 1..=3 {
        for (name, pool) in [("ping when idle 500 ms (ours)", &ours), ("ping every use (sqlx default)", &pinging)] {
            println!("round {round}, {name:<30} {:>6.1} µs per query", per_query(pool).await?);
        }
    }
    Ok(())
}

/// Microseconds per pooled `SELECT 1`, [`QUERIES`] in a row.
async fn per_query(pool: &PgPool) -> anyhow::Result<f64> {
    let started = Instant::now();
    for _ in 0..QUERIES {
        let _: i32 = sqlx::query_scalar("SELECT 1").fetch_one(pool).await?;
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / f64::from(QUERIES))
}
