//! Refresh and GetMe latency, idle and during a login + register flood.
//!
//! ```sh
//! TASKGATE_TEST_DATABASE_URL=postgres://... TASKGATE_TEST_REDIS_URL=redis://... \
//!   cargo run --release -p auth-service --example auth_bench
//! ```
//!
//! Starts the auth service in this process (default hashing threads, or
//! `HASH_THREADS` when set, queue 32, throttles opened wide so the flood
//! really hashes), then measures
//! `SAMPLES` sequential Refresh calls and `SAMPLES` GetMe calls on one
//! connection: first idle, then while `FLOODERS` clients on a connection of
//! their own (as the gateway sends them) log in and register as fast as they
//! can. Prints p50/p99 of each, what the flood got, and (between the two)
//! the refresh throughput of 16 sessions rotating at once.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use auth_service::{Application, Settings};
use taskgate_proto::auth::v1::{
    GetMeRequest, LoginRequest, RefreshRequest, RegisterRequest, auth_service_client::AuthServiceClient,
};
use tonic::{Code, transport::Channel};

/// Calls measured per phase and kind.
const SAMPLES: usize = 400;
/// Concurrent clients in the flood.
const FLOODERS: usize = 48;

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Measures SAMPLES Refresh and SAMPLES GetMe, interleaved; returns the
/// next refresh token.
async fn measure(
    client: &mut AuthServiceClient<Channel>,
    mut refresh_token: String,
    label: &str,
) -> anyhow::Result<String> {
    let (mut refresh, mut me) = (Vec::new(), Vec::new());
    let mut access = String::new();
    for _ in 0..SAMPLES {
        let started = Instant::now();
        let pair = client.refresh(RefreshRequest { refresh_token }).await?.into_inner().tokens.expect("tokens");
        refresh.push(started.elapsed());
        refresh_token = pair.refresh_token;
        access = pair.access_token;
        let started = Instant::now();
        client.get_me(taskgate_test_support::bearer(GetMeRequest {}, &access)).await?;
        me.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let _ = access;
    println!(
        "{label:<28} Refresh p50 {:>9} p99 {:>9} | GetMe p50 {:>9} p99 {:>9}",
        ms(percentile(&mut refresh, 0.5)),
        ms(percentile(&mut refresh, 0.99)),
        ms(percentile(&mut me, 0.5)),
        ms(percentile(&mut me, 0.99)),
    );
    Ok(refresh_token)
}

/// Chains refreshed at once by the throughput phase, one session each.
const REFRESH_CHAINS: usize = 16;
/// How long the throughput phase refreshes.
const REFRESH_FOR: Duration = Duration::from_secs(5);

/// Refreshes/s with `REFRESH_CHAINS` sessions of `name` each rotating as fast
/// as it can (every rotation a committed Postgres UPDATE and a mirror write).
async fn refresh_throughput(client: &AuthServiceClient<Channel>, name: &str) -> anyhow::Result<()> {
    let mut chains = Vec::new();
    for _ in 0..REFRESH_CHAINS {
        chains.push(taskgate_test_support::login(client, name).await.refresh_token);
    }
    let started = Instant::now();
    let tasks: Vec<_> = chains
        .into_iter()
        .map(|mut token| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while started.elapsed() < REFRESH_FOR {
                    let pair = client.refresh(RefreshRequest { refresh_token: token.clone() }).await;
                    token = pair.expect("refresh").into_inner().tokens.expect("tokens").refresh_token;
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await?;
    }
    println!(
        "refresh throughput: {:.0} rotations/s ({REFRESH_CHAINS} sessions rotating at once, {} in {:.1} s)",
        total as f64 / started.elapsed().as_secs_f64(),
        total,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut settings = Settings::for_tests(
        taskgate_test_support::fresh_database().await,
        taskgate_test_support::redis_url(),
        taskgate_test_support::unique_prefix(),
    );
    settings.hash_queue_capacity = 32;
    settings.hash_threads = std::env::var("HASH_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let threads = settings.hashing_threads();
    let app = Application::build(settings).await?;
    let url = format!("http://{}", app.local_addr());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let mut client = AuthServiceClient::connect(url.clone()).await?;
    let name = taskgate_test_support::username();
    let (_, tokens) = taskgate_test_support::register_and_login(&client, &name).await;
    println!(
        "auth_bench: {} cores, {threads} hashing threads, queue 32, {SAMPLES} samples per phase, {FLOODERS} flooding clients",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );

    let mut token = tokens.refresh_token;
    for _ in 0..50 {
        token = client
            .refresh(RefreshRequest { refresh_token: token })
            .await?
            .into_inner()
            .tokens
            .expect("t")
            .refresh_token;
    }
    token = measure(&mut client, token, "idle").await?;
    refresh_throughput(&client, &name).await?;

    // The flood logs in as a user of its own: its sessions must not push the
    // measured session out (MAX_SESSIONS_PER_USER ends the oldest).
    let flood_name = taskgate_test_support::username();
    taskgate_test_support::register_and_login(&client, &flood_name).await;
    let name = flood_name;
    let flood_client = AuthServiceClient::connect(url).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, busy, other) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let flooders: Vec<_> = (0..FLOODERS)
        .map(|i| {
            let (mut client, stop, name) = (flood_client.clone(), stop.clone(), name.clone());
            let (ok, busy, other) = (ok.clone(), busy.clone(), other.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let result = if i % 2 == 0 {
                        client
                            .login(LoginRequest {
                                login: name.clone(),
                                password: taskgate_test_support::PASSWORD.into(),
                                ..Default::default()
                            })
                            .await
                            .map(|_| ())
                    } else {
                        client
                            .register(RegisterRequest {
                                username: Some(taskgate_test_support::username()),
                                password: taskgate_test_support::PASSWORD.into(),
                                ..Default::default()
                            })
                            .await
                            .map(|_| ())
                    };
                    match result {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(s) if s.code() == Code::ResourceExhausted => {
                            // A refused client waits a little, as told.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            busy.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(_) => other.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    measure(&mut client, token, "login+register flood").await?;
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        let _ = f.await;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "flood: {:.1} hashed calls/s ok, {} refused at once (RESOURCE_EXHAUSTED), {} other errors, over {secs:.1} s",
        ok.load(Ordering::Relaxed) as f64 / secs,
        busy.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
    );
    Ok(())
}
