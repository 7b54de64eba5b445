//! Redis is an optimisation, never a dependency; Postgres down means
//! UNAVAILABLE and recovery when it returns.

use std::time::Duration;

use fred::prelude::*;
use taskgate_proto::task::v1::{ListTasksRequest, Task};
use taskgate_test_support::{PrivatePostgres, PrivateRedis};
use tonic::Code;

use crate::helpers::{RedisProxy, assert_code, eventually, spawn_app_on};

#[tokio::test]
async fn with_redis_stopped_every_rpc_still_works_and_the_cache_comes_back_never_stale() {
    let mut redis = PrivateRedis::start();
    let app = spawn_app_on(taskgate_test_support::fresh_database().await, redis.url()).await;
    let user = app.user().await;
    let first = app.create(&user, "before the outage").await;
    app.first_page(&user, 0).await;
    let hits = app.metrics.cache_hits();
    app.first_page(&user, 0).await;
    assert_eq!(app.metrics.cache_hits(), hits + 1, "the cache is warm");

    let outages = app.metrics.cache_outages();
    redis.stop();
    // Every RPC keeps answering, straight from Postgres.
    let during = app.create(&user, "during the outage").await;
    let titles: Vec<_> = app.first_page(&user, 0).await.into_iter().map(|t| t.title).collect();
    assert_eq!(titles, ["during the outage", "before the outage"]);
    let renamed = Task { id: first.id.clone(), title: "renamed during the outage".into(), ..Default::default() };
    app.update(&user, renamed, Some(&["title"])).await.expect("update without redis");
    assert_eq!(app.get(&user, &first.id).await.expect("get without redis").title, "renamed during the outage");
    let doomed = app.create(&user, "deleted during the outage").await;
    app.delete(&user, &doomed.id).await.expect("delete without redis");
    let expected = ["during the outage", "renamed during the outage"];
    let titles: Vec<_> = app.first_page(&user, 0).await.into_iter().map(|t| t.title).collect();
    assert_eq!(titles, expected);
    assert!(app.metrics.cache_bypasses() > 0, "reads went around the cache");
    for _ in 0..20 {
        app.first_page(&user, 0).await;
    }
    // The outage was noticed (and logged) once, not once per request.
    assert_eq!(app.metrics.cache_outages(), outages + 1);

    redis.restart();
    // The restarted Redis is empty: sessions are refused (never accepted
    // unchecked) until the auth service rebuilds their mirror from Postgres,
    // about a second.
    let marker = taskgate_common::keys::global_key(&app.redis_prefix, "sessions:mirror");
    let rebuilt = eventually(Duration::from_secs(10), || async {
        let redis = app.redis().await;
        let state: Option<String> = redis.get(&marker).await.unwrap_or(None);
        let _ = redis.quit().await;
        state.as_deref() == Some("complete")
    })
    .await;
    assert!(rebuilt, "the session mirror was not rebuilt");
    // The cache is used again by itself, and what it serves reflects every
    // write made while it was away.
    let hits = app.metrics.cache_hits();
    let recovered = eventually(Duration::from_secs(15), || async {
        let titles: Vec<_> = app.first_page(&user, 0).await.into_iter().map(|t| t.title).collect();
        assert_eq!(titles, expected, "never stale, not even while recovering");
        app.metrics.cache_hits() > hits
    })
    .await;
    assert!(recovered, "the cache did not come back");
    let _ = during;
}

#[tokio::test]
async fn a_write_that_cannot_reach_redis_never_lets_an_older_cached_list_be_served() {
    // A partition: the service cannot reach Redis, but Redis keeps its data,
    // including the entry filled before the write. The write cannot bump the
    // user's version, so that entry must never be served again.
    let redis_url = taskgate_test_support::redis_url();
    let proxy = RedisProxy::start(redis_url.trim_start_matches("redis://").trim_end_matches('/').to_owned()).await;
    let app = spawn_app_on(taskgate_test_support::fresh_database().await, proxy.url.clone()).await;
    let user = app.user().await;
    app.create(&user, "old").await;
    assert_eq!(app.first_page(&user, 0).await.len(), 1);
    let hits = app.metrics.cache_hits();
    assert_eq!(app.first_page(&user, 0).await.len(), 1);
    assert_eq!(app.metrics.cache_hits(), hits + 1, "cached");

    proxy.cut();
    let new = app.create(&user, "new").await;
    let ids: Vec<_> = app.first_page(&user, 0).await.into_iter().map(|t| t.id).collect();
    assert!(ids.contains(&new.id), "a read during the partition shows the write");

    proxy.restore();
    let hits = app.metrics.cache_hits();
    let recovered = eventually(Duration::from_secs(15), || async {
        let ids: Vec<_> = app.first_page(&user, 0).await.into_iter().map(|t| t.id).collect();
        assert!(ids.contains(&new.id), "the pre-partition entry was served: {ids:?}");
        app.metrics.cache_hits() > hits
    })
    .await;
    assert!(recovered, "the cache did not come back");
    for _ in 0..5 {
        assert_eq!(app.first_page(&user, 0).await.len(), 2);
    }
}

#[tokio::test]
async fn a_replica_that_cannot_reach_redis_gets_its_writes_seen_by_the_other_replicas_within_a_sweep() {
    // Replica A reaches Redis through a proxy that the test cuts; replica B
    // reaches it directly. A's write cannot bump the version in Redis, so it
    // records the miss in Postgres, and B's sweep changes the cache epoch.
    let redis_url = taskgate_test_support::redis_url();
    let proxy = RedisProxy::start(redis_url.trim_start_matches("redis://").trim_end_matches('/').to_owned()).await;
    let a = spawn_app_on(taskgate_test_support::fresh_database().await, proxy.url.clone()).await;
    let b = a.replica(redis_url).await;
    let user = a.user().await;
    a.create(&user, "old").await;
    assert_eq!(b.first_page(&user, 0).await.len(), 1);
    let hits = b.metrics.cache_hits();
    assert_eq!(b.first_page(&user, 0).await.len(), 1);
    assert_eq!(b.metrics.cache_hits(), hits + 1, "b serves the list from the cache");

    proxy.cut();
    let new = a.create(&user, "new").await;
    let written = tokio::time::Instant::now();
    let seen =
        eventually(Duration::from_secs(5), || async { b.first_page(&user, 0).await.iter().any(|t| t.id == new.id) })
            .await;
    assert!(seen, "replica b never saw replica a's write");
    let took = written.elapsed();
    assert!(took < Duration::from_secs(3), "b saw the write only after {took:?}");
    // From then on, b's cache is correct and in use.
    let hits = b.metrics.cache_hits();
    for _ in 0..3 {
        assert_eq!(b.first_page(&user, 0).await.len(), 2);
    }
    assert!(b.metrics.cache_hits() > hits);
    proxy.restore();
}

#[tokio::test]
async fn with_postgres_stopped_calls_are_unavailable_and_recover_when_it_returns() {
    let mut postgres = PrivatePostgres::start();
    let database_url = taskgate_test_support::fresh_database_on(&postgres.admin_url()).await;
    let app = spawn_app_on(database_url, taskgate_test_support::redis_url()).await;
    let user = app.user().await;
    let task = app.create(&user, "stored").await;

    let outages = app.metrics.database_outages();
    postgres.stop();
    let status = assert_code(app.get(&user, &task.id).await, Code::Unavailable);
    assert_eq!(status.message(), "database unavailable");
    assert_code(app.try_create(&user, Task { title: "lost".into(), ..Default::default() }).await, Code::Unavailable);
    assert_code(app.delete(&user, &task.id).await, Code::Unavailable);
    let filtered = ListTasksRequest { status: taskgate_proto::task::v1::TaskStatus::Done as i32, ..Default::default() };
    assert_code(app.list(&user, filtered).await, Code::Unavailable);
    assert_eq!(app.metrics.database_outages(), outages + 1, "noticed and logged once, not per request");

    postgres.restart();
    let back = eventually(Duration::from_secs(30), || async { app.get(&user, &task.id).await.is_ok() }).await;
    assert!(back, "the service did not recover after postgres returned");
    let after = app.create(&user, "after").await;
    let ids: Vec<_> = app.first_page(&user, 0).await.into_iter().map(|t| t.id).collect();
    assert_eq!(ids, [after.id, task.id]);
}
