//! The services' Postgres pool (`taskgate_common::db::pool`): a connection in steady use is handed
//! out without sqlx's ping (one round trip fewer per query), and one that sat idle past
//! `PING_IF_IDLE_FOR` is checked first, so a connection Postgres closed while it was idle is
//! replaced before any query sees it; one that broke in use fails one query, never the next.

use std::time::{Duration, Instant};

use sqlx::{Connection as _, PgConnection, PgPool};
use taskgate_common::{db, fault::Fault};

/// The pool's one connection's server process id.
async fn backend_pid(pool: &PgPool) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(pool).await
}

/// Waits until `pool`'s one connection is back in its idle queue: sqlx returns a connection
/// after a query in a task of its own, pinging it first, and a ping racing the termination
/// below would find it dead there instead of at the next acquire.
async fn until_idle(pool: &PgPool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while pool.num_idle() < 1 {
        assert!(Instant::now() < deadline, "the connection did not come back to the pool within 5 s");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Ends server process `pid` from `admin`, as a Postgres restart or an idle-session reaper
/// would, and waits until it is gone.
async fn terminate(admin: &mut PgConnection, pid: i32) {
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut *admin)
        .await
        .expect("terminate");
    assert!(ended, "backend {pid} was terminated");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let alive: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = $1")
            .bind(pid)
            .fetch_one(&mut *admin)
            .await
            .expect("pg_stat_activity");
        if alive == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "backend {pid} still there 5 s after it was terminated");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_connection_in_use_is_not_pinged_and_an_idle_one_is_checked_before_use() {
    let database_url = taskgate_test_support::fresh_database().await;
    let mut admin = PgConnection::connect(&database_url).await.expect("admin connection");

    // In steady use: handed out as it is, so a connection killed a moment ago reaches the query,
    // which fails as UNAVAILABLE. With a ping before every use it would be replaced instead, at
    // the price of a round trip per query.
    let busy = db::pool(&database_url, db::TASK_SCHEMA, 1).expect("pool");
    let pid = backend_pid(&busy).await.expect("first query");
    until_idle(&busy).await;
    let killed_at = Instant::now();
    terminate(&mut admin, pid).await;
    let outcome = backend_pid(&busy).await;
    assert!(
        killed_at.elapsed() < db::PING_IF_IDLE_FOR,
        "the check took longer than the window ({:?}); this test cannot tell the cases apart on a machine this slow",
        killed_at.elapsed()
    );
    let error =
        outcome.expect_err(&format!("a connection used within {:?} was pinged before use", db::PING_IF_IDLE_FOR));
    // The one classification every service answers store errors with: UNAVAILABLE, not INTERNAL.
    assert_eq!(Fault::of_sqlx(&error), Fault::Unavailable, "a query on a connection ended under it: {error:?}");
    // It fails that one query only: sqlx's ping as it comes back closes it, and the next query
    // gets a new connection.
    let next = backend_pid(&busy).await.expect("the broken connection was not handed out again");
    assert_ne!(next, pid, "the next query ran on a new connection");

    // Idle past the window: pinged, found dead, replaced; the query succeeds on a new connection.
    let idle = db::pool(&database_url, db::TASK_SCHEMA, 1).expect("pool");
    let pid = backend_pid(&idle).await.expect("first query");
    until_idle(&idle).await;
    terminate(&mut admin, pid).await;
    tokio::time::sleep(db::PING_IF_IDLE_FOR + Duration::from_millis(100)).await;
    let replaced = backend_pid(&idle).await.expect("an idle connection that died is replaced before use");
    assert_ne!(replaced, pid, "the query ran on a new connection");
}
