//! Capacity measurement: CPU per call, per service, for each main call, and the Redis commands and
//! Postgres transactions each call costs; the figures behind docs/capacity.md.
//!
//! Starts the three release binaries (`cargo build --release -p auth-service -p task-service -p
//! gateway` first) as separate processes on free loopback ports, against the PostgreSQL and Redis
//! named by `TASKGATE_TEST_DATABASE_URL` and `TASKGATE_TEST_REDIS_URL` (a fresh database, a fresh
//! key prefix), then drives each call through the gateway over native gRPC with CONCURRENCY in
//! flight and reads, before and after, each process's CPU time (`/proc/<pid>/stat`), Redis'
//! `INFO commandstats` and Postgres' `pg_stat_database.xact_commit`.
//!
//! ```text
//! cargo run --release -p fleet-tests --example capacity -- [REQUESTS] [CONCURRENCY]
//! ```
//!
//! `TASKGATE_BIN_DIR` points at another build's binaries (default `target/release`).
//!
//! Requests per second per core of a service = requests / CPU seconds that service used. Bounded:
//! REQUESTS per call (default 3000; a tenth for Login, which hashes) against 127.0.0.1 only.

use std::{
    collections::BTreeMap,
    future::Future,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use fleet_tests::processes::{Process, Stack};

use futures::StreamExt as _;
use sqlx::{Connection as _, PgConnection};
use taskgate_proto::{
    auth::v1::{GetMeRequest, LoginRequest, auth_service_client::AuthServiceClient},
    task::v1::{CreateTaskRequest, GetTaskRequest, ListTasksRequest, Task, task_service_client::TaskServiceClient},
};
use taskgate_test_support::{PASSWORD, bearer};

/// Users the load is spread over (each call is made as one of them).
const USERS: usize = 20;

/// Redis' per-command call counts.
fn redis_commandstats(port: &str) -> BTreeMap<String, u64> {
    let out = Command::new("redis-cli").args(["-p", port, "info", "commandstats"]).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?.parse().ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// Committed Postgres transactions in `database` so far.
async fn pg_commits(conn: &mut PgConnection) -> i64 {
    sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        .fetch_one(conn)
        .await
        .unwrap_or(0)
}

/// Runs `requests` calls of `call(i)` with `concurrency` in flight; returns (wall time, errors).
async fn drive<F, Fut>(requests: usize, concurrency: usize, call: F) -> (Duration, usize)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    let failures = futures::stream::iter((0..requests).map(call))
        .buffer_unordered(concurrency)
        .filter(|ok| futures::future::ready(!ok))
        .count()
        .await;
    (started.elapsed(), failures)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (requests, concurrency) = taskgate_test_support::load::requests_and_concurrency(3000)?;
    let database_url = taskgate_test_support::fresh_database().await;
    let redis_url = taskgate_test_support::redis_url();
    let redis_port = redis_url.rsplit(':').next().unwrap_or("6379").trim_end_matches('/').to_owned();
    let Stack { processes, gateway: gateway_addr, .. } = Stack::start(&database_url, &redis_url)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("idle RSS (MiB):");
    for p in &processes {
        println!("  {:<14} {:>6.1}", p.name, p.rss_mib().0);
    }

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{gateway_addr}"))?.connect().await?;
    let auth = AuthServiceClient::new(channel.clone());
    let task = TaskServiceClient::new(channel.clone());
    let mut tokens = Vec::new();
    let mut task_ids = Vec::new();
    let mut names = Vec::new();
    for u in 0..USERS {
        let name = format!("cap{u}{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let (_, pair) = taskgate_test_support::register_and_login(&auth, &name).await;
        for t in 0..10 {
            let created = task
                .clone()
                .create_task(bearer(
                    CreateTaskRequest {
                        task: Some(Task { title: format!("task {t}"), ..Default::default() }),
                        ..Default::default()
                    },
                    &pair.access_token,
                ))
                .await?;
            if t == 0 {
                task_ids.push(created.into_inner().task.map(|t| t.id).unwrap_or_default());
            }
        }
        tokens.push(pair.access_token);
        names.push(name);
    }
    let tokens = Arc::new(tokens);
    let (task_ids, names) = (Arc::new(task_ids), Arc::new(names));
    let mut pg = PgConnection::connect(&database_url).await?;

    println!(
        "\n{} requests per call ({} for Login), {concurrency} in flight, through the gateway over gRPC",
        requests,
        requests / 10
    );
    println!(
        "{:<12} {:>8} {:>6} | {:>22} | {:>22} | {:>22} | {:>9} {:>9}",
        "call",
        "req/s",
        "errors",
        "gateway CPU-ms, rps/core",
        "auth CPU-ms, rps/core",
        "task CPU-ms, rps/core",
        "redis/req",
        "pg tx/req"
    );
    type Call = Box<dyn Fn(usize) -> std::pin::Pin<Box<dyn Future<Output = bool> + Send>>>;
    let calls: Vec<(&str, usize, Call)> = vec![
        ("ListTasks", requests, {
            let (task, tokens) = (task.clone(), tokens.clone());
            Box::new(move |i| {
                let (mut task, token) = (task.clone(), tokens[i % USERS].clone());
                Box::pin(async move {
                    task.list_tasks(bearer(ListTasksRequest { page_size: 20, ..Default::default() }, &token))
                        .await
                        .is_ok()
                })
            })
        }),
        ("GetTask", requests, {
            let (task, tokens, ids) = (task.clone(), tokens.clone(), task_ids.clone());
            Box::new(move |i| {
                let (mut task, token, id) = (task.clone(), tokens[i % USERS].clone(), ids[i % USERS].clone());
                Box::pin(async move { task.get_task(bearer(GetTaskRequest { id }, &token)).await.is_ok() })
            })
        }),
        ("CreateTask", requests, {
            let (task, tokens) = (task.clone(), tokens.clone());
            Box::new(move |i| {
                let (mut task, token) = (task.clone(), tokens[i % USERS].clone());
                Box::pin(async move {
                    let create = CreateTaskRequest {
                        task: Some(Task { title: format!("load {i}"), ..Default::default() }),
                        ..Default::default()
                    };
                    task.create_task(bearer(create, &token)).await.is_ok()
                })
            })
        }),
        ("GetMe", requests, {
            let (auth, tokens) = (auth.clone(), tokens.clone());
            Box::new(move |i| {
                let (mut auth, token) = (auth.clone(), tokens[i % USERS].clone());
                Box::pin(async move { auth.get_me(bearer(GetMeRequest {}, &token)).await.is_ok() })
            })
        }),
        ("Login", requests / 10, {
            let (auth, names) = (auth.clone(), names.clone());
            Box::new(move |i| {
                let (mut auth, name) = (auth.clone(), names[i % USERS].clone());
                Box::pin(async move {
                    let result =
                        auth.login(LoginRequest { login: name, password: PASSWORD.into(), ..Default::default() }).await;
                    if let Err(status) = &result {
                        eprintln!("login: {:?} {}", status.code(), status.message());
                    }
                    result.is_ok()
                })
            })
        }),
    ];
    for (name, n, call) in calls {
        let cpu_before: Vec<f64> = processes.iter().map(Process::cpu_seconds).collect();
        let redis_before = redis_commandstats(&redis_port);
        let pg_before = pg_commits(&mut pg).await;
        let (took, errors) = drive(n, concurrency, &call).await;
        let cpu: Vec<f64> = processes.iter().zip(&cpu_before).map(|(p, b)| p.cpu_seconds() - b).collect();
        let redis_after = redis_commandstats(&redis_port);
        let pg_tx = (pg_commits(&mut pg).await - pg_before - 1) as f64 / n as f64;
        let redis_calls: u64 = redis_after.iter().map(|(k, v)| v - redis_before.get(k).copied().unwrap_or(0)).sum();
        let breakdown: Vec<String> = redis_after
            .iter()
            .filter_map(|(k, v)| {
                let d = v - redis_before.get(k).copied().unwrap_or(0);
                (d > 0 && k != "info").then(|| format!("{k} {:.2}", d as f64 / n as f64))
            })
            .collect();
        let cell = |cpu: f64| {
            let ms = cpu * 1000.0 / n as f64;
            if ms > 0.0 { format!("{ms:>8.3} ms {:>8.0}/s", 1000.0 / ms) } else { "-".to_owned() }
        };
        println!(
            "{name:<12} {:>8.0} {errors:>6} | {:>22} | {:>22} | {:>22} | {:>9.2} {:>9.2}   ({})",
            n as f64 / took.as_secs_f64(),
            cell(cpu[2]),
            cell(cpu[0]),
            cell(cpu[1]),
            redis_calls.saturating_sub(1) as f64 / n as f64,
            pg_tx,
            breakdown.join(", ")
        );
    }
    println!("\nRSS after the load, now / peak (MiB):");
    for p in &processes {
        let (now, peak) = p.rss_mib();
        println!("  {:<14} {now:>6.1} / {peak:>6.1}", p.name);
    }
    Ok(())
}
