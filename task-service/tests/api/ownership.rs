//! Ownership is absolute: another user's task answers exactly like a
//! missing one on every RPC, and never shows up in a list.

use taskgate_proto::task::v1::{Task, TaskStatus};
use tonic::Code;

use crate::helpers::{assert_code, spawn_app};

#[tokio::test]
async fn another_users_task_is_not_found_on_every_rpc_and_never_listed() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let bob = app.user().await;
    let hers = app.create(&alice, "alice's").await;
    let his = app.create(&bob, "bob's").await;
    // Warm both users' cached lists first, so the cache is part of the test.
    assert_eq!(app.first_page(&alice, 0).await, vec![hers.clone()]);
    assert_eq!(app.first_page(&bob, 0).await, vec![his.clone()]);

    let missing = uuid::Uuid::new_v4().to_string();
    let foreign = assert_code(app.get(&bob, &hers.id).await, Code::NotFound);
    let absent = assert_code(app.get(&bob, &missing).await, Code::NotFound);
    assert_eq!(foreign.message(), absent.message(), "no way to tell someone else's id from a missing one");

    let takeover = Task { id: hers.id.clone(), title: "mine now".into(), ..Default::default() };
    assert_code(app.update(&bob, takeover.clone(), None).await, Code::NotFound);
    let patch = Task { status: TaskStatus::Done as i32, ..takeover };
    assert_code(app.update(&bob, patch, Some(&["status"])).await, Code::NotFound);
    assert_code(app.delete(&bob, &hers.id).await, Code::NotFound);

    assert_eq!(app.get(&alice, &hers.id).await.expect("still hers"), hers, "unchanged by bob's attempts");
    assert_eq!(app.first_page(&alice, 500).await, vec![hers.clone()]);
    assert_eq!(app.first_page(&bob, 500).await, vec![his.clone()]);
    for status in [TaskStatus::Todo, TaskStatus::InProgress, TaskStatus::Done] {
        assert!(app.list_all(&bob, 10, status).await.iter().all(|t| t.id != hers.id));
    }
}

#[tokio::test]
async fn a_page_token_from_another_user_only_walks_the_callers_own_tasks() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let bob = app.user().await;
    app.insert_tasks(alice.id, 10, "a").await;
    app.insert_tasks(bob.id, 10, "b").await;
    let alices = app
        .list(&alice, taskgate_proto::task::v1::ListTasksRequest { page_size: 3, ..Default::default() })
        .await
        .expect("list");
    let request = taskgate_proto::task::v1::ListTasksRequest {
        page_size: 50,
        page_token: alices.next_page_token,
        ..Default::default()
    };
    let page = app.list(&bob, request).await.expect("bob lists with alice's token");
    assert!(page.tasks.iter().all(|t| t.title.starts_with('b')), "only bob's tasks");
}
