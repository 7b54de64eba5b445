//! Two gateways, three task-service replicas and two auth-service replicas on a Redis Cluster,
//! under load: one limit, one logout, one view of the data, an even spread, and a replica killed
//! without losing an acknowledged write or failing a read.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use taskgate_proto::{
    auth::v1::LogoutRequest,
    task::v1::{CreateTaskRequest, GetTaskRequest, ListTasksRequest, Task},
};
use taskgate_test_support::bearer;
use tonic::Code;

use fleet_tests::fleet::{Fleet, Size, spawn_fleet};

/// The fleet the issue asks for.
const FLEET: Size = Size { auths: 2, tasks: 3, gateways: 2 };

/// A ListTasks through gateway `gateway` over native gRPC.
async fn list_grpc(fleet: &Fleet, gateway: usize, token: &str) -> Result<Vec<Task>, tonic::Status> {
    let response = fleet
        .task_via(gateway)
        .list_tasks(bearer(ListTasksRequest { page_size: 100, ..Default::default() }, token))
        .await?;
    Ok(response.into_inner().tasks)
}

/// A ListTasks through gateway `gateway` over REST; the HTTP status.
async fn list_rest(fleet: &Fleet, gateway: usize, token: &str) -> u16 {
    let response = fleet
        .http
        .get(fleet.url(gateway, "/api/v1/tasks"))
        .bearer_auth(token)
        .send()
        .await
        .expect("a REST call reaches the gateway");
    response.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_on_a_redis_cluster_behaves_as_one_service_under_load() {
    let mut fleet = spawn_fleet(FLEET, |cluster| cluster.url()).await;

    // 1. The 101st request in a minute is refused, whichever gateway and protocol it takes: 100
    //    calls at once, spread over both gateways and over gRPC and REST, all pass; then every
    //    gateway refuses on every protocol.
    let (_, limited) = fleet.user(0).await;
    let token = limited.access_token.as_str();
    let calls = (0..100).map(|i| {
        let fleet = &fleet;
        async move {
            if i % 2 == 0 {
                list_grpc(fleet, i % 4 / 2, token).await.map(|_| 200).unwrap_or_else(|s| panic!("call {i}: {s:?}"))
            } else {
                list_rest(fleet, i % 4 / 2, token).await
            }
        }
    });
    let statuses = futures::future::join_all(calls).await;
    assert!(statuses.iter().all(|s| *s == 200), "the first 100 calls must pass: {statuses:?}");
    for gateway in 0..2 {
        let refused = list_grpc(&fleet, gateway, token).await.expect_err("the 101st gRPC call");
        assert_eq!(refused.code(), Code::ResourceExhausted, "gateway {gateway} over gRPC");
        assert_eq!(list_rest(&fleet, gateway, token).await, 429, "gateway {gateway} over REST");
    }

    // 2. A logout through one gateway refuses the token at the other at once.
    let (_, session) = fleet.user(1).await;
    list_grpc(&fleet, 1, &session.access_token).await.expect("signed in at gateway 1");
    fleet
        .auth_via(0)
        .logout(bearer(LogoutRequest { refresh_token: session.refresh_token.clone() }, &session.access_token))
        .await
        .expect("logout through gateway 0");
    let refused = list_grpc(&fleet, 1, &session.access_token).await.expect_err("the token after logout");
    assert_eq!(refused.code(), Code::Unauthenticated, "gateway 1 must refuse a logged-out token at once");

    // 3. Read-your-writes across replicas: a write acknowledged by one task replica is seen by
    //    the very next read at every other one (the list cache is shared and invalidated first).
    let (_, writer) = fleet.user(0).await;
    for round in 0..6 {
        let (w, r) = (round % 3, (round + 1) % 3);
        let created = fleet
            .task_direct(w)
            .create_task(bearer(
                CreateTaskRequest {
                    task: Some(Task { title: format!("round {round}"), ..Default::default() }),
                    ..Default::default()
                },
                &writer.access_token,
            ))
            .await
            .expect("create at one replica")
            .into_inner()
            .task
            .expect("the created task");
        let listed = fleet
            .task_direct(r)
            .list_tasks(bearer(ListTasksRequest { page_size: 100, ..Default::default() }, &writer.access_token))
            .await
            .expect("list at another replica")
            .into_inner()
            .tasks;
        assert!(listed.iter().any(|t| t.id == created.id), "replica {r} did not list what replica {w} wrote");
        fleet
            .task_direct(r)
            .get_task(bearer(GetTaskRequest { id: created.id.clone() }, &writer.access_token))
            .await
            .expect("get at another replica");
    }

    // 4. Load spreads over the three task replicas within ±25% of the mean: 4 users (the limit is
    //    per user), 75 reads each, 8 in flight, through both gateways.
    let mut readers = Vec::new();
    for i in 0..4 {
        readers.push(fleet.user(i).await.1.access_token);
    }
    let before: Vec<u64> = fleet.tasks.iter().map(|t| t.reads()).collect();
    let reads = readers.iter().flat_map(|token| (0..75).map(move |i| (token.clone(), i % 2)));
    let fleet_ref = &fleet;
    let results: Vec<_> = futures::StreamExt::collect(futures::StreamExt::buffer_unordered(
        futures::stream::iter(reads.map(|(token, gateway)| async move { list_grpc(fleet_ref, gateway, &token).await })),
        8,
    ))
    .await;
    assert!(results.iter().all(Result::is_ok), "every read passes: {:?}", results.iter().find(|r| r.is_err()));
    let served: Vec<u64> = fleet.tasks.iter().zip(&before).map(|(t, b)| t.reads() - b).collect();
    let mean = served.iter().sum::<u64>() as f64 / served.len() as f64;
    assert!(mean >= 99.0, "300 reads reached the replicas: {served:?}");
    for (i, n) in served.iter().enumerate() {
        let off = (*n as f64 - mean).abs() / mean;
        assert!(off <= 0.25, "task replica {i} served {n} of {served:?} reads: more than 25% off the mean");
    }

    // 5. Kill a task replica mid-load: writes and reads go on through both gateways; every write
    //    that was acknowledged is there afterwards, and no read fails (a read that hit the dying
    //    replica is retried once on another).
    let mut workers = Vec::new();
    let stop = Arc::new(AtomicBool::new(false));
    for w in 0..4 {
        let (_, tokens) = fleet.user(w).await;
        let (auth, task) = (fleet.task_via(w % 2), fleet.task_via((w + 1) % 2));
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let token = tokens.access_token;
            let (mut acknowledged, mut read_failures, mut reads) = (Vec::new(), Vec::new(), 0);
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 40 {
                n += 1;
                let create = CreateTaskRequest {
                    task: Some(Task { title: format!("w{w} #{n}"), ..Default::default() }),
                    ..Default::default()
                };
                if let Ok(created) = auth.clone().create_task(bearer(create, &token)).await {
                    acknowledged.extend(created.into_inner().task.map(|t| t.id));
                }
                reads += 1;
                let listed = task
                    .clone()
                    .list_tasks(bearer(ListTasksRequest { page_size: 5, ..Default::default() }, &token))
                    .await;
                if let Err(status) = listed {
                    read_failures.push(status);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (token, acknowledged, read_failures, reads)
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    fleet.tasks[0].kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let (token, acknowledged, read_failures, reads) = worker.await.expect("a load worker");
        assert!(reads > 5, "the worker kept reading");
        assert!(read_failures.is_empty(), "reads failed after the retry: {read_failures:?}");
        assert!(!acknowledged.is_empty(), "some writes were acknowledged");
        for id in acknowledged {
            // Straight to a surviving replica: the check must not eat the user's rate limit.
            fleet
                .task_direct(1)
                .get_task(bearer(GetTaskRequest { id: id.clone() }, &token))
                .await
                .unwrap_or_else(|s| panic!("acknowledged task {id} lost after the kill: {s:?}"));
        }
    }
}
