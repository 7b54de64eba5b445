//! The auth service's resident memory under logins (#12): hashing runs on a
//! fixed set of threads that reuse their argon2 memory, so 50 logins cannot
//! grow the process past idle + 2 × threads × 19 MiB, and a thread left
//! without work frees its memory, so the process then returns to its idle
//! size. The binary runs as its own process, so other tests' servers do not
//! count.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use auth_service::password::{KEEP_MEMORY_IDLE, MEMORY_PER_THREAD};
use taskgate_proto::auth::v1::auth_service_client::AuthServiceClient;

use crate::helpers::username;

/// Hashing threads the spawned service runs.
const HASH_THREADS: usize = 2;

/// Kills the child when the test ends, however it ends.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// VmRSS of `pid`, in bytes.
fn resident(pid: u32) -> usize {
    let kib = taskgate_common::memory::proc_status_kib(&pid.to_string(), "VmRSS")
        .expect("a VmRSS line in /proc/<pid>/status");
    usize::try_from(kib).expect("fits") * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_service_resident_memory_after_fifty_logins_stays_within_the_hashing_threads_bound_and_returns_to_idle()
 {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
    let child = Command::new(env!("CARGO_BIN_EXE_auth-service"))
        .env_clear()
        .env("DATABASE_URL", taskgate_test_support::fresh_database().await)
        .env("REDIS_URL", taskgate_test_support::redis_url())
        .env("REDIS_PREFIX", taskgate_test_support::unique_prefix())
        .env("AUTH_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("HASH_THREADS", HASH_THREADS.to_string())
        .env("KEY_PUBLISH_DELAY_SECONDS", "0")
        .env("LOGIN_MAX_FAILURES_PER_ACCOUNT", "1000")
        .env("LOGIN_MAX_FAILURES_PER_IP", "1000")
        .env("LOGIN_DELAY_STEP_MS", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the auth-service binary");
    let service = Service(child);
    let pid = service.0.id();
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let client = loop {
        match AuthServiceClient::connect(url.clone()).await {
            Ok(client) => break client,
            Err(_) if started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("the service did not start: {e}"),
        }
    };
    let name = username();
    taskgate_test_support::register(&client, &name).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let idle = resident(pid);

    for _ in 0..5 {
        let batch: Vec<_> = (0..10)
            .map(|_| {
                let client = client.clone();
                let name = name.clone();
                tokio::spawn(async move { taskgate_test_support::login(&client, &name).await })
            })
            .collect();
        for login in batch {
            login.await.expect("login task");
        }
    }
    let after = resident(pid);
    let bound = idle + 2 * HASH_THREADS * MEMORY_PER_THREAD;
    eprintln!(
        "auth-service RSS: idle {} MiB, after 50 logins {} MiB, bound {} MiB",
        idle >> 20,
        after >> 20,
        bound >> 20
    );
    assert!(
        after <= bound,
        "RSS after 50 logins {} MiB > idle {} MiB + 2 x {HASH_THREADS} x 19 MiB",
        after >> 20,
        idle >> 20
    );

    // Nothing to hash for KEEP_MEMORY_IDLE: every thread frees its block, and the process is back
    // at its idle size (which included the block the registration's hash took).
    tokio::time::sleep(KEEP_MEMORY_IDLE + Duration::from_secs(3)).await;
    let settled = resident(pid);
    eprintln!("auth-service RSS {} s after the logins: {} MiB", KEEP_MEMORY_IDLE.as_secs() + 3, settled >> 20);
    assert!(
        settled + HASH_THREADS * MEMORY_PER_THREAD * 9 / 10 <= after,
        "RSS {} MiB after the threads went idle: the {HASH_THREADS} x 19 MiB of hashing memory (RSS {} MiB) was not given back",
        settled >> 20,
        after >> 20
    );
    assert!(settled <= idle, "RSS {} MiB after the logins settled > {} MiB idle", settled >> 20, idle >> 20);
}
