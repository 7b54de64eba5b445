//! The scavenger end to end (#12): a service that worked and then went quiet
//! gives the memory it freed back to the system within two checks, without
//! anyone calling it. Its own process, so no other test trims for it.

#![cfg(all(target_os = "linux", target_env = "gnu"))]

use std::time::{Duration, Instant};

use taskgate_common::memory::{CHECK_EVERY, give_back_when_quiet, proc_status_kib};

/// Anonymous resident memory of this process, in KiB.
fn rss_anon_kib() -> u64 {
    proc_status_kib("self", "RssAnon").expect("/proc/self/status has RssAnon")
}

#[test]
fn memory_freed_by_a_burst_is_given_back_once_the_runtime_goes_quiet() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        give_back_when_quiet();
        // A burst on a worker: 64 MiB in 64 KiB pieces (on the heap, below glibc's mmap threshold),
        // each followed by a small piece that stays, then the big ones freed: holes glibc keeps.
        let kept = tokio::spawn(async {
            let started = Instant::now();
            let mut big: Vec<Vec<u8>> = Vec::new();
            let mut kept: Vec<Vec<u8>> = Vec::new();
            for _ in 0..1024 {
                big.push(vec![1u8; 64 * 1024]);
                kept.push(vec![1u8; 64]);
            }
            drop(big);
            // Enough busy time for the scavenger to count it as work.
            while started.elapsed() < Duration::from_millis(50) {
                std::hint::spin_loop();
            }
            kept
        })
        .await
        .expect("burst");
        let before = rss_anon_kib();
        let deadline = Instant::now() + 3 * CHECK_EVERY;
        loop {
            let now = rss_anon_kib();
            if before.saturating_sub(now) > 32 * 1024 {
                break;
            }
            assert!(Instant::now() < deadline, "still {now} KiB resident, from {before}, after {:?}", 3 * CHECK_EVERY);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(kept.len(), 1024, "live memory untouched");
    });
}
