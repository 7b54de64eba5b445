//! A Redis Cluster primary dies under load and its replica takes over: the fleet recovers by
//! itself. Task reads never fail (the cache is bypassed and the revocation check fails open while
//! Redis is away); auth calls answer UNAVAILABLE at worst while the slot has no primary, and none
//! after.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use taskgate_proto::{
    auth::v1::GetMeRequest,
    task::v1::{CreateTaskRequest, ListTasksRequest, Task},
};
use taskgate_test_support::bearer;
use tonic::Code;

use fleet_tests::fleet::{Size, spawn_fleet};

/// How long after the cluster is whole again the services may still be reconnecting (fred's
/// reconnect back-off is capped at 2 s).
const SETTLE: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_redis_primary_under_load_fails_no_task_read_and_auth_recovers_by_itself() {
    // One seed node in the URL: the services discover the rest of the cluster themselves.
    let mut fleet = spawn_fleet(Size { auths: 1, tasks: 1, gateways: 1 }, |cluster| cluster.seed_url()).await;
    // The limit is per user and per minute: one user per 90 calls keeps the load under it.
    let mut users = Vec::new();
    for i in 0..6 {
        users.push(fleet.user(i).await);
    }
    let (uid, first) = users[0].clone();
    fleet
        .task_via(0)
        .create_task(bearer(
            CreateTaskRequest {
                task: Some(Task { title: "before the failover".into(), ..Default::default() }),
                ..Default::default()
            },
            &first.access_token,
        ))
        .await
        .expect("a write before the failover");

    // Load: task reads and GetMe calls through the gateway, each outcome noted with its time.
    let outcomes: Arc<Mutex<Vec<(Instant, &'static str, Code)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let task = fleet.task_via(0);
    let auth = fleet.auth_via(0);
    let load = {
        let (outcomes, stop) = (outcomes.clone(), stop.clone());
        let tokens: Vec<String> = users.iter().map(|(_, t)| t.access_token.clone()).collect();
        tokio::spawn(async move {
            let mut calls = 0usize;
            while !stop.load(Ordering::Relaxed) {
                // Two calls per round, a new user every 40 rounds.
                let token = &tokens[(calls / 80) % tokens.len()];
                let read = task.clone().list_tasks(bearer(ListTasksRequest::default(), token)).await;
                let me = auth.clone().get_me(bearer(GetMeRequest {}, token)).await;
                let now = Instant::now();
                {
                    let mut noted = outcomes.lock().expect("outcomes");
                    noted.push((now, "task read", read.map_or_else(|s| s.code(), |_| Code::Ok)));
                    noted.push((now, "auth call", me.map_or_else(|s| s.code(), |_| Code::Ok)));
                }
                calls += 2;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    tokio::time::sleep(Duration::from_millis(500)).await;
    let key = taskgate_common::keys::user_key(&fleet.prefix, &uid, "sess");
    let killed = fleet.redis.kill_primary_for(&key);
    let deadline = Instant::now() + Duration::from_secs(20);
    while fleet.redis.primary_for(&key).is_none_or(|p| p == killed) {
        assert!(Instant::now() < deadline, "no replica took the slot over within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let healed = Instant::now();
    tokio::time::sleep(SETTLE + Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.expect("the load task");

    let outcomes = outcomes.lock().expect("outcomes").clone();
    let reads: Vec<_> = outcomes.iter().filter(|(_, what, _)| *what == "task read").collect();
    assert!(reads.len() > 50, "the load ran: {} reads", reads.len());
    let failed_reads: Vec<_> = reads.iter().filter(|(_, _, code)| *code != Code::Ok).collect();
    assert!(failed_reads.is_empty(), "task reads failed during the failover: {failed_reads:?}");
    for (at, _, code) in outcomes.iter().filter(|(_, what, _)| *what == "auth call") {
        assert!(
            matches!(code, Code::Ok | Code::Unavailable),
            "an auth call answered {code:?} during the failover (only UNAVAILABLE is acceptable)"
        );
        assert!(
            *code == Code::Ok || *at < healed + SETTLE,
            "an auth call answered {code:?} {:?} after the cluster healed",
            at.duration_since(healed)
        );
    }
    let after: Vec<_> = outcomes.iter().filter(|(at, _, _)| *at >= healed + SETTLE).collect();
    assert!(after.len() > 20, "calls ran after the failover: {}", after.len());
}
