//! Giving freed memory back to the system once a service goes quiet.
//!
//! glibc's malloc keeps what a thread frees in that thread's arena, and on
//! its own returns only the free space at the top of each heap: after a
//! burst of requests, freed pages sit resident between live allocations
//! until the next burst reuses them. Measured on the three services after
//! seeding 20 users with 20 tasks each (issue 12): 4.7 MiB of their 68 MiB
//! was such free memory, which `malloc_trim(0)` returned.
//!
//! So each service runs one scavenger thread, in the manner of Go's
//! scavenger or jemalloc's decay: every [`CHECK_EVERY`] it reads how long the
//! tokio workers have been busy, and when the last interval was quiet (busy
//! less than [`QUIET_BUSY`]) after real work since the last trim (at least
//! [`WORK_SINCE_TRIM`]), it trims. Trimming walks and locks every arena in
//! turn (0.3 to 0.7 ms on these services' heaps, logged at debug level with
//! what it gave back), so it is done only when nothing is running, and off
//! the async workers. Elsewhere than glibc it does nothing: musl and the other
//! platforms' allocators have no such call.

use std::{sync::OnceLock, time::Duration};

use tokio::runtime::RuntimeMetrics;

/// How often the scavenger looks at the runtime.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);
/// Busy time of all workers together, over one [`CHECK_EVERY`], below which
/// the service is quiet (0.2% of one core: health probes and scrapes).
pub const QUIET_BUSY: Duration = Duration::from_millis(10);
/// Busy time since the last trim below which there is nothing worth giving
/// back (a few probes do not free pages).
pub const WORK_SINCE_TRIM: Duration = Duration::from_millis(10);

/// Asks the allocator to return its free pages to the system
/// (glibc's `malloc_trim(0)`); true when it gave something back. Does
/// nothing elsewhere. Walks and locks every arena: call it off the async
/// workers, when little is allocating.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)] // The one foreign call of the workspace: no safe binding exists.
pub fn give_back() -> bool {
    // SAFETY: malloc_trim takes no pointers and reads or writes no memory of
    // ours; glibc locks each arena while it trims it.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Asks the allocator to return its free pages to the system: nothing to
/// do off glibc.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn give_back() -> bool {
    false
}

/// A size field of `/proc/<pid>/status`, in KiB: `VmRSS` (resident), `VmHWM`
/// (its peak), `RssAnon` (heap and stacks), `RssFile` (code and data mapped
/// from files). `pid` is a process id, or `self`. `None` where there is no
/// such file or field (not Linux, or the process is gone).
pub fn proc_status_kib(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let value = status.lines().find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?;
    value.split_whitespace().next()?.parse().ok()
}

/// Decides, from the workers' total busy time read every [`CHECK_EVERY`],
/// when to give memory back: once per quiet spell that follows work.
#[derive(Debug, Default)]
pub struct Scavenger {
    /// Busy time at the previous reading.
    last: Duration,
    /// Busy time at the last trim.
    at_trim: Duration,
}

impl Scavenger {
    /// Takes a reading of the workers' total busy time; true when it is time to trim.
    pub fn tick(&mut self, busy: Duration) -> bool {
        let recent = busy.saturating_sub(self.last);
        self.last = busy;
        if recent < QUIET_BUSY && busy.saturating_sub(self.at_trim) >= WORK_SINCE_TRIM {
            self.at_trim = busy;
            true
        } else {
            false
        }
    }
}

/// The total time the runtime's workers have spent busy.
fn busy(metrics: &RuntimeMetrics) -> Duration {
    (0..metrics.num_workers()).map(|worker| metrics.worker_total_busy_duration(worker)).sum()
}

/// Starts the process's scavenger thread for the current tokio runtime,
/// once per process (the allocator is the process's, whichever service
/// starts it); later calls do nothing. Must be called within a runtime.
pub fn give_back_when_quiet() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let metrics = tokio::runtime::Handle::current().metrics();
        let thread = std::thread::Builder::new().name("give-back".into()).spawn(move || {
            let mut scavenger = Scavenger::default();
            loop {
                std::thread::sleep(CHECK_EVERY);
                if scavenger.tick(busy(&metrics)) {
                    let before = proc_status_kib("self", "RssAnon");
                    let started = std::time::Instant::now();
                    let gave = give_back();
                    tracing::debug!(
                        gave,
                        took_us = started.elapsed().as_micros() as u64,
                        before_kib = before,
                        after_kib = proc_status_kib("self", "RssAnon"),
                        "returned the allocator's free memory to the system"
                    );
                }
            }
        });
        if let Err(error) = thread {
            tracing::warn!(%error, "could not start the thread that returns free memory to the system");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_per_quiet_spell_after_work() {
        let ms = Duration::from_millis;
        let mut s = Scavenger::default();
        assert!(!s.tick(ms(0)), "nothing done yet");
        assert!(!s.tick(ms(400)), "busy: not quiet");
        assert!(!s.tick(ms(900)), "still busy");
        assert!(s.tick(ms(905)), "quiet after work: trim");
        assert!(!s.tick(ms(906)), "still quiet, but nothing new since the trim");
        assert!(!s.tick(ms(908)), "probes alone are not worth a trim");
        assert!(!s.tick(ms(2000)), "busy again");
        assert!(s.tick(ms(2001)), "quiet again after work: trim again");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_status_field_is_read_by_its_whole_name() {
        let rss = proc_status_kib("self", "VmRSS").expect("VmRSS of this process");
        assert!(rss > 0);
        assert!(proc_status_kib(&std::process::id().to_string(), "VmRSS").is_some(), "by process id too");
        assert!(proc_status_kib("self", "RssAnon").is_some_and(|anon| anon <= rss));
        assert_eq!(proc_status_kib("self", "VmRS"), None, "a prefix of a name is not the name");
        assert_eq!(proc_status_kib("self", "Name"), None, "not a number");
        assert_eq!(proc_status_kib("0", "VmRSS"), None, "no such process");
    }

    #[test]
    fn probes_add_up_to_a_trim_now_and_then() {
        let mut s = Scavenger::default();
        let trims = (1..=100u64).filter(|i| s.tick(Duration::from_millis(2 * i))).count();
        assert_eq!(trims, 20, "one trim per 10 ms of accumulated quiet work");
    }
}
