//! The benchmark: what a request costs through the gateway, what a login costs against the
//! argon2id ceiling, and what each service holds in memory, in one run.
//!
//! Starts the three release binaries as separate processes on free loopback ports against the
//! PostgreSQL and Redis named by `TASKGATE_TEST_DATABASE_URL` and `TASKGATE_TEST_REDIS_URL` (a
//! fresh database, a fresh key prefix); `cargo xtask bench` builds everything, starts throwaway
//! servers and runs it. It prints, one after the other:
//!
//! 1. the machine: cores and load average;
//! 2. each service's resident memory (RSS) idle, after seeding (and the hashing threads' idle
//!    time);
//! 3. a list of 20 tasks (ListTasks, page size 20) three ways: REST `GET /api/v1/tasks` and
//!    native gRPC through the gateway, and native gRPC straight to the task service, in turn for
//!    three rounds, with the gateway/direct ratios and what each request cost in CPU time, process
//!    by process (the bench's own client, and the rest of the machine: Redis, PostgreSQL, the
//!    kernel), each the median of the rounds; when `nginx` is installed, a fourth path for
//!    reference: gRPC through nginx's `grpc_pass` in front of the task service (a proxy hop in C
//!    with no token check and no rate limit; its CPU is in "other", and printed on its own);
//! 4. create: REST `POST /api/v1/tasks`, with its CPU time per request;
//! 5. login through the gateway against the ceiling: cores ÷ the time of one argon2id hash with
//!    the service's parameters, measured here first, with its CPU time per login (the table of
//!    CPU times comes after it);
//! 6. task reads paced at 200/s, p99 idle, beside one thread hashing (a flood's hashing without
//!    its requests) and during a login flood, in turn for three rounds, with the medians of the
//!    rounds' ratios to idle;
//! 7. each service's RSS idle (and how much of it is code mapped from the binary, `RssFile`), at
//!    the peak of the flood, and one minute after it.
//!
//! ```text
//! cargo xtask bench [REQUESTS] [CONCURRENCY]
//! ```
//!
//! Bounded: REQUESTS per path (default 5000) or 20 s, CONCURRENCY in flight (default 32), against
//! 127.0.0.1 only; the whole run takes about four minutes.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use fleet_tests::processes::{Process, ReferenceProxy, Stack};
use taskgate_proto::{
    auth::v1::{LoginRequest, auth_service_client::AuthServiceClient},
    task::v1::{CreateTaskRequest, ListTasksRequest, Task, task_service_client::TaskServiceClient},
};
use taskgate_test_support::{
    PASSWORD, bearer,
    load::{ClosedLoop, Run, WARM_UP, closed_loop, paced},
};
use tonic::transport::Channel;

/// Users the load is spread over (each call is made as one of them).
const USERS: usize = 20;
/// Tasks each user has: a list returns all of them on one page.
const TASKS_PER_USER: usize = 20;
/// The longest one closed-loop path is driven.
const MAX_RUN: Duration = Duration::from_secs(20);
/// The rate of the paced reads, idle and during the login flood.
const READS_PER_SECOND: u32 = 200;
/// How long the paced reads (and the flood) last.
const PACED: Duration = Duration::from_secs(10);
/// Logins in flight during the flood: within the auth service's hashing queue (32 by default).
const FLOOD_CONCURRENCY: usize = 16;
/// How many times the three list paths are measured, in turn.
const ROUNDS: usize = 3;
/// The list paths, in the order each round measures them (the fourth only with nginx installed).
const LISTS: [&str; 4] =
    ["list 20, REST via gateway", "list 20, gRPC via gateway", "list 20, gRPC direct", "list 20, gRPC via nginx"];
/// How long after the flood the memory is read again.
const SETTLE: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (requests, concurrency) = taskgate_test_support::load::requests_and_concurrency(5000)?;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!("taskgate bench: {cores} cores, load average {} (1, 5, 15 min) at the start", load_average());

    let database_url = taskgate_test_support::fresh_database().await;
    let redis_url = taskgate_test_support::redis_url();
    let Stack { processes, task: task_addr, gateway: gateway_addr, .. } = Stack::start(&database_url, &redis_url)?;

    let gateway = channel(gateway_addr).await?;
    let direct = channel(task_addr).await?;
    let nginx = ReferenceProxy::start(task_addr)?;
    let via_nginx = match &nginx {
        Some(proxy) => Some(channel(proxy.addr).await?),
        None => None,
    };
    let users = Arc::new(seed(&gateway).await?);
    // Idle: the seeding's logins over, and the hashing threads' memory given back.
    tokio::time::sleep(auth_service::password::KEEP_MEMORY_IDLE + Duration::from_secs(2)).await;
    let idle: Vec<f64> = processes.iter().map(|p| p.rss_mib().0).collect();
    let code: Vec<f64> = processes.iter().map(Process::code_mib).collect();

    println!("\n{requests} requests per path (at most {} s), {concurrency} in flight", MAX_RUN.as_secs());
    Run::header();
    let http = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build()?;
    let warm_up = WARM_UP.min(requests / 10);
    let rest_url = format!("http://{gateway_addr}/api/v1/tasks?page_size={TASKS_PER_USER}");
    // The three paths in turn, ROUNDS times: each figure below is the median of its rounds, and
    // each ratio is taken within a round (the machine drifts between rounds more than within one).
    let mut rounds: Vec<Vec<(Run, Vec<f64>)>> = Vec::new();
    let mut nginx_cpu = Vec::new();
    for round in 1..=ROUNDS {
        let before = Cpu::now(&processes);
        let rest = {
            let (http, users, url) = (http.clone(), users.clone(), rest_url.clone());
            closed_loop(requests, concurrency, MAX_RUN, move |i| {
                let call = http.get(&url).header("authorization", &users[i % USERS].bearer).send();
                async move { call.await.is_ok_and(|r| r.status().is_success()) }
            })
            .await
        };
        let rest_cost = Cpu::now(&processes).per_request(&before, &rest, warm_up);
        rest.print(&format!("{}, round {round}", LISTS[0]));
        let before = Cpu::now(&processes);
        let grpc = list_grpc(&gateway, &users, requests, concurrency).await;
        let grpc_cost = Cpu::now(&processes).per_request(&before, &grpc, warm_up);
        grpc.print(&format!("{}, round {round}", LISTS[1]));
        let before = Cpu::now(&processes);
        let straight = list_grpc(&direct, &users, requests, concurrency).await;
        let straight_cost = Cpu::now(&processes).per_request(&before, &straight, warm_up);
        straight.print(&format!("{}, round {round}", LISTS[2]));
        let mut round_runs = vec![(rest, rest_cost), (grpc, grpc_cost), (straight, straight_cost)];
        if let (Some(proxy), Some(via)) = (&nginx, &via_nginx) {
            let (before, proxy_before) = (Cpu::now(&processes), proxy.process.cpu_seconds());
            let proxied = list_grpc(via, &users, requests, concurrency).await;
            let cost = Cpu::now(&processes).per_request(&before, &proxied, warm_up);
            let served = (proxied.latencies.len() + proxied.errors + warm_up).max(1) as f64;
            nginx_cpu.push((proxy.process.cpu_seconds() - proxy_before) * 1e6 / served);
            proxied.print(&format!("{}, round {round}", LISTS[3]));
            round_runs.push((proxied, cost));
        }
        rounds.push(round_runs);
    }
    let ratio = |path: usize| median(rounds.iter().map(|r| r[path].0.rate() / r[2].0.rate()).collect());
    let (grpc_ratio, rest_ratio) = (ratio(1), ratio(0));
    let nginx_ratio = (nginx.is_some()).then(|| ratio(3));
    // Each list path's CPU per request: the median of its rounds, column by column.
    let mut costs: Vec<(String, Vec<f64>)> = LISTS[..rounds[0].len()]
        .iter()
        .enumerate()
        .map(|(path, name)| {
            let columns = rounds[0][path].1.len();
            let cost = (0..columns).map(|c| median(rounds.iter().map(|r| r[path].1[c]).collect())).collect();
            (format!("{name} (median)"), cost)
        })
        .collect();
    println!();
    Run::header();
    let before = Cpu::now(&processes);
    let create = {
        let (http, users) = (http.clone(), users.clone());
        let url = format!("http://{gateway_addr}/api/v1/tasks");
        closed_loop(requests, concurrency, MAX_RUN, move |i| {
            let call = http
                .post(&url)
                .header("authorization", &users[i % USERS].bearer)
                .json(&serde_json::json!({ "title": format!("bench {i}") }))
                .send();
            async move { call.await.is_ok_and(|r| r.status().is_success()) }
        })
        .await
    };
    create.print("create, REST via gateway");
    costs.push(("create, REST via gateway".into(), Cpu::now(&processes).per_request(&before, &create, warm_up)));

    let hash = one_hash_time().await?;
    let ceiling = cores as f64 / hash.as_secs_f64();
    let logins = requests / 20;
    let before = Cpu::now(&processes);
    let login = closed_loop(logins, FLOOD_CONCURRENCY, MAX_RUN, {
        let (auth, users) = (AuthServiceClient::new(gateway.clone()), users.clone());
        move |i| {
            let (mut auth, name) = (auth.clone(), users[i % USERS].name.clone());
            async move {
                auth.login(LoginRequest { login: name, password: PASSWORD.into(), ..Default::default() }).await.is_ok()
            }
        }
    })
    .await;
    login.print("login, gRPC via gateway");
    costs.push((
        "login, gRPC via gateway".into(),
        Cpu::now(&processes).per_request(&before, &login, WARM_UP.min(logins / 10)),
    ));
    println!("\nCPU time per request (µs), warm-up included");
    print!("{:<34}", "path");
    for p in &processes {
        print!(" {:>9}", p.name.trim_end_matches("-service"));
    }
    println!(" {:>9} {:>9} {:>9}", "client", "other", "total");
    for (name, cost) in &costs {
        print!("{name:<34}");
        for us in cost {
            print!(" {us:>9.0}");
        }
        println!(" {:>9.0}", cost.iter().sum::<f64>());
    }
    println!("  (other: Redis, PostgreSQL and the kernel, from /proc/stat)");
    if !nginx_cpu.is_empty() {
        println!("  (via nginx: nginx itself is {:.0} µs of its row's other, median of the rounds)", median(nginx_cpu));
    }

    // Reads paced at a fixed rate: idle, beside hashing alone, and beside a login flood, each as
    // long, ROUNDS times in turn. The ratio is the median of the rounds' (idle p99 alone moves by
    // half between runs of one build on this shared machine, more than the effect measured).
    // Hashing alone is a thread of this process hashing without pause at the hashing threads'
    // priority: a flood's CPU and memory traffic without its requests, so the run tells how much
    // of the flood's effect is the hashing and how much the logins' request work.
    println!(
        "\nreads paced at {READS_PER_SECOND}/s for {} s (gRPC via gateway): idle, beside one thread hashing, during a flood of logins ({FLOOD_CONCURRENCY} in flight):",
        PACED.as_secs()
    );
    Run::header();
    let mut peak = vec![0.0_f64; processes.len()];
    let mut p99s: Vec<[f64; 3]> = Vec::new();
    for round in 1..=ROUNDS {
        let reads_idle = paced_reads(&gateway, &users).await;
        reads_idle.print(&format!("reads, idle, round {round}"));
        let hashing = Hashing::start();
        let reads_hashing = paced_reads(&gateway, &users).await;
        // The join waits for the hash in progress: off the async workers.
        let hashes = tokio::task::spawn_blocking(move || hashing.stop()).await?;
        reads_hashing.print(&format!("reads, {hashes} hashes alone, round {round}"));
        let flood = tokio::spawn(login_flood(AuthServiceClient::new(gateway.clone()), users.clone()));
        let reads = paced_reads(&gateway, &users);
        tokio::pin!(reads);
        let mut sample = tokio::time::interval(Duration::from_millis(100));
        let reads_flood = loop {
            tokio::select! {
                run = &mut reads => break run,
                _ = sample.tick() => {
                    for (peak, p) in peak.iter_mut().zip(&processes) {
                        *peak = peak.max(p.rss_mib().0);
                    }
                }
            }
        };
        let flooded = flood.await?;
        for (peak, p) in peak.iter_mut().zip(&processes) {
            *peak = peak.max(p.rss_mib().0);
        }
        reads_flood.print(&format!("reads, {flooded} logins, round {round}"));
        p99s.push([reads_idle.percentile(0.99), reads_hashing.percentile(0.99), reads_flood.percentile(0.99)]);
    }
    let p99_ratio = |phase: usize| median(p99s.iter().map(|p| p[phase] / p[0]).collect());

    println!("\nwaiting {} s for the memory to settle", SETTLE.as_secs());
    tokio::time::sleep(SETTLE).await;
    let after: Vec<f64> = processes.iter().map(|p| p.rss_mib().0).collect();
    println!("\nresident memory (MiB)      idle   of it code   flood peak   a minute after");
    for (i, p) in processes.iter().enumerate() {
        println!("  {:<22} {:>6.1} {:>12.1} {:>12.1} {:>16.1}", p.name, idle[i], code[i], peak[i], after[i]);
    }
    let sum = |v: &[f64]| v.iter().sum::<f64>();
    println!(
        "  {:<22} {:>6.1} {:>12.1} {:>12.1} {:>16.1}",
        "all three",
        sum(&idle),
        sum(&code),
        sum(&peak),
        sum(&after)
    );

    println!("\nsummary");
    println!(
        "  list 20 via gateway / direct (median of {ROUNDS} rounds):  gRPC x{grpc_ratio:.2}, REST x{rest_ratio:.2}"
    );
    match nginx_ratio {
        Some(ratio) => println!("  for reference, gRPC via nginx grpc_pass / direct: x{ratio:.2}"),
        None => println!("  (nginx is not installed: no reference proxy path)"),
    }
    println!(
        "  login: {:.1}/s against a ceiling of {ceiling:.1}/s ({cores} cores / {:.1} ms per hash): x{:.2}",
        login.ok_rate(),
        hash.as_secs_f64() * 1000.0,
        login.ok_rate() / ceiling
    );
    println!(
        "  reads p99 during a login flood / idle (median of {ROUNDS} rounds): x{:.2}; beside hashing alone: x{:.2}",
        p99_ratio(2),
        p99_ratio(1)
    );
    println!(
        "    by round, idle / hashing alone / login flood (ms): {}",
        p99s.iter().map(|[i, h, f]| format!("{i:.2} / {h:.2} / {f:.2}")).collect::<Vec<_>>().join(", ")
    );
    println!("  load average {} (1, 5, 15 min) at the end", load_average());
    Ok(())
}

/// The median of `values` (the upper one of an even count); NaN when empty.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A signed-in bench user.
struct User {
    /// The login name.
    name: String,
    /// `Bearer <access token>`.
    bearer: String,
    /// The access token alone.
    token: String,
}

/// Registers [`USERS`] users through the gateway, signs each in and gives each
/// [`TASKS_PER_USER`] tasks.
async fn seed(gateway: &Channel) -> anyhow::Result<Vec<User>> {
    let (auth, task) = (AuthServiceClient::new(gateway.clone()), TaskServiceClient::new(gateway.clone()));
    let mut users = Vec::new();
    for u in 0..USERS {
        let name = format!("bench{u}{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let token = taskgate_test_support::register_and_login(&auth, &name).await.1.access_token;
        for t in 0..TASKS_PER_USER {
            let create = CreateTaskRequest {
                task: Some(Task { title: format!("task {t}"), ..Default::default() }),
                ..Default::default()
            };
            task.clone().create_task(bearer(create, &token)).await?;
        }
        users.push(User { name, bearer: format!("Bearer {token}"), token });
    }
    Ok(users)
}

/// One HTTP/2 connection to `addr`.
async fn channel(addr: SocketAddr) -> anyhow::Result<Channel> {
    Ok(tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.tcp_nodelay(true).connect().await?)
}

/// ListTasks (a page of 20) over `channel`, closed loop.
async fn list_grpc(channel: &Channel, users: &Arc<Vec<User>>, requests: usize, concurrency: usize) -> Run {
    let (client, users) = (TaskServiceClient::new(channel.clone()), users.clone());
    closed_loop(requests, concurrency, MAX_RUN, move |i| list_one(&client, &users[i % USERS].token)).await
}

/// One ListTasks call; whether it succeeded.
fn list_one(client: &TaskServiceClient<Channel>, token: &str) -> impl Future<Output = bool> + Send + use<> {
    let mut client = client.clone();
    let request = bearer(ListTasksRequest { page_size: TASKS_PER_USER as i32, ..Default::default() }, token);
    async move { client.list_tasks(request).await.is_ok() }
}

/// ListTasks through the gateway at [`READS_PER_SECOND`] for [`PACED`].
async fn paced_reads(gateway: &Channel, users: &Arc<Vec<User>>) -> Run {
    let client = TaskServiceClient::new(gateway.clone());
    paced(READS_PER_SECOND, PACED, |i| list_one(&client, &users[i % USERS].token)).await
}

/// Logins, [`FLOOD_CONCURRENCY`] in flight, for [`PACED`]; how many were made.
async fn login_flood(auth: AuthServiceClient<Channel>, users: Arc<Vec<User>>) -> usize {
    let flood = ClosedLoop { requests: usize::MAX, concurrency: FLOOD_CONCURRENCY, max_run: PACED, warm_up: 0 };
    let run = flood
        .run(move |i| {
            let (mut auth, name) = (auth.clone(), users[i % USERS].name.clone());
            async move {
                auth.login(LoginRequest { login: name, password: PASSWORD.into(), ..Default::default() }).await.is_ok()
            }
        })
        .await;
    run.latencies.len() + run.errors
}

/// The auth service's hasher and memory for one thread: its parameters, one block reused for
/// every hash, as the service's hashing threads do.
fn hasher() -> anyhow::Result<(argon2::Argon2<'static>, Vec<argon2::Block>)> {
    use argon2::{Algorithm, Argon2, Block, Version};
    let params = auth_service::password::params()?;
    let memory = vec![Block::new(); params.block_count()];
    Ok((Argon2::new(Algorithm::Argon2id, Version::V0x13, params), memory))
}

/// One hash of the bench's password into `memory`.
fn hash_once(argon2: &argon2::Argon2<'_>, memory: &mut [argon2::Block]) -> anyhow::Result<()> {
    let mut out = [0u8; 32];
    argon2
        .hash_password_into_with_memory(PASSWORD.as_bytes(), b"sixteen byte salt", &mut out, memory)
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// The median time of one argon2id hash with the auth service's parameters, on one thread
/// (off the async workers) while the stack is idle.
async fn one_hash_time() -> anyhow::Result<Duration> {
    tokio::task::spawn_blocking(|| {
        let (argon2, mut memory) = hasher()?;
        let mut times = Vec::new();
        for _ in 0..9 {
            let t = Instant::now();
            hash_once(&argon2, &mut memory)?;
            times.push(t.elapsed());
        }
        times.sort();
        Ok(times[times.len() / 2])
    })
    .await?
}

/// A thread of the bench hashing without pause, at the service's hashing threads' priority
/// (`auth_service::password::lower_priority`), until [`Hashing::stop`].
struct Hashing {
    /// Set to end the loop.
    stop: Arc<AtomicBool>,
    /// The thread; it returns how many hashes it made.
    thread: std::thread::JoinHandle<usize>,
}

impl Hashing {
    /// Starts the thread.
    fn start() -> Hashing {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            auth_service::password::lower_priority();
            let Ok((argon2, mut memory)) = hasher() else { return 0 };
            let mut hashes = 0;
            while !flag.load(Ordering::Relaxed) && hash_once(&argon2, &mut memory).is_ok() {
                hashes += 1;
            }
            hashes
        });
        Hashing { stop, thread }
    }

    /// Ends the loop after the hash in progress; how many hashes were made.
    fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

/// CPU seconds used so far: by each service, by this process (the client), and by the whole
/// machine (busy time of all cores, from `/proc/stat`).
struct Cpu {
    /// Each service's, in the order of the stack's processes.
    services: Vec<f64>,
    /// This process's.
    client: f64,
    /// All cores' busy time.
    machine: f64,
}

impl Cpu {
    /// The counters now.
    fn now(processes: &[Process]) -> Cpu {
        let machine = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        // cpu user nice system idle iowait irq softirq steal ...: all but idle and iowait are busy.
        let fields: Vec<f64> = machine
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        let busy = fields.iter().enumerate().filter(|(i, _)| !matches!(i, 3 | 4)).map(|(_, v)| v).sum::<f64>();
        Cpu {
            services: processes.iter().map(Process::cpu_seconds).collect(),
            client: fleet_tests::processes::cpu_seconds_of("self"),
            machine: busy / 100.0,
        }
    }

    /// Microseconds of CPU per request of `run` and its `warm_up` calls since `before`: one
    /// figure per service, then the client's, then the rest of the machine's.
    fn per_request(&self, before: &Cpu, run: &Run, warm_up: usize) -> Vec<f64> {
        let requests = (run.latencies.len() + run.errors + warm_up).max(1) as f64;
        let mut out: Vec<f64> = self.services.iter().zip(&before.services).map(|(now, then)| now - then).collect();
        out.push(self.client - before.client);
        let known: f64 = out.iter().sum();
        out.push((self.machine - before.machine - known).max(0.0));
        out.iter().map(|seconds| seconds * 1e6 / requests).collect()
    }
}

/// `/proc/loadavg`'s first three fields.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}
