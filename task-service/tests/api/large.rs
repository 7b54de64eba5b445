//! A user with 10,000 tasks: served page by page at a flat cost, with a
//! bounded cache.

use std::{collections::HashSet, time::Instant};

use fred::prelude::*;
use task_service::cache::CachedPage;
use taskgate_proto::task::v1::ListTasksRequest;

use crate::helpers::spawn_app;

#[tokio::test]
async fn ten_thousand_tasks_are_paged_through_at_a_flat_cost_with_a_bounded_cache() {
    let app = spawn_app().await;
    let user = app.user().await;
    app.insert_tasks(user.id, 10_000, "t").await;
    sqlx::query("ANALYZE tasks").execute(&app.db).await.expect("analyze");

    let mut seen = HashSet::new();
    let mut timings = Vec::new();
    let mut token = String::new();
    let mut previous: Option<String> = None;
    loop {
        let started = Instant::now();
        let page = app
            .list(&user, ListTasksRequest { page_size: 100, page_token: token, ..Default::default() })
            .await
            .expect("page");
        timings.push(started.elapsed());
        for task in &page.tasks {
            assert!(seen.insert(task.id.clone()), "duplicate {}", task.id);
            let n: u32 = task.title.trim_start_matches('t').parse().expect("numbered title");
            if let Some(prev) = &previous {
                let p: u32 = prev.trim_start_matches('t').parse().expect("numbered title");
                assert_eq!(p, n + 1, "newest first without gaps");
            }
            previous = Some(task.title.clone());
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 10_000);
    assert_eq!(timings.len(), 100);

    // Flat: the cursor is an index condition, so a deep page starts reading
    // right at the cursor instead of skipping the pages before it.
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN SELECT id, title, description, status, created_at, updated_at FROM tasks \
         WHERE owner_id = $1 AND (created_at, id) < ($2, $3) \
         ORDER BY created_at DESC, id DESC LIMIT $4",
    )
    .bind(user.id)
    .bind(chrono::Utc::now() - chrono::Duration::seconds(5))
    .bind(uuid::Uuid::max())
    .bind(101_i64)
    .fetch_all(&app.db)
    .await
    .expect("explain");
    let plan = plan.join("\n");
    assert!(plan.contains("tasks_owner_created") && plan.contains("Index Cond"), "{plan}");
    assert!(!plan.contains("Sort"), "no sort step: {plan}");

    // And measured: the deepest pages cost about what the first ones cost.
    // Generous bounds, as the machine is shared.
    let median = |mut v: Vec<std::time::Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let early = median(timings[1..11].to_vec());
    let late = median(timings[timings.len() - 10..].to_vec());
    println!("page latency: early median {early:?}, late median {late:?}");
    assert!(late < early * 10 + std::time::Duration::from_millis(100), "early {early:?}, late {late:?}");

    // The cache holds the newest 500 of them (the entry pages of 51 to 500
    // are cut from), not 10,000; and the default page's entry holds 50.
    app.first_page(&user, 0).await;
    let redis = app.redis().await;
    let entry: String = redis
        .hget(taskgate_common::keys::user_key(&app.redis_prefix, user.id, "tasks:pages"), "all:500")
        .await
        .expect("cached entry");
    let cached: CachedPage = serde_json::from_str(&entry).expect("entry json");
    assert_eq!(cached.tasks.len(), 500);
    assert!(cached.more);
    let entry: String = redis
        .hget(taskgate_common::keys::user_key(&app.redis_prefix, user.id, "tasks:pages"), "all:50")
        .await
        .expect("cached entry");
    let cached: CachedPage = serde_json::from_str(&entry).expect("entry json");
    assert_eq!(cached.tasks.len(), 50);
    let fields: Vec<String> =
        redis.hkeys(taskgate_common::keys::user_key(&app.redis_prefix, user.id, "tasks:pages")).await.expect("fields");
    assert_eq!(fields.len(), 2, "{fields:?}");
}
