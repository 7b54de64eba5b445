//! Bounded load for the benchmarks (`gateway/examples/loadgen.rs`,
//! `fleet-tests/examples/bench.rs`): closed-loop runs with a fixed number of
//! requests in flight, and paced runs at a fixed rate, each ending by itself.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

/// A benchmark's two arguments, `[REQUESTS] [CONCURRENCY]`: `default_requests` and 32 in flight
/// when left out.
pub fn requests_and_concurrency(default_requests: usize) -> Result<(usize, usize), std::num::ParseIntError> {
    let mut args = std::env::args().skip(1);
    let requests = args.next().map(|a| a.parse()).transpose()?.unwrap_or(default_requests);
    let concurrency = args.next().map(|a| a.parse()).transpose()?.unwrap_or(32);
    Ok((requests, concurrency))
}

/// What one run measured.
#[derive(Debug, Default)]
pub struct Run {
    /// Latency of every successful measured request, in milliseconds, sorted.
    pub latencies: Vec<f64>,
    /// Failed requests.
    pub errors: usize,
    /// Wall time of the measured part.
    pub elapsed: Duration,
}

impl Run {
    /// Requests (successful or not) per second.
    pub fn rate(&self) -> f64 {
        (self.latencies.len() + self.errors) as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// Successful requests per second.
    pub fn ok_rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// The `p` quantile (0.5 for the median) of the latencies, in milliseconds; NaN when none.
    pub fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() as f64 * p).ceil() as usize).clamp(1, self.latencies.len()) - 1;
        self.latencies[i]
    }

    /// One line: `name`, requests/s, p50 and p99 in ms, errors.
    pub fn print(&self, name: &str) {
        println!(
            "{name:<34} {:>10.0} {:>10.2} {:>10.2} {:>8}",
            self.rate(),
            self.percentile(0.50),
            self.percentile(0.99),
            self.errors
        );
    }

    /// The header [`Run::print`]'s lines line up under.
    pub fn header() {
        println!("{:<34} {:>10} {:>10} {:>10} {:>8}", "path", "req/s", "p50 ms", "p99 ms", "errors");
    }

    fn add(&mut self, latencies: Vec<f64>, errors: usize) {
        self.latencies.extend(latencies);
        self.errors += errors;
    }

    fn finish(mut self, started: Instant) -> Run {
        self.elapsed = started.elapsed();
        self.latencies.sort_by(f64::total_cmp);
        self
    }
}

/// Unmeasured calls before a closed-loop run, to open connections and warm caches: a tenth of
/// the run, at most this many.
pub const WARM_UP: usize = 200;

/// A closed-loop run: a fixed number of requests in flight, each starting when one ends.
#[derive(Debug, Clone, Copy)]
pub struct ClosedLoop {
    /// Measured requests.
    pub requests: usize,
    /// Requests in flight.
    pub concurrency: usize,
    /// The run stops after this long, however many requests are left.
    pub max_run: Duration,
    /// Unmeasured calls first, one at a time.
    pub warm_up: usize,
}

/// `requests` calls, `concurrency` at once, for at most `max_run`, after the default warm-up
/// (see [`WARM_UP`]).
pub async fn closed_loop<F, Fut>(requests: usize, concurrency: usize, max_run: Duration, call: F) -> Run
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    ClosedLoop { requests, concurrency, max_run, warm_up: WARM_UP.min(requests / 10) }.run(call).await
}

impl ClosedLoop {
    /// Runs `call`: the warm-up, then the measured requests. `call(i)` gets the request's number,
    /// so a run can spread its requests over users.
    pub async fn run<F, Fut>(self, call: F) -> Run
    where
        F: Fn(usize) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        let ClosedLoop { requests, concurrency, max_run, warm_up } = self;
        let call = Arc::new(call);
        for i in 0..warm_up {
            call(i).await;
        }
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let workers: Vec<_> = (0..concurrency.max(1))
            .map(|_| {
                let (call, next) = (call.clone(), next.clone());
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut errors = 0;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= requests || started.elapsed() >= max_run {
                            break;
                        }
                        let t = Instant::now();
                        if call(i).await {
                            latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                        } else {
                            errors += 1;
                        }
                    }
                    (latencies, errors)
                })
            })
            .collect();
        let mut run = Run::default();
        for worker in workers {
            if let Ok((latencies, errors)) = worker.await {
                run.add(latencies, errors);
            }
        }
        run.finish(started)
    }
}

/// Starts `call` `per_second` times a second for `duration`, whatever the answers' latency (an
/// open loop, so a slow server shows as latency, not as fewer requests), then waits for the
/// calls still in flight, each for at most `duration`.
pub async fn paced<F, Fut>(per_second: u32, duration: Duration, call: F) -> Run
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
{
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    let mut i = 0;
    while started.elapsed() < duration {
        tick.tick().await;
        let call = call(i);
        i += 1;
        calls.spawn(async move {
            let t = Instant::now();
            match tokio::time::timeout(duration, call).await {
                Ok(true) => Some(t.elapsed().as_secs_f64() * 1000.0),
                _ => None,
            }
        });
    }
    let mut run = Run::default();
    while let Some(done) = calls.join_next().await {
        match done {
            Ok(Some(latency)) => run.add(vec![latency], 0),
            _ => run.add(Vec::new(), 1),
        }
    }
    run.finish(started)
}
