//! WatchTasks: events in order, resume without loss, delivery across
//! replicas, the end of a revoked session, the per-user limit, and slow
//! readers.

use std::time::Duration;

use taskgate_proto::{
    auth::v1::LogoutRequest,
    task::v1::{ListTasksRequest, Task, TaskEventType, WatchTasksRequest, task_service_client::TaskServiceClient},
};
use tonic::{Code, transport::Endpoint};
use tonic_types::StatusExt as _;

use crate::helpers::{authed, end_of, next_event, spawn_app, spawn_app_with};

#[tokio::test]
async fn a_watcher_sees_create_update_and_delete_from_another_connection_in_order() {
    let app = spawn_app().await;
    let user = app.user().await;
    let mut stream = app.watch(&user, 0).await.expect("watch");
    let writer = app.new_client().await;
    let created = app.create(&user, "first").await;
    let updated = app
        .update(&user, Task { id: created.id.clone(), title: "renamed".into(), ..Default::default() }, Some(&["title"]))
        .await
        .expect("update");
    let mut client = writer.clone();
    client
        .delete_task(authed(
            &user.token,
            taskgate_proto::task::v1::DeleteTaskRequest { id: created.id.clone(), ..Default::default() },
        ))
        .await
        .expect("delete");

    let first = next_event(&mut stream).await.expect("created event");
    assert_eq!(first.r#type, TaskEventType::Created as i32);
    assert_eq!(first.task.as_ref().map(|t| t.title.as_str()), Some("first"));
    let second = next_event(&mut stream).await.expect("updated event");
    assert_eq!(second.r#type, TaskEventType::Updated as i32);
    assert_eq!(second.task.as_ref(), Some(&updated), "the event carries the task after the change");
    let third = next_event(&mut stream).await.expect("deleted event");
    assert_eq!(third.r#type, TaskEventType::Deleted as i32);
    assert_eq!(third.task.as_ref().map(|t| t.id.as_str()), Some(created.id.as_str()));
    assert_eq!(second.version, first.version + 1, "versions go up by one per event");
    assert_eq!(third.version, second.version + 1);
}

#[tokio::test]
async fn a_watcher_never_sees_another_users_events() {
    let app = spawn_app().await;
    let (alice, bob) = (app.user().await, app.user().await);
    let mut stream = app.watch(&alice, 0).await.expect("watch");
    app.create(&bob, "bob's").await;
    app.create(&alice, "alice's").await;
    let event = next_event(&mut stream).await.expect("an event");
    assert_eq!(event.task.map(|t| t.title), Some("alice's".to_owned()));
}

#[tokio::test]
async fn a_watcher_that_reconnects_with_since_misses_nothing_written_while_it_was_away() {
    let app = spawn_app().await;
    let user = app.user().await;
    app.create(&user, "before the list").await;
    let listed = app.list(&user, ListTasksRequest::default()).await.expect("list");
    assert!(listed.version > 0, "a list answers its version");

    let mut stream = app.watch(&user, listed.version).await.expect("watch");
    app.create(&user, "seen live").await;
    let live = next_event(&mut stream).await.expect("live event");
    assert_eq!(live.version, listed.version + 1);
    drop(stream);

    // Away: three writes nobody watches.
    for title in ["away 1", "away 2", "away 3"] {
        app.create(&user, title).await;
    }
    let mut stream = app.watch(&user, live.version).await.expect("watch again");
    let mut titles = Vec::new();
    for _ in 0..3 {
        titles.push(next_event(&mut stream).await.expect("replayed event").task.expect("task").title);
    }
    assert_eq!(titles, ["away 1", "away 2", "away 3"]);
    app.create(&user, "live again").await;
    let next = next_event(&mut stream).await.expect("live after replay");
    assert_eq!(next.task.map(|t| t.title), Some("live again".to_owned()));
    assert_eq!(next.version, live.version + 4);
}

#[tokio::test]
async fn a_since_older_than_the_log_asks_the_client_to_list_again() {
    let app = spawn_app_with(taskgate_test_support::fresh_database().await, taskgate_test_support::redis_url(), |s| {
        s.watch_event_log_length = 10
    })
    .await;
    let user = app.user().await;
    let listed = app.list(&user, ListTasksRequest::default()).await.expect("list");
    // Redis trims whole blocks of 100 entries, so write well past them.
    for i in 0..250 {
        app.create(&user, &format!("t{i}")).await;
    }
    let mut stream = app.watch(&user, listed.version).await.expect("the stream opens");
    let status = end_of(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let reason = status.get_error_details().error_info().map(|i| i.reason.clone());
    assert_eq!(reason.as_deref(), Some("LIST_AGAIN"));

    // A version from nowhere is refused the same way.
    let mut stream = app.watch(&user, listed.version + 1_000_000).await.expect("the stream opens");
    assert_eq!(end_of(&mut stream, Duration::from_secs(5)).await.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn two_task_service_replicas_deliver_across_each_other() {
    let a = spawn_app().await;
    let b = a.replica(a.redis_url.clone()).await;
    let user = a.user().await;
    let mut on_a = a.watch(&user, 0).await.expect("watch on a");
    let mut on_b = b.watch(&user, 0).await.expect("watch on b");
    b.create(&user, "written through b").await;
    a.create(&user, "written through a").await;
    for stream in [&mut on_a, &mut on_b] {
        let first = next_event(stream).await.expect("first");
        let second = next_event(stream).await.expect("second");
        assert_eq!(first.task.map(|t| t.title), Some("written through b".to_owned()));
        assert_eq!(second.task.map(|t| t.title), Some("written through a".to_owned()));
    }
}

#[tokio::test]
async fn logout_elsewhere_ends_the_stream_with_unauthenticated() {
    let app = spawn_app_with(taskgate_test_support::fresh_database().await, taskgate_test_support::redis_url(), |s| {
        s.watch_check_seconds = 1
    })
    .await;
    let name = taskgate_test_support::username();
    let auth = app.auth();
    taskgate_test_support::register(&auth, &name).await;
    let laptop = taskgate_test_support::login(&auth, &name).await;
    let phone = taskgate_test_support::login(&auth, &name).await;
    let user = crate::helpers::TestUser {
        id: uuid::Uuid::nil(), // unused here
        token: laptop.access_token.clone(),
    };
    let mut stream = app.watch(&user, 0).await.expect("watch");

    // The phone ends the laptop's session (its refresh token, as a "log out
    // that device" screen would).
    let mut other = auth.clone();
    other
        .logout(authed(&phone.access_token, LogoutRequest { refresh_token: laptop.refresh_token.clone() }))
        .await
        .expect("logout");
    let status = end_of(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // The phone's own session still watches.
    let phone_user = crate::helpers::TestUser { id: uuid::Uuid::nil(), token: phone.access_token };
    assert!(app.watch(&phone_user, 0).await.is_ok());
}

#[tokio::test]
async fn the_sixth_stream_of_a_user_is_refused_and_a_closed_one_frees_its_place() {
    let a = spawn_app().await;
    let b = a.replica(a.redis_url.clone()).await;
    let user = a.user().await;
    let mut open = Vec::new();
    for i in 0..5 {
        let app = if i % 2 == 0 { &a } else { &b };
        open.push(app.watch(&user, 0).await.expect("one of the first five"));
    }
    let sixth = b.watch(&user, 0).await.map(|_| ()).expect_err("the sixth is refused");
    assert_eq!(sixth.code(), Code::ResourceExhausted, "counted across replicas: {sixth:?}");
    // Another user is not affected.
    let other = a.user().await;
    assert!(a.watch(&other, 0).await.is_ok());

    drop(open.pop());
    let reopened =
        crate::helpers::eventually(Duration::from_secs(5), || async { a.watch(&user, 0).await.is_ok() }).await;
    assert!(reopened, "a closed stream's place is freed");
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_disconnected_and_the_servers_buffer_stays_bounded() {
    let app = spawn_app_with(taskgate_test_support::fresh_database().await, taskgate_test_support::redis_url(), |s| {
        s.watch_send_timeout_seconds = 1
    })
    .await;
    let user = app.user().await;
    // A client with small HTTP/2 windows, so its not reading pushes back
    // on the server quickly.
    let channel = Endpoint::from_shared(format!("http://{}", app.addr))
        .expect("url")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .expect("connect");
    let mut slow = TaskServiceClient::new(channel)
        .watch_tasks(authed(&user.token, WatchTasksRequest { since: 0 }))
        .await
        .expect("watch")
        .into_inner();

    let writes = 150;
    let big = "x".repeat(9_000);
    for i in 0..writes {
        app.try_create(&user, Task { title: format!("t{i}"), description: big.clone(), ..Default::default() })
            .await
            .expect("create");
    }
    let ended = crate::helpers::eventually(Duration::from_secs(10), || async {
        app.metrics.watch_slow_readers() == 1 && app.metrics.watch_streams() == 0
    })
    .await;
    assert!(ended, "the stream of a reader that stopped reading is ended on the server");

    // Reading now yields what was in flight, then the reason; never all of it.
    let mut received = 0;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(5), slow.message()).await.expect("no hang") {
            Ok(Some(_)) => received += 1,
            Ok(None) => panic!("ended without a status after {received} events"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(received < writes, "the server dropped the stream instead of buffering all {writes} events ({received})");
}

#[tokio::test]
async fn one_connection_carries_hundreds_of_streams() {
    // The gateway sends every stream of its replica over one connection: a
    // per-connection stream limit below its GATEWAY_MAX_WATCH_STREAMS would
    // stall the streams past it.
    let streams = 300;
    let app = spawn_app_with(taskgate_test_support::fresh_database().await, taskgate_test_support::redis_url(), |s| {
        s.watch_max_streams_per_user = 400;
    })
    .await;
    let user = app.user().await;
    let mut open = Vec::new();
    for i in 0..streams {
        let stream = tokio::time::timeout(Duration::from_secs(10), app.watch(&user, 0))
            .await
            .unwrap_or_else(|_| panic!("stream {i} was not opened within 10 s"))
            .expect("opening a stream");
        open.push(stream);
    }
    let task = app.create(&user, "seen by the last stream").await;
    let last = open.last_mut().expect("streams");
    let event = next_event(last).await.expect("an event on the last stream");
    assert_eq!(event.task.map(|t| t.id), Some(task.id));
}
