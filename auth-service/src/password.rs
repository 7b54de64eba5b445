//! Password hashing with argon2id (OWASP parameters) on a fixed pool of
//! hashing threads fed by a bounded queue.
//!
//! Design (#10 and #12, one pool for both):
//! - **Fixed threads, reused memory.** `HASH_THREADS` std threads (one per
//!   permitted concurrent hash, default one per core but one) each own one 19 MiB
//!   argon2 memory block, allocated on first use and reused for every hash
//!   (`Argon2::hash_password_into_with_memory`). Hashing therefore does not
//!   allocate while hashes keep coming: glibc cannot strand freed 19 MiB
//!   blocks in per-thread arenas (the growth to 400+ MiB that tokio's blocking
//!   pool caused), and resident memory is bounded by idle + threads × 19 MiB.
//! - **Memory given back when idle.** A thread that has had nothing to hash
//!   for [`KEEP_MEMORY_IDLE`] frees its block, so after a flood the process
//!   returns to its idle size. The block is reserved larger than glibc's
//!   largest dynamic mmap threshold ([`RESERVED_BLOCKS`]), so glibc maps it
//!   on its own and unmaps it on free, whatever it freed before (a 19 MiB
//!   block would raise the threshold on its first free and live in an arena
//!   afterwards, never returned); the part past 19 MiB is never touched, so
//!   it is never resident.
//! - **Bounded queue, fail fast.** A call that will hash takes a [`HashSlot`]
//!   first, before it touches Postgres or Redis: there are `HASH_THREADS +
//!   HASH_QUEUE_CAPACITY` of them, and when none is free the call is refused
//!   at once with RESOURCE_EXHAUSTED and a RetryInfo of about the time the
//!   queue takes to drain, instead of piling up (and holding database
//!   connections the cheap calls need) until every caller times out.
//! - **Off the async workers, and behind them.** No hash runs on a tokio
//!   worker, and no cheap call (Refresh, Logout, GetMe, JWKS) ever needs a
//!   hashing thread. By default one core is left without a hashing thread
//!   (see `Settings::hashing_threads`), and the hashing threads run at a
//!   lower scheduling priority (SCHED_BATCH, nice about 9), so a login flood
//!   costs the cheap calls little latency. Priority alone was not enough:
//!   on 2 cores with a hashing thread on each, Refresh p99 during a flood
//!   was 3x idle at SCHED_BATCH and no better at SCHED_IDLE; with one core
//!   left free it stayed under 2x.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use argon2::{
    ARGON2ID_IDENT, Algorithm, Argon2, Block, Params, PasswordHash, Version,
    password_hash::phc::{Output, ParamsString, Salt},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::{domain::Password, error::AuthError, metrics::AuthMetrics};

/// Memory cost in KiB (OWASP password storage cheat sheet: 19 MiB).
pub const M_COST: u32 = 19_456;
/// Iterations.
pub const T_COST: u32 = 2;
/// Lanes.
pub const P_COST: u32 = 1;
/// Bytes of argon2 memory one hashing thread keeps (19 MiB).
pub const MEMORY_PER_THREAD: usize = M_COST as usize * Block::SIZE;
/// Length of a hash's output, in bytes.
const OUTPUT_LEN: usize = 32;
/// Length of a new salt, in bytes.
const SALT_LEN: usize = 16;

/// The argon2 memory of one hashing thread.
type Memory = Vec<Block>;

/// How long a hashing thread keeps its memory with nothing to hash.
pub const KEEP_MEMORY_IDLE: Duration = Duration::from_secs(10);

/// The capacity a thread's memory is reserved with, in 1 KiB blocks: 33 MiB,
/// past glibc's largest dynamic mmap threshold (32 MiB on 64-bit), so the
/// block is always its own mapping, unmapped when freed. Only the first
/// [`M_COST`] blocks are ever written.
const RESERVED_BLOCKS: usize = 33 * 1024;

/// A unit of work for a hashing thread: runs with that thread's memory.
type Job = Box<dyn FnOnce(&mut Memory) + Send>;

/// Hashes and verifies passwords on the pool. Cheap to clone; the threads end
/// when the last clone is dropped.
#[derive(Clone)]
pub struct PasswordHasher {
    /// The pool's state, shared by every clone.
    inner: Arc<Inner>,
}

struct Inner {
    /// The queue of hashes waiting for a thread (never full: the slots bound it).
    jobs: flume::Sender<Job>,
    /// One permit per hash that may run or wait: threads + queue capacity.
    slots: Arc<Semaphore>,
    /// Hashing threads (= hashes that may run at once).
    threads: usize,
    /// Most hashes that may wait for a thread.
    queue_capacity: usize,
    /// A hash of a random password, verified against when the login is
    /// unknown so that such a login takes as long as a wrong password
    /// (computed on the pool at start-up).
    dummy_hash: std::sync::OnceLock<String>,
    /// Exponential moving average of one hash's duration, in microseconds:
    /// the retry time of a refused hash, and how long Register waits when it
    /// answers without hashing.
    average_us: AtomicU64,
    /// Where the queue's depth and the hashes' waits are counted.
    metrics: AuthMetrics,
}

/// The right to run one hash (or verification) now or after the queued
/// ones; taken before any other work of a call that hashes, so a call that
/// would be refused is refused before it costs anything.
#[must_use = "a slot is spent by hash or verify"]
pub struct HashSlot {
    /// Given back to the pool when the slot is dropped.
    _permit: OwnedSemaphorePermit,
}

/// The outcome of checking a password.
#[derive(Debug, PartialEq, Eq)]
pub enum Verified {
    /// The password does not match.
    No,
    /// It matches, and the stored hash uses today's parameters.
    Yes,
    /// It matches; here is a hash with today's parameters to store instead.
    YesRehashed(String),
}

/// The parameters every new hash uses ([`M_COST`], [`T_COST`], [`P_COST`]); the benchmark
/// measures one hash with them for the login ceiling.
pub fn params() -> anyhow::Result<Params> {
    Params::new(M_COST, T_COST, P_COST, Some(OUTPUT_LEN)).map_err(|e| anyhow::anyhow!("argon2 params: {e}"))
}

/// The memory for `blocks` blocks: `memory` itself when it is big enough
/// (always, for today's parameters), else a one-off allocation for an
/// old hash with a larger memory cost.
fn with_blocks<T>(memory: &mut Memory, blocks: usize, f: impl FnOnce(&mut [Block]) -> T) -> T {
    if memory.len() < blocks && blocks <= M_COST as usize {
        memory.reserve_exact(RESERVED_BLOCKS.saturating_sub(memory.len()));
        memory.resize(M_COST as usize, Block::new());
    }
    match memory.get_mut(..blocks) {
        Some(slice) => f(slice),
        None => f(&mut vec![Block::new(); blocks]),
    }
}

/// Hashes `password` with today's parameters into a PHC string, using
/// `memory` for argon2's blocks.
fn hash_with(memory: &mut Memory, password: &[u8]) -> anyhow::Result<String> {
    let params = params()?;
    let salt_bytes: [u8; SALT_LEN] = rand::random();
    let salt = Salt::new(&salt_bytes).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    let mut out = [0u8; OUTPUT_LEN];
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    with_blocks(memory, params.block_count(), |blocks| {
        argon2.hash_password_into_with_memory(password, salt.as_ref(), &mut out, blocks)
    })
    .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))?;
    let phc = PasswordHash {
        algorithm: ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| anyhow::anyhow!("argon2 params string: {e}"))?,
        salt: Some(salt),
        hash: Some(Output::new(&out).map_err(|e| anyhow::anyhow!("argon2 output: {e}"))?),
    };
    Ok(phc.to_string())
}

/// True when `hash` was made with exactly today's algorithm and parameters.
fn is_current(hash: &PasswordHash) -> bool {
    let Ok(params) = Params::try_from(hash) else {
        return false;
    };
    hash.algorithm == ARGON2ID_IDENT
        && hash.version == Some(Version::V0x13.into())
        && params.m_cost() == M_COST
        && params.t_cost() == T_COST
        && params.p_cost() == P_COST
}

/// Checks `password` against the PHC string `stored`, with the stored hash's
/// own parameters, in `memory`.
fn verify_with(memory: &mut Memory, password: &[u8], stored: &str) -> anyhow::Result<Verified> {
    let parsed = (|| {
        let hash = PasswordHash::new(stored).ok()?;
        let algorithm = Algorithm::try_from(hash.algorithm.as_str()).ok()?;
        let version = Version::try_from(hash.version.unwrap_or(0x13)).ok()?;
        let params = Params::try_from(&hash).ok()?;
        let expected = hash.hash?;
        let salt = hash.salt?;
        Some((hash, algorithm, version, params, expected, salt))
    })();
    let Some((hash, algorithm, version, params, expected, salt)) = parsed else {
        // A corrupt stored hash never matches; log it, do not fail the call.
        tracing::error!("stored password hash is not a valid argon2 PHC string");
        return Ok(Verified::No);
    };
    let mut out = vec![0u8; expected.len()];
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let computed = with_blocks(memory, params.block_count(), |blocks| {
        argon2.hash_password_into_with_memory(password, salt.as_ref(), &mut out, blocks)
    });
    // Output's equality is constant-time.
    let matches = computed.is_ok() && Output::new(&out).map(|o| o == expected).unwrap_or(false);
    if !matches {
        return Ok(Verified::No);
    }
    if is_current(&hash) { Ok(Verified::Yes) } else { Ok(Verified::YesRehashed(hash_with(memory, password)?)) }
}

/// Lowers the calling thread's scheduling priority (Linux: SCHED_BATCH with
/// niceness about 9; elsewhere the platform's equivalent, best effort): what
/// every hashing thread runs at. Public so the benchmark can load a machine
/// the way hashing does.
pub fn lower_priority() {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id,
    };
    // 23 of 0-99 maps to niceness 9: about 1/8 of a nice-0 thread's share
    // when both want the core.
    let Ok(value) = ThreadPriorityValue::try_from(23u8) else { return };
    let outcome = set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Crossplatform(value),
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch),
    );
    if let Err(e) = outcome {
        tracing::debug!(error = ?e, "could not lower the priority of a hashing thread");
    }
}

/// One hashing thread: takes jobs until every sender is gone, running each
/// with the thread's own argon2 memory (allocated on the first job, reused
/// after, freed after [`KEEP_MEMORY_IDLE`] without a job).
fn worker(jobs: flume::Receiver<Job>) {
    lower_priority();
    let mut memory: Memory = Vec::new();
    loop {
        let job = if memory.capacity() == 0 {
            jobs.recv().map_err(|_| ())
        } else {
            match jobs.recv_timeout(KEEP_MEMORY_IDLE) {
                Ok(job) => Ok(job),
                Err(flume::RecvTimeoutError::Timeout) => {
                    memory = Vec::new();
                    continue;
                }
                Err(flume::RecvTimeoutError::Disconnected) => Err(()),
            }
        };
        match job {
            Ok(job) => job(&mut memory),
            Err(()) => return,
        }
    }
}

impl PasswordHasher {
    /// Starts `threads` hashing threads (at least one) with a queue of
    /// `queue_capacity` waiting hashes, and computes the dummy hash on them;
    /// the queue's depth and waits are counted in `metrics`.
    pub async fn new(threads: usize, queue_capacity: usize, metrics: AuthMetrics) -> anyhow::Result<Self> {
        let threads = threads.max(1);
        let (sender, receiver) = flume::bounded::<Job>(threads + queue_capacity);
        for i in 0..threads {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || worker(receiver))
                .context("starting a password hashing thread")?;
        }
        let hasher = PasswordHasher {
            inner: Arc::new(Inner {
                jobs: sender,
                slots: Arc::new(Semaphore::new(threads + queue_capacity)),
                threads,
                queue_capacity,
                dummy_hash: std::sync::OnceLock::new(),
                average_us: AtomicU64::new(50_000),
                metrics,
            }),
        };
        let random = uuid::Uuid::new_v4().to_string();
        let slot = hasher.slot()?;
        let dummy = hasher
            .run(slot, move |memory| hash_with(memory, random.as_bytes()))
            .await
            .map_err(|e| anyhow::anyhow!("computing the dummy password hash: {e}"))?;
        let _ = hasher.inner.dummy_hash.set(dummy);
        Ok(hasher)
    }

    /// Hashing threads (hashes that may run at once).
    pub fn threads(&self) -> usize {
        self.inner.threads
    }

    /// About how long one hash takes on this machine (a moving average).
    pub fn typical_hash_time(&self) -> Duration {
        Duration::from_micros(self.inner.average_us.load(Ordering::Relaxed))
    }

    /// How long a refused caller should wait: the time the full queue takes
    /// to drain, rounded up to whole seconds (clients wait on seconds).
    fn retry_after(&self) -> Duration {
        let rounds = (self.inner.queue_capacity / self.inner.threads + 1) as u32;
        let drain = self.typical_hash_time().saturating_mul(rounds);
        Duration::from_secs(drain.as_secs_f64().ceil().max(1.0) as u64)
    }

    /// A slot for one hash, or [`AuthError::Busy`] at once when every
    /// thread is busy and the queue is full.
    pub fn slot(&self) -> Result<HashSlot, AuthError> {
        match self.inner.slots.clone().try_acquire_owned() {
            Ok(permit) => Ok(HashSlot { _permit: permit }),
            Err(_) => Err(AuthError::Busy { retry_after: self.retry_after() }),
        }
    }

    /// Queues `f` for a hashing thread and waits for its result; the slot is
    /// given back when the hash is done (or the caller went away).
    async fn run<T: Send + 'static>(
        &self,
        slot: HashSlot,
        f: impl FnOnce(&mut Memory) -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T, AuthError> {
        let (reply, result) = oneshot::channel();
        let inner = self.inner.clone();
        let queued = Instant::now();
        let job: Job = Box::new(move |memory| {
            let _slot = slot;
            let started = Instant::now();
            inner.metrics.hash_queue_depth.dec();
            inner.metrics.hash_wait.observe(started.duration_since(queued).as_secs_f64());
            let outcome = f(memory);
            let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            // Moving average over about the last eight hashes.
            let old = inner.average_us.load(Ordering::Relaxed);
            inner.average_us.store(old - old / 8 + took / 8, Ordering::Relaxed);
            // The caller may have gone (its call was cancelled): nothing to do.
            let _ = reply.send(outcome);
        });
        // Counted before sending: the job may start (and be taken off) at once.
        self.inner.metrics.hash_queue_depth.inc();
        match self.inner.jobs.try_send(job) {
            Ok(()) => {}
            Err(flume::TrySendError::Full(_)) => {
                self.inner.metrics.hash_queue_depth.dec();
                return Err(AuthError::Busy { retry_after: self.retry_after() });
            }
            Err(flume::TrySendError::Disconnected(_)) => {
                self.inner.metrics.hash_queue_depth.dec();
                return Err(AuthError::Unexpected(anyhow::anyhow!("password hashing threads are gone")));
            }
        }
        Ok(result.await.context("a password hashing thread panicked")??)
    }

    /// Hashes a new password into a PHC string.
    pub async fn hash(&self, slot: HashSlot, password: &Password) -> Result<String, AuthError> {
        let password = password.expose().to_owned();
        self.run(slot, move |memory| hash_with(memory, password.as_bytes())).await
    }

    /// Checks `password` against `stored`, or against the dummy hash when
    /// there is no user (the answer is then always [`Verified::No`]).
    pub async fn verify(&self, slot: HashSlot, password: &str, stored: Option<&str>) -> Result<Verified, AuthError> {
        let password = password.to_owned();
        let (stored, real) = match stored {
            Some(s) => (s.to_owned(), true),
            None => (self.inner.dummy_hash.get().cloned().unwrap_or_default(), false),
        };
        let verified = self.run(slot, move |memory| verify_with(memory, password.as_bytes(), &stored)).await?;
        Ok(if real { verified } else { Verified::No })
    }
}

#[cfg(test)]
mod tests {
    use argon2::PasswordHasher as _;

    use super::*;

    #[test]
    fn a_hash_verifies_and_is_current() {
        let mut memory = Vec::new();
        let hash = hash_with(&mut memory, b"a long passphrase").expect("hash");
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        assert_eq!(verify_with(&mut memory, b"a long passphrase", &hash).expect("verify"), Verified::Yes);
        assert_eq!(verify_with(&mut memory, b"another one", &hash).expect("verify"), Verified::No);
        assert_eq!(memory.len(), M_COST as usize, "the memory is kept for the next hash");
        assert!(memory.capacity() >= RESERVED_BLOCKS, "reserved past glibc's mmap threshold");
    }

    #[test]
    fn hashes_of_the_argon2_crate_verify_and_ours_verify_there() {
        use argon2::PasswordVerifier as _;
        let theirs = Argon2::default().hash_password(b"a long passphrase").expect("hash").to_string();
        assert_eq!(verify_with(&mut Vec::new(), b"a long passphrase", &theirs).expect("verify"), Verified::Yes);
        let ours = hash_with(&mut Vec::new(), b"a long passphrase").expect("hash");
        let parsed = PasswordHash::new(&ours).expect("phc");
        assert!(Argon2::default().verify_password(b"a long passphrase", &parsed).is_ok());
    }

    #[test]
    fn a_weaker_hash_is_rehashed_on_success() {
        let weak = Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(8, 1, 1, None).expect("params"))
            .hash_password(b"a long passphrase")
            .expect("hash")
            .to_string();
        match verify_with(&mut Vec::new(), b"a long passphrase", &weak).expect("verify") {
            Verified::YesRehashed(new) => assert!(new.starts_with("$argon2id$v=19$m=19456,t=2,p=1$")),
            other => panic!("expected a rehash, got {other:?}"),
        }
    }

    #[test]
    fn a_corrupt_hash_never_matches() {
        assert_eq!(verify_with(&mut Vec::new(), b"x", "not a hash").expect("verify"), Verified::No);
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_at_once_with_a_retry_time() {
        let hasher = PasswordHasher::new(1, 1, AuthMetrics::default()).await.expect("hasher");
        let password = Password::parse("a long passphrase 42", &[]).expect("valid");
        // One hash runs, one waits, the rest are refused without waiting.
        let started = Instant::now();
        let calls: Vec<_> = (0..6)
            .map(|_| {
                let hasher = hasher.clone();
                let password = password.expose().to_owned();
                tokio::spawn(async move {
                    let slot = hasher.slot()?;
                    hasher.verify(slot, &password, None).await
                })
            })
            .collect();
        let mut busy = 0;
        for call in calls {
            if let Err(AuthError::Busy { retry_after }) = call.await.expect("task") {
                assert!(retry_after >= Duration::from_secs(1));
                busy += 1;
            }
        }
        assert!(busy >= 3, "only {busy} of 6 refused");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
