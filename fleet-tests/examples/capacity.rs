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
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use sqlx::{Connection as _, PgConnection};
use taskgate_proto::{
    auth::v1::{GetMeRequest, LoginRequest, RegisterRequest, auth_service_client::AuthServiceClient},
    task::v1::{CreateTaskRequest, GetTaskRequest, ListTasksRequest, Task, task_service_client::TaskServiceClient},
};
use taskgate_test_support::{PASSWORD, bearer};

/// Users the load is spread over (each call is made as one of them).
const USERS: usize = 20;

/// A service process and where it listens.
struct Process {
    /// Its name.
    name: &'static str,
    /// The running binary.
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// CPU seconds (user + system) the process used so far.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the `(comm)`: state is 3rd, utime 14th, stime 15th (1-based, whole line).
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
        (ticks(11) + ticks(12)) / 100.0
    }

    /// Resident memory now and at its peak, in MiB.
    fn rss_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
                .unwrap_or(0.0)
                / 1024.0
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

/// Starts a release binary with `env`; waits until it accepts TCP on `addr`.
fn start(name: &'static str, addr: SocketAddr, env: &[(&str, String)]) -> anyhow::Result<Process> {
    // TASKGATE_BIN_DIR picks another build (target/debug, say); release is what the doc reports.
    let dir = std::env::var("TASKGATE_BIN_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release").to_owned());
    let binary = std::path::Path::new(&dir).join(name);
    let child = Command::new(&binary)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting {}: {e} (build it with --release first)", binary.display()))?;
    let process = Process { name, child };
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "{name} did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(process)
}

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
    let mut args = std::env::args().skip(1);
    let requests: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(3000);
    let concurrency: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(32);
    let database_url = taskgate_test_support::fresh_database().await;
    let redis_url = taskgate_test_support::redis_url();
    let redis_port = redis_url.rsplit(':').next().unwrap_or("6379").trim_end_matches('/').to_owned();
    let port = || devstack::free_port().map(|p| SocketAddr::from(([127, 0, 0, 1], p)));
    let (auth_addr, task_addr, gateway_addr) = (port()?, port()?, port()?);
    let common = vec![
        ("DATABASE_URL", database_url.clone()),
        ("REDIS_URL", redis_url.clone()),
        ("REDIS_PREFIX", taskgate_test_support::unique_prefix()),
        ("AUTH_LISTEN_ADDR", auth_addr.to_string()),
        ("TASK_LISTEN_ADDR", task_addr.to_string()),
        ("GATEWAY_LISTEN_ADDR", gateway_addr.to_string()),
        ("AUTH_SERVICE_URL", format!("http://{auth_addr}")),
        ("TASK_SERVICE_URL", format!("http://{task_addr}")),
        // Every call comes from 127.0.0.1: lift the limits that would measure refusals instead.
        ("RATE_LIMIT_PER_MINUTE", "1000000000".to_owned()),
        ("RATE_LIMIT_PER_ADDRESS_PER_MINUTE", "1000000000".to_owned()),
        ("REGISTER_MAX_PER_IP", "1000000".to_owned()),
        // The login throttle counts attempts in flight; 32 at once from one address would trip it.
        ("LOGIN_MAX_FAILURES_PER_ACCOUNT", "1000000".to_owned()),
        ("LOGIN_MAX_FAILURES_PER_IP", "1000000".to_owned()),
        ("LOGIN_DELAY_STEP_MS", "0".to_owned()),
    ];
    let processes = [
        start("auth-service", auth_addr, &common)?,
        start("task-service", task_addr, &common)?,
        start("gateway", gateway_addr, &common)?,
    ];
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
        auth.clone()
            .register(RegisterRequest { username: Some(name.clone()), password: PASSWORD.into(), ..Default::default() })
            .await?;
        let pair = auth
            .clone()
            .login(LoginRequest { login: name.clone(), password: PASSWORD.into(), ..Default::default() })
            .await?
            .into_inner()
            .tokens
            .ok_or_else(|| anyhow::anyhow!("no tokens"))?;
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
