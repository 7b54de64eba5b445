//! A circuit breaker for a store that can hang: after [`OPEN_AFTER_TIMEOUTS`]
//! timeouts in a row it *opens*, and callers stop waiting on the store; one
//! background task then probes it, after a backoff that starts at
//! [`FIRST_BACKOFF`] and doubles up to [`MAX_BACKOFF`], and *closes* the
//! breaker when a probe succeeds.
//!
//! The state is three atomics behind an `Arc`: [`Breaker::is_open`] is one
//! load, [`Breaker::record_success`] at most two loads when nothing needs
//! resetting, so the hot path takes no lock and writes no shared cache line
//! while all is well. The probe task exists only while the breaker is open.
//!
//! The breaker knows nothing about Redis: the probe is a closure returning a
//! future of "did the store answer". [`super::RedisHandle`] pairs one with a
//! fred pool and a PING.
//!
//! ```text
//!            N timeouts in a row
//!   closed ───────────────────────▶ open ──┐ sleep(backoff), probe
//!     ▲                               ▲    │ failed: backoff doubles (capped)
//!     │        probe succeeded        └────┘
//!     └───────────────────────────────────┘
//! ```

use std::{
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use futures::future::BoxFuture;

/// Timeouts in a row (with no answer from the store in between) that open
/// the breaker. One timeout can be bad luck (a slow command, a pause); three
/// in a row mean the store is not answering. Each of them cost its request a
/// whole command timeout, so this many requests pay one before the breaker
/// saves the rest; under concurrent load they time out together, so opening
/// takes about one command timeout.
pub const OPEN_AFTER_TIMEOUTS: u32 = 3;

/// The wait before the first probe of an open breaker: short, so a store
/// that paused for a moment is back in use within a fraction of a second.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The longest wait between probes. The backoff doubles after every failed
/// probe (100 ms, 200, 400, 800) up to this, so a store that is back is
/// noticed at most this long (plus one probe) after it returns, and a store
/// that stays away costs one probe per second.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The probe: a future answering whether the store responded (it must bound
/// its own time).
pub type Probe = Arc<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>;

/// How the probe task waits: `tokio::time::sleep`, or a test's hand.
type Sleep = Arc<dyn Fn(Duration) -> BoxFuture<'static, ()> + Send + Sync>;

/// A circuit breaker (see the module documentation). Cheap to clone: clones
/// share one state.
#[derive(Clone)]
pub struct Breaker {
    /// The state every clone shares.
    state: Arc<State>,
}

/// What the clones of one breaker share.
struct State {
    /// What the logs call the store.
    name: &'static str,
    /// Timeouts since the store last answered; reset on an answer and when
    /// the breaker closes.
    timeouts: AtomicU32,
    /// True while open: callers take their outage path without calling.
    open: AtomicBool,
    /// The backoff step the next opening starts at: 0 once a call has been
    /// answered, else one past the step whose probe closed the breaker, so
    /// a store that answers PINGs but times out real calls is retried ever
    /// less often rather than every [`FIRST_BACKOFF`].
    next_step: AtomicU32,
    /// Asks the store whether it answers.
    probe: Probe,
    /// Waits out a backoff.
    sleep: Sleep,
}

impl Breaker {
    /// A closed breaker for the store `name` (for the logs), which `probe`
    /// asks whether it answers once the breaker is open.
    pub fn new(name: &'static str, probe: impl Fn() -> BoxFuture<'static, bool> + Send + Sync + 'static) -> Breaker {
        let sleep: Sleep = Arc::new(|backoff| Box::pin(tokio::time::sleep(backoff)));
        Breaker::with_sleep(name, Arc::new(probe), sleep)
    }

    /// A closed breaker whose probe task waits with `sleep`.
    fn with_sleep(name: &'static str, probe: Probe, sleep: Sleep) -> Breaker {
        Breaker {
            state: Arc::new(State {
                name,
                timeouts: AtomicU32::new(0),
                open: AtomicBool::new(false),
                next_step: AtomicU32::new(0),
                probe,
                sleep,
            }),
        }
    }

    /// True while the breaker is open: callers must not wait on the store,
    /// and take their outage path instead.
    pub fn is_open(&self) -> bool {
        self.state.open.load(Ordering::Acquire)
    }

    /// Counts a call that timed out; the [`OPEN_AFTER_TIMEOUTS`]th in a row
    /// opens the breaker and starts the probe task (which needs a Tokio
    /// runtime: without one the breaker stays closed).
    pub fn record_timeout(&self) {
        let state = &self.state;
        if state.open.load(Ordering::Acquire) {
            return;
        }
        let timeouts = state.timeouts.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        if timeouts < OPEN_AFTER_TIMEOUTS
            || state.open.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_err()
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Nothing could ever close it again.
            state.open.store(false, Ordering::Release);
            return;
        };
        let step = state.next_step.load(Ordering::Acquire);
        tracing::warn!(
            store = state.name,
            timeouts,
            first_probe_in = ?Breaker::backoff(step),
            "{} timed out {timeouts} times in a row: circuit breaker open, not waiting on it until a probe answers",
            state.name
        );
        runtime.spawn(probe_until_closed(Arc::downgrade(&self.state), step));
    }

    /// Notes that the store answered a call (even with an error reply): the
    /// timeout count starts again, and so does the backoff of the next opening.
    pub fn record_success(&self) {
        let state = &self.state;
        // Loads first: while all is well nothing is written.
        if state.timeouts.load(Ordering::Relaxed) != 0 {
            state.timeouts.store(0, Ordering::Release);
        }
        if state.next_step.load(Ordering::Relaxed) != 0 {
            state.next_step.store(0, Ordering::Release);
        }
    }

    /// The wait before the probe of backoff step `step` (0 for the first
    /// probe of an opening): [`FIRST_BACKOFF`] doubled `step` times, at most
    /// [`MAX_BACKOFF`].
    pub fn backoff(step: u32) -> Duration {
        FIRST_BACKOFF.saturating_mul(2_u32.saturating_pow(step)).min(MAX_BACKOFF)
    }
}

/// The probe task of one opening: waits the backoff of `step`, probes, and
/// either closes the breaker or tries again one step later. Ends early when
/// every clone of the breaker is gone.
async fn probe_until_closed(state: Weak<State>, mut step: u32) {
    loop {
        let Some((probe, sleep)) = state.upgrade().map(|s| (s.probe.clone(), s.sleep.clone())) else { return };
        sleep(Breaker::backoff(step)).await;
        let answered = probe().await;
        let Some(state) = state.upgrade() else { return };
        if answered {
            state.timeouts.store(0, Ordering::Release);
            state.next_step.store(step.saturating_add(1), Ordering::Release);
            state.open.store(false, Ordering::Release);
            tracing::info!(store = state.name, "{} answered a probe: circuit breaker closed", state.name);
            return;
        }
        tracing::debug!(store = state.name, step, "circuit breaker probe failed");
        step = step.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::sync::{mpsc, oneshot};

    use super::*;

    /// A breaker whose probe task asks the test to end each backoff, and
    /// whose probe answers as `answers` says at the time.
    struct Harness {
        breaker: Breaker,
        /// Each backoff the probe task waits, with the sender that ends it.
        sleeps: mpsc::UnboundedReceiver<(Duration, oneshot::Sender<()>)>,
        /// Whether the next probes succeed.
        answers: Arc<AtomicBool>,
        /// Probes made so far.
        probes: Arc<AtomicUsize>,
    }

    impl Harness {
        fn new() -> Harness {
            let (sleeps_tx, sleeps) = mpsc::unbounded_channel();
            let sleep: Sleep = Arc::new(move |backoff| {
                let (done, wait) = oneshot::channel();
                let _ = sleeps_tx.send((backoff, done));
                Box::pin(async move {
                    let _ = wait.await;
                })
            });
            let answers = Arc::new(AtomicBool::new(false));
            let probes = Arc::new(AtomicUsize::new(0));
            let probe: Probe = {
                let (answers, probes) = (answers.clone(), probes.clone());
                Arc::new(move || {
                    probes.fetch_add(1, Ordering::SeqCst);
                    let answer = answers.load(Ordering::SeqCst);
                    Box::pin(async move { answer })
                })
            };
            Harness { breaker: Breaker::with_sleep("test store", probe, sleep), sleeps, answers, probes }
        }

        fn open(&self) {
            for _ in 0..OPEN_AFTER_TIMEOUTS {
                self.breaker.record_timeout();
            }
            assert!(self.breaker.is_open());
        }

        /// The next backoff the probe task waits (left running until ended).
        async fn next_sleep(&mut self) -> (Duration, oneshot::Sender<()>) {
            tokio::time::timeout(Duration::from_secs(5), self.sleeps.recv())
                .await
                .expect("the probe task waits again")
                .expect("the probe task is alive")
        }

        /// Lets the spawned probe task run until it has probed `probes` times.
        async fn until_probed(&self, probes: usize) {
            for _ in 0..10_000 {
                if self.probes.load(Ordering::SeqCst) >= probes {
                    // And let it act on the answer.
                    for _ in 0..10 {
                        tokio::task::yield_now().await;
                    }
                    return;
                }
                tokio::task::yield_now().await;
            }
            panic!("the probe task never probed {probes} times");
        }
    }

    #[test]
    fn the_backoff_starts_at_the_first_doubles_and_is_capped() {
        let steps: Vec<u64> = (0..8).map(|s| Breaker::backoff(s).as_millis() as u64).collect();
        assert_eq!(steps, [100, 200, 400, 800, 1000, 1000, 1000, 1000]);
        assert_eq!(Breaker::backoff(u32::MAX), MAX_BACKOFF);
        assert!(MAX_BACKOFF <= Duration::from_secs(1), "a returned store must be seen within two seconds");
    }

    #[tokio::test]
    async fn it_opens_at_the_threshold_of_timeouts_in_a_row_and_not_before() {
        let harness = Harness::new();
        for _ in 1..OPEN_AFTER_TIMEOUTS {
            harness.breaker.record_timeout();
            assert!(!harness.breaker.is_open());
        }
        harness.breaker.record_timeout();
        assert!(harness.breaker.is_open());
    }

    #[tokio::test]
    async fn an_answer_between_timeouts_starts_the_count_again() {
        let harness = Harness::new();
        for _ in 0..3 {
            for _ in 1..OPEN_AFTER_TIMEOUTS {
                harness.breaker.record_timeout();
            }
            harness.breaker.record_success();
        }
        assert!(!harness.breaker.is_open());
    }

    #[tokio::test]
    async fn it_stays_open_through_the_backoff_and_probes_only_after_it() {
        let mut harness = Harness::new();
        harness.answers.store(true, Ordering::SeqCst);
        harness.open();
        let (backoff, done) = harness.next_sleep().await;
        assert_eq!(backoff, FIRST_BACKOFF);
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        // Timeouts and answers of calls already on their way change nothing.
        harness.breaker.record_timeout();
        harness.breaker.record_success();
        assert!(harness.breaker.is_open(), "open while the backoff runs");
        assert_eq!(harness.probes.load(Ordering::SeqCst), 0, "no probe before the backoff ends");
        drop(done);
        harness.until_probed(1).await;
        assert!(!harness.breaker.is_open());
    }

    #[tokio::test]
    async fn failed_probes_double_the_backoff_up_to_its_cap() {
        let mut harness = Harness::new();
        harness.open();
        let mut waits = Vec::new();
        for probes in 1..=7 {
            let (backoff, done) = harness.next_sleep().await;
            waits.push(backoff.as_millis() as u64);
            drop(done);
            harness.until_probed(probes).await;
            assert!(harness.breaker.is_open(), "still open after failed probe {probes}");
        }
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000, 1000]);
    }

    #[tokio::test]
    async fn a_successful_probe_closes_it_and_the_count_starts_afresh() {
        let mut harness = Harness::new();
        harness.open();
        let (_, done) = harness.next_sleep().await;
        drop(done);
        harness.until_probed(1).await;
        harness.answers.store(true, Ordering::SeqCst);
        let (_, done) = harness.next_sleep().await;
        drop(done);
        harness.until_probed(2).await;
        assert!(!harness.breaker.is_open(), "closed by the probe that answered");
        for _ in 1..OPEN_AFTER_TIMEOUTS {
            harness.breaker.record_timeout();
        }
        assert!(!harness.breaker.is_open(), "the timeouts before the opening are forgotten");
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(harness.sleeps.try_recv().is_err(), "no probe task while closed");
    }

    #[tokio::test]
    async fn reopening_without_an_answer_in_between_backs_off_further() {
        let mut harness = Harness::new();
        harness.answers.store(true, Ordering::SeqCst);
        harness.open();
        let (first, done) = harness.next_sleep().await;
        drop(done);
        harness.until_probed(1).await;
        assert!(!harness.breaker.is_open());

        // PINGs answer but the calls still time out: the next opening waits longer.
        harness.open();
        let (second, done) = harness.next_sleep().await;
        assert_eq!((first, second), (FIRST_BACKOFF, FIRST_BACKOFF * 2));
        drop(done);
        harness.until_probed(2).await;

        // A call answered: the next opening starts from the first backoff again.
        harness.breaker.record_success();
        harness.open();
        let (third, _done) = harness.next_sleep().await;
        assert_eq!(third, FIRST_BACKOFF);
    }
}
