//! Stopping a replica: an open WatchTasks stream (which never ends by
//! itself) is ended with UNAVAILABLE when the stop begins, so its client
//! watches again elsewhere and the replica does not wait out its drain.

use std::time::{Duration, Instant};

use task_service::{Application, Settings};
use taskgate_proto::task::v1::{WatchTasksRequest, task_service_client::TaskServiceClient};
use tokio::sync::oneshot;
use tonic::Code;

use crate::helpers::{authed, spawn_app};

#[tokio::test]
async fn a_stopping_replica_ends_open_watch_streams_with_unavailable_at_once() {
    let app = spawn_app().await;
    let user = app.user().await;
    let settings = Settings::for_tests(
        app.database_url.clone(),
        app.redis_url.clone(),
        app.redis_prefix.clone(),
        app.auth_url.clone(),
    );
    let replica = Application::build(settings).await.expect("building a replica");
    let addr = replica.local_addr();
    let drain = Duration::from_secs(20);
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(replica.run_until_stopped_draining(
        async move {
            let _ = stopped.await;
        },
        drain,
    ));
    let mut client = TaskServiceClient::connect(format!("http://{addr}")).await.expect("connecting to the replica");
    let mut stream = client
        .watch_tasks(authed(&user.token, WatchTasksRequest { since: 0 }))
        .await
        .expect("a watch stream")
        .into_inner();

    let asked = Instant::now();
    stop.send(()).expect("the replica is running");
    // The client learns at once that it must watch again.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("the watch stream was still open after its replica began to stop");
    let status = ended.expect("the stream ended with a status, not a silent end");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("since"), "the message says how to resume: {status:?}");

    // Nothing else was open, so the replica stops without waiting out its drain.
    let stopped = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the replica stopped soon after its watch streams ended")
        .expect("the replica's task");
    stopped.expect("a clean stop");
    let took = asked.elapsed();
    assert!(took < drain / 2, "stopped after {took:?}: the open stream held the stop back");
}
