//! The list cache is invisible except in speed: reads after a write see it,
//! even under heavy concurrency, and a cold list costs one query however many
//! readers ask at once.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use task_service::cache::{CachedPage, ListCache, Lookup, Shape};
use taskgate_proto::task::v1::{CreateTaskRequest, DeleteTaskRequest, ListTasksRequest, Task, UpdateTaskRequest};

use crate::helpers::{authed, spawn_app, spawn_app_with};

#[tokio::test]
async fn a_repeated_read_is_served_from_the_cache_and_every_write_shows_at_once() {
    let app = spawn_app().await;
    let user = app.user().await;
    let a = app.create(&user, "a").await;
    app.create(&user, "b").await;
    assert_eq!(app.first_page(&user, 0).await.len(), 2);
    let queries = app.metrics.list_queries();
    let hits = app.metrics.cache_hits();
    assert_eq!(app.first_page(&user, 0).await.len(), 2);
    assert_eq!(app.first_page(&user, 1).await.len(), 1, "any first page is cut from the cached one");
    assert_eq!(app.metrics.list_queries(), queries, "served without Postgres");
    assert_eq!(app.metrics.cache_hits(), hits + 2);

    let c = app.create(&user, "c").await;
    assert_eq!(app.first_page(&user, 0).await[0].id, c.id, "a create shows at once");
    let renamed = Task { id: a.id.clone(), title: "a2".into(), ..Default::default() };
    app.update(&user, renamed, Some(&["title"])).await.expect("update");
    assert!(app.first_page(&user, 0).await.iter().any(|t| t.title == "a2"), "an update shows at once");
    app.delete(&user, &c.id).await.expect("delete");
    assert!(app.first_page(&user, 0).await.iter().all(|t| t.id != c.id), "a delete shows at once");
}

#[tokio::test]
async fn the_fill_of_a_reader_that_loaded_before_a_write_is_refused() {
    let app = spawn_app().await;
    let owner = uuid::Uuid::new_v4();
    let redis = fred::prelude::Builder::from_config(fred::prelude::Config::from_url(&app.redis_url).expect("url"))
        .build_pool(1)
        .expect("pool");
    fred::prelude::ClientLike::init(&redis).await.expect("connect");
    // The reader's session is live: its key exists (the auth service's mirror).
    let session = taskgate_tokens::session_key(&app.redis_prefix, &owner.to_string(), "s1");
    let _: () = fred::prelude::KeysInterface::set(&redis, &session, "1", None, None, false).await.expect("a session");
    let redis = taskgate_common::redis::RedisHandle::new(redis);
    let cache = ListCache::new(redis, app.redis_prefix.clone(), Duration::from_secs(60), 100, Default::default());
    assert!(cache.settle().await);
    let shape = Shape::for_page(None, 50);
    let lookup = || {
        let (cache, session) = (&cache, session.clone());
        async move {
            let (lookup, live) = cache.lookup(owner, shape, session).await;
            assert_eq!(live, Some(Ok(true)), "the read checked the session");
            lookup
        }
    };

    // A reader misses and (in real life) queries Postgres...
    let Lookup::Miss(stamp) = lookup().await else { panic!("expected a miss") };
    // ...a write commits and bumps the version...
    let change = task_service::cache::Change { kind: "deleted", data: serde_json::json!({ "id": owner }).to_string() };
    assert!(cache.publish(owner, &change).await.is_some());
    // ...and the reader's old list must not land in the cache.
    let stale = CachedPage { stamp, tasks: Vec::new(), more: false };
    assert!(!cache.fill(owner, shape, &stale).await, "a fill under an old version is refused");
    let Lookup::Miss(current) = lookup().await else { panic!("expected a miss") };
    assert_ne!(current, stamp);
    let fresh = CachedPage { stamp: current, tasks: Vec::new(), more: false };
    assert!(cache.fill(owner, shape, &fresh).await, "a fill under the current version is stored");
    assert!(matches!(lookup().await, Lookup::Hit(page) if page == fresh));

    // The same read for a session that ended reads nothing, in the same round trip.
    let ended = taskgate_tokens::session_key(&app.redis_prefix, &owner.to_string(), "s2");
    let (read, live) = cache.lookup(owner, shape, ended).await;
    assert!(matches!(read, Lookup::SessionEnded), "an ended session's read returned the list");
    assert_eq!(live, Some(Ok(false)));
}

/// What every read must reflect: the writes acknowledged before it started.
#[derive(Clone, Default)]
struct Acknowledged {
    /// Live tasks and the highest title revision acknowledged for each.
    live: HashMap<String, u32>,
    /// Deleted tasks.
    deleted: HashSet<String>,
    /// Tasks whose delete has been sent (acknowledged or not): a read may
    /// already miss them.
    deleting: HashSet<String>,
}

fn revision(title: &str) -> u32 {
    title.rsplit_once('r').and_then(|(_, n)| n.parse().ok()).expect("title ends with r<revision>")
}

#[tokio::test]
async fn reads_reflect_every_write_acknowledged_before_they_started_under_concurrency() {
    const WRITERS: usize = 6;
    const TASKS_PER_WRITER: usize = 8;
    const UPDATES_PER_TASK: u32 = 3;
    const READERS: usize = 6;

    // Loads wait 5 ms before filling the cache, so writes regularly land
    // between a reader's load and its fill: the race the cache must close.
    let app = spawn_app_with(taskgate_test_support::fresh_database().await, taskgate_test_support::redis_url(), |s| {
        s.cache_fill_delay = Duration::from_millis(5)
    })
    .await;
    let user = app.user().await;
    let acked = Arc::new(Mutex::new(Acknowledged::default()));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut client = app.new_client().await;
        let token = user.token.clone();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for t in 0..TASKS_PER_WRITER {
                let task = Task { title: format!("w{w}t{t}r0"), ..Default::default() };
                let created = client
                    .create_task(authed(&token, CreateTaskRequest { task: Some(task), ..Default::default() }))
                    .await
                    .expect("create")
                    .into_inner()
                    .task
                    .expect("task");
                acked.lock().expect("lock").live.insert(created.id.clone(), 0);
                for r in 1..=UPDATES_PER_TASK {
                    let task = Task { id: created.id.clone(), title: format!("w{w}t{t}r{r}"), ..Default::default() };
                    let mask = prost_types::FieldMask { paths: vec!["title".into()] };
                    client
                        .update_task(authed(&token, UpdateTaskRequest { task: Some(task), update_mask: Some(mask) }))
                        .await
                        .expect("update");
                    acked.lock().expect("lock").live.insert(created.id.clone(), r);
                }
                if t % 2 == 0 {
                    acked.lock().expect("lock").deleting.insert(created.id.clone());
                    client
                        .delete_task(authed(&token, DeleteTaskRequest { id: created.id.clone(), ..Default::default() }))
                        .await
                        .expect("delete");
                    let mut acked = acked.lock().expect("lock");
                    acked.live.remove(&created.id);
                    acked.deleted.insert(created.id);
                }
            }
        }));
    }

    let mut readers = Vec::new();
    for _ in 0..READERS {
        let mut client = app.new_client().await;
        let token = user.token.clone();
        let acked = acked.clone();
        let done = done.clone();
        readers.push(tokio::spawn(async move {
            let mut reads = 0;
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                // Everything acknowledged before the read starts.
                let expected = acked.lock().expect("lock").clone();
                let page = client
                    .list_tasks(authed(&token, ListTasksRequest { page_size: 500, ..Default::default() }))
                    .await
                    .expect("list")
                    .into_inner();
                reads += 1;
                let deleting = acked.lock().expect("lock").deleting.clone();
                let listed: HashMap<&str, u32> =
                    page.tasks.iter().map(|t| (t.id.as_str(), revision(&t.title))).collect();
                for (id, revision) in &expected.live {
                    let seen = listed.get(id.as_str()).copied();
                    if seen.is_none() && deleting.contains(id) {
                        // Deleted while this read ran: allowed.
                        continue;
                    }
                    assert!(
                        seen.is_some(),
                        "read {reads}: acknowledged task {id} is missing from {} listed: {:?}",
                        listed.len(),
                        page.tasks.iter().map(|t| &t.title).collect::<Vec<_>>()
                    );
                    assert!(
                        seen >= Some(*revision),
                        "read {reads}: task {id} at r{seen:?}, r{revision} was acknowledged"
                    );
                }
                for id in &expected.deleted {
                    assert!(!listed.contains_key(id.as_str()), "read {reads}: deleted task {id} is still listed");
                }
                if finished {
                    return reads;
                }
            }
        }));
    }

    for writer in writers {
        writer.await.expect("writer");
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut reads = 0;
    for reader in readers {
        reads += reader.await.expect("reader");
    }
    assert!(reads >= READERS * 5, "readers ran alongside the writers ({reads} reads)");
    assert!(app.metrics.cache_hits() > 0 || app.metrics.cache_misses() > 0, "reads went through the cache");

    // And at rest, the list is exactly what was acknowledged.
    let expected = acked.lock().expect("lock").clone();
    let listed = app.first_page(&user, 500).await;
    assert_eq!(listed.len(), expected.live.len());
    for task in listed {
        assert_eq!(Some(&revision(&task.title)), expected.live.get(&task.id));
    }
}

#[tokio::test]
async fn a_miss_storm_on_a_cold_list_costs_one_postgres_query() {
    let app = spawn_app().await;
    let user = app.user().await;
    app.insert_tasks(user.id, 200, "t").await;
    let before = app.metrics.list_queries();
    let mut readers = Vec::new();
    for _ in 0..64 {
        let mut client = app.client.clone();
        let token = user.token.clone();
        readers.push(tokio::spawn(async move {
            client
                .list_tasks(authed(&token, ListTasksRequest { page_size: 20, ..Default::default() }))
                .await
                .expect("list")
                .into_inner()
                .tasks
                .len()
        }));
    }
    for reader in readers {
        assert_eq!(reader.await.expect("reader"), 20);
    }
    assert_eq!(app.metrics.list_queries() - before, 1, "64 cold readers, one query");
}

#[tokio::test]
async fn a_write_whose_caller_gives_up_after_the_commit_still_shows_in_the_list() {
    // The service pauses between commit and invalidation; the client's
    // deadline ends inside that pause, so the server drops the call there.
    let app = spawn_app_with(taskgate_test_support::fresh_database().await, taskgate_test_support::redis_url(), |s| {
        s.cache_invalidate_delay = Duration::from_millis(400)
    })
    .await;
    let user = app.user().await;
    app.create(&user, "first").await;
    assert_eq!(app.first_page(&user, 0).await.len(), 1);
    assert_eq!(app.first_page(&user, 0).await.len(), 1, "cached");

    let task = Task { title: "abandoned".into(), ..Default::default() };
    let mut request = authed(&user.token, CreateTaskRequest { task: Some(task), ..Default::default() });
    request.set_timeout(Duration::from_millis(150));
    let status = app.client.clone().create_task(request).await.expect_err("the deadline ends first");
    assert!(matches!(status.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled), "{status:?}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(app.count_tasks(user.id).await, 2, "the write committed");
    let titles: Vec<_> = app.first_page(&user, 0).await.into_iter().map(|t| t.title).collect();
    assert_eq!(titles, ["abandoned", "first"], "and the cache does not hide it");
}

#[tokio::test]
async fn a_list_too_large_for_the_cache_is_read_from_postgres_and_never_stored() {
    let limit = 4096;
    let app = spawn_app_with(taskgate_test_support::fresh_database().await, taskgate_test_support::redis_url(), |s| {
        s.cache_max_entry_bytes = limit;
    })
    .await;
    let user = app.user().await;
    // 30 tasks of 1,000-character descriptions: about 30 KB of JSON a page.
    for i in 0..30 {
        let task = Task { title: format!("long {i}"), description: "d".repeat(1000), ..Default::default() };
        app.try_create(&user, task).await.expect("create");
    }
    let queries = app.metrics.list_queries();
    let hits = app.metrics.cache_hits();
    for _ in 0..2 {
        let page = app.first_page(&user, 0).await;
        assert_eq!(page.len(), 30, "the list is whole");
        assert_eq!(page[0].description.len(), 1000);
        // Past the second a finished load is shared with readers of its stamp.
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    assert_eq!(app.metrics.list_queries(), queries + 2, "every read goes to Postgres");
    assert_eq!(app.metrics.cache_hits(), hits, "nothing was served from the cache");
    let pages = taskgate_common::keys::user_key(&app.redis_prefix, user.id, "tasks:pages");
    let redis = app.redis().await;
    let stored: u64 = fred::interfaces::HashesInterface::hlen(&redis, &pages).await.expect("HLEN");
    assert_eq!(stored, 0, "no page of the user was stored");

    // Another user's small list is cached as before.
    let small = app.user().await;
    app.create(&small, "short").await;
    app.first_page(&small, 0).await;
    let hits = app.metrics.cache_hits();
    app.first_page(&small, 0).await;
    assert_eq!(app.metrics.cache_hits(), hits + 1, "a small list is still cached");
}

/// Watches every command the Redis at `url` receives from its clients
/// (`MONITOR` on a connection of its own; commands a script runs are told
/// apart and left out) until the returned closure is called, which answers
/// them by name.
fn watch_commands(url: &str) -> impl FnOnce() -> HashMap<String, u64> + use<> {
    use std::io::{BufRead as _, BufReader, Write as _};
    let addr = url.trim_start_matches("redis://").split('/').next().expect("an address").to_owned();
    let mut stream = std::net::TcpStream::connect(&addr).expect("connecting to redis");
    stream.write_all(b"MONITOR\r\n").expect("sending MONITOR");
    let mut reader = BufReader::new(stream.try_clone().expect("a second handle"));
    let mut ok = String::new();
    reader.read_line(&mut ok).expect("MONITOR attached");
    assert_eq!(ok.trim(), "+OK");
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let lines = std::thread::spawn(move || {
        stream.set_read_timeout(Some(Duration::from_millis(100))).expect("a read timeout");
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => lines.push(line),
                // Quiet for a moment: stop once asked to.
                Err(_) if stopped.try_recv().is_ok() => break,
                Err(_) => {}
            }
        }
        lines
    });
    move || {
        let _ = stop.send(());
        let lines = lines.join().expect("the monitor");
        let mut calls = HashMap::new();
        // `+1700000000.123456 [0 127.0.0.1:50000] "evalsha" ...`; a script's own calls say `[0 lua]`.
        for line in lines.iter().filter(|l| !l.contains(" lua]")) {
            if let Some(name) = line.split('"').nth(1) {
                *calls.entry(name.to_ascii_lowercase()).or_insert(0) += 1;
            }
        }
        calls
    }
}

/// `SCRIPT FLUSH` on the Redis at `url`: it forgets every cached script.
fn script_flush(url: &str) {
    use std::io::{BufRead as _, BufReader, Write as _};
    let addr = url.trim_start_matches("redis://").split('/').next().expect("an address").to_owned();
    let mut stream = std::net::TcpStream::connect(&addr).expect("connecting to redis");
    stream.write_all(b"SCRIPT FLUSH\r\n").expect("sending SCRIPT FLUSH");
    let mut ok = String::new();
    BufReader::new(stream).read_line(&mut ok).expect("an answer");
    assert_eq!(ok.trim(), "+OK");
}

#[tokio::test]
async fn a_cached_first_page_costs_one_redis_command_and_an_ended_session_reads_nothing() {
    let redis = taskgate_test_support::PrivateRedis::start();
    let app = crate::helpers::spawn_app_on(taskgate_test_support::fresh_database().await, redis.url()).await;
    let user = app.user().await;
    app.create(&user, "a").await;
    assert_eq!(app.first_page(&user, 0).await.len(), 1, "warms the cache");

    const READS: u64 = 200;
    let hits = app.metrics.cache_hits();
    let stop = watch_commands(&redis.url());
    for _ in 0..READS {
        assert_eq!(app.first_page(&user, 0).await.len(), 1);
    }
    let calls = tokio::task::spawn_blocking(stop).await.expect("the monitor");
    assert_eq!(app.metrics.cache_hits() - hits, READS, "every read was a cache hit");
    let count = |name: &str| calls.get(name).copied().unwrap_or(0);
    // One script per read, which checks the session too, and no separate
    // EXISTS; the auth service's background work (its mirror check, once a
    // second) adds a few commands.
    let scripts = count("eval") + count("evalsha");
    assert!((READS..READS + 20).contains(&scripts), "{scripts} scripts for {READS} reads: {calls:?}");
    assert!(count("evalsha") >= READS, "each read sends the script's hash, not its text: {calls:?}");
    assert!(count("exists") < 20, "a separate session check per read: {calls:?}");
    let total: u64 = calls.values().sum();
    assert!(total < READS + 40, "{total} commands for {READS} reads: {calls:?}");

    // A Redis that forgot its scripts (restarted, SCRIPT FLUSH) answers the hash with NOSCRIPT:
    // that read sends the text once and is still served from the cache; the next send the hash.
    script_flush(&redis.url());
    let hits = app.metrics.cache_hits();
    let stop = watch_commands(&redis.url());
    for _ in 0..3 {
        assert_eq!(app.first_page(&user, 0).await.len(), 1);
    }
    let calls = tokio::task::spawn_blocking(stop).await.expect("the monitor");
    let count = |name: &str| calls.get(name).copied().unwrap_or(0);
    assert_eq!(app.metrics.cache_hits() - hits, 3, "every read was a cache hit: {calls:?}");
    assert!((1..=3).contains(&count("eval")), "the text is sent again after NOSCRIPT, once: {calls:?}");
    assert!(count("evalsha") >= 3, "{calls:?}");

    // Logout ends the session: the next read, a cache hit before, reads nothing.
    let logout = taskgate_proto::auth::v1::LogoutRequest::default();
    app.auth().logout(authed(&user.token, logout)).await.expect("logout");
    let refused = app.list(&user, ListTasksRequest::default()).await.expect_err("a read after logout");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
}
