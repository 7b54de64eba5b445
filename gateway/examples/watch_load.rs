//! WatchTasks under load: 1,000 open streams on one gateway replica.
//!
//! Starts the whole stack in-process on 127.0.0.1 (auth service, task
//! service, one gateway with the rate limit out of the way) against the
//! Postgres and Redis named by `TASKGATE_TEST_DATABASE_URL` and
//! `TASKGATE_TEST_REDIS_URL`, signs in USERS users and opens STREAMS native
//! gRPC WatchTasks streams through the gateway, spread evenly over the users
//! and over 10 client connections (the gateway allows 100 streams per
//! HTTP/2 connection). Then it prints:
//!
//! - **memory**: the process's resident set before and after opening the
//!   streams (idle), per stream. Gateway, task service and client share the
//!   process, so this is an upper bound for the gateway's own cost;
//! - **delivery latency**: for WRITES CreateTask calls (one at a time, to
//!   users in turn) through the gateway, the time from the call's answer to
//!   each of that user's watchers receiving the event (p50, p99, max);
//! - **throughput cost**: ListTasks requests/s through the gateway (native
//!   gRPC, 32 in flight, 3,000 requests) with no stream open and with all of
//!   them open.
//!
//! ```text
//! cargo run --release -p gateway --example watch_load -- [STREAMS] [USERS] [WRITES] [direct]
//! ```
//!
//! With `direct` the streams and requests go to the task service itself;
//! the memory per stream of a gateway run minus that of a direct run is the
//! gateway's own cost per stream.
//!
//! Defaults: 1000 streams, 100 users (10 streams each; the per-user limit is
//! raised to match), 300 writes. Bounded in time: every wait has a timeout.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use taskgate_proto::{
    auth::v1::{LoginRequest, RegisterRequest, auth_service_client::AuthServiceClient},
    task::v1::{
        CreateTaskRequest, ListTasksRequest, Task, TaskEventType, WatchTasksRequest,
        task_service_client::TaskServiceClient,
    },
};
use tonic::{Request, transport::Channel};

/// Client connections the streams are spread over.
const CONNECTIONS: usize = 10;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let streams: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1000);
    let users: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(100).max(1);
    let writes: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(300);
    // `direct` opens the streams on the task service itself, bypassing the
    // gateway: the difference between two runs is the gateway's own share.
    let direct = args.next().as_deref() == Some("direct");
    let per_user = streams.div_ceil(users);

    let stack = start(u32::try_from(per_user)?).await?;
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(channel(&format!("http://{}", if direct { stack.task } else { stack.gateway })).await?);
    }
    let target = if direct { "task service directly" } else { "gateway" };
    println!(
        "taskgate watch_load: {streams} streams through the {target}, {users} users ({per_user} each), {writes} writes"
    );
    let mut tokens = Vec::new();
    // Users sign in through the gateway whatever the target.
    let mut auth = AuthServiceClient::new(channel(&format!("http://{}", stack.gateway)).await?);
    for i in 0..users {
        tokens.push(sign_in(&mut auth, i).await?);
    }

    let before = rss_kib();
    let idle = list_throughput(channels[0].clone(), &tokens[0]).await;
    println!("ListTasks, no stream open:               {idle:>8.0} req/s");

    // Receipt times of events, by task id.
    let received: Arc<Mutex<Vec<(String, Instant)>>> = Arc::new(Mutex::new(Vec::with_capacity(writes * per_user)));
    let mut open = 0;
    for i in 0..streams {
        let token = &tokens[i % users];
        let mut client = TaskServiceClient::new(channels[i % CONNECTIONS].clone());
        let mut stream = client.watch_tasks(authed(token, WatchTasksRequest { since: 0 })?).await?.into_inner();
        let received = received.clone();
        tokio::spawn(async move {
            while let Ok(Some(event)) = stream.message().await {
                if event.r#type == TaskEventType::Created as i32
                    && let Some(task) = event.task
                {
                    let at = Instant::now();
                    if let Ok(mut r) = received.lock() {
                        r.push((task.id, at));
                    }
                }
            }
        });
        open += 1;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib();
    println!(
        "memory: {} KiB before, {} KiB with {open} idle streams: {:.1} KiB per stream (gateway + task service + client)",
        before,
        after,
        (after.saturating_sub(before)) as f64 / open as f64
    );

    // Requests go over a connection of their own: each stream connection is
    // at the gateway's 100 streams per connection.
    let work = channel(&format!("http://{}", if direct { stack.task } else { stack.gateway })).await?;
    let busy = list_throughput(work.clone(), &tokens[0]).await;
    println!("ListTasks, {open} streams open:           {busy:>8.0} req/s ({:+.1}%)", (busy / idle - 1.0) * 100.0);

    let mut writer = TaskServiceClient::new(work);
    let mut acks = Vec::with_capacity(writes);
    for i in 0..writes {
        let token = &tokens[i % users];
        let request = CreateTaskRequest {
            task: Some(Task { title: format!("w{i}"), ..Default::default() }),
            ..Default::default()
        };
        let task = writer.create_task(authed(token, request)?).await?.into_inner().task.unwrap_or_default();
        acks.push((task.id, Instant::now()));
    }
    let expected = writes * per_user;
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.lock().map(|r| r.len()).unwrap_or(0) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let received = received.lock().map(|r| r.clone()).unwrap_or_default();
    let acked: std::collections::HashMap<String, Instant> = acks.into_iter().collect();
    let mut latencies: Vec<f64> = received
        .iter()
        .filter_map(|(id, at)| {
            let ack = acked.get(id)?;
            // An event may arrive before the writer has read its answer: 0.
            Some(at.saturating_duration_since(*ack).as_secs_f64() * 1000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "delivery (ack -> event): {} of {expected} events, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        pct(0.50),
        pct(0.99),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}

/// `message` with `token` as its bearer token.
fn authed<T>(token: &str, message: T) -> anyhow::Result<Request<T>> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

/// A connected HTTP/2 channel.
async fn channel(url: &str) -> anyhow::Result<Channel> {
    Ok(tonic::transport::Endpoint::from_shared(url.to_owned())?.tcp_nodelay(true).connect().await?)
}

/// Registers and signs in user `i`; returns the access token.
async fn sign_in(auth: &mut AuthServiceClient<Channel>, i: usize) -> anyhow::Result<String> {
    let username = format!("watch{i}x{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let password = "correct horse battery staple".to_owned();
    auth.register(RegisterRequest {
        username: Some(username.clone()),
        password: password.clone(),
        ..Default::default()
    })
    .await?;
    let tokens =
        auth.login(LoginRequest { login: username, password, ..Default::default() }).await?.into_inner().tokens;
    tokens.map(|t| t.access_token).ok_or_else(|| anyhow::anyhow!("login returned no tokens"))
}

/// ListTasks requests per second through the gateway: 3,000 requests, 32 in flight.
async fn list_throughput(channel: Channel, token: &str) -> f64 {
    let (requests, concurrency) = (3000usize, 32usize);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (mut client, next, token) = (TaskServiceClient::new(channel.clone()), next.clone(), token.to_owned());
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < requests {
                if let Ok(request) = authed(&token, ListTasksRequest::default()) {
                    let _ = client.list_tasks(request).await;
                }
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
    requests as f64 / started.elapsed().as_secs_f64()
}

/// The process's resident set size in KiB (Linux).
fn rss_kib() -> u64 {
    taskgate_common::memory::proc_status_kib("self", "VmRSS").unwrap_or(0)
}

/// The in-process system under test.
struct Stack {
    gateway: std::net::SocketAddr,
    /// The task service's own port.
    task: std::net::SocketAddr,
}

async fn start(per_user: u32) -> anyhow::Result<Stack> {
    let database_url = taskgate_test_support::fresh_database().await;
    let redis_url = taskgate_test_support::redis_url();
    let prefix = taskgate_test_support::unique_prefix();
    let auth = auth_service::Application::build(auth_service::Settings::for_tests(
        database_url.clone(),
        redis_url.clone(),
        prefix.clone(),
    ))
    .await?;
    let auth_url = format!("http://{}", auth.local_addr());
    tokio::spawn(auth.run_until_stopped(std::future::pending()));
    let mut task_settings =
        task_service::Settings::for_tests(database_url, redis_url.clone(), prefix.clone(), auth_url.clone());
    task_settings.watch_max_streams_per_user = per_user.max(1);
    let task = task_service::Application::build(task_settings).await?;
    let task_addr = task.local_addr();
    tokio::spawn(task.run_until_stopped(std::future::pending()));
    let mut settings = gateway::Settings::for_tests(auth_url, format!("http://{task_addr}"), redis_url, prefix);
    // One client address opens every stream and sends every request.
    settings.rate_limit_per_minute = u32::MAX;
    settings.rate_limit_per_address_per_minute = u32::MAX;
    let gateway = gateway::Application::build(settings).await?;
    let gateway_addr = gateway.local_addr();
    tokio::spawn(gateway.run_until_stopped(std::future::pending()));
    Ok(Stack { gateway: gateway_addr, task: task_addr })
}
