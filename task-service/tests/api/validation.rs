//! Bad input: INVALID_ARGUMENT with a BadRequest detail naming the field,
//! and nothing written.

use taskgate_proto::task::v1::{ListTasksRequest, Task, TaskStatus, rules::TASK_TITLE_MAX_LEN};
use tonic_types::StatusExt as _;

use crate::helpers::{assert_invalid, spawn_app};

fn titled(title: &str) -> Task {
    Task { title: title.into(), ..Default::default() }
}

#[tokio::test]
async fn create_rejects_each_bad_field_and_writes_nothing() {
    let app = spawn_app().await;
    let user = app.user().await;
    assert_invalid(app.try_create(&user, titled("")).await, "title");
    assert_invalid(app.try_create(&user, titled("   \t ")).await, "title");
    assert_invalid(app.try_create(&user, titled(&"x".repeat(201))).await, "title");
    assert_invalid(app.try_create(&user, titled("nul \0 inside")).await, "title");
    let long = Task { description: "d".repeat(10_001), ..titled("ok") };
    assert_invalid(app.try_create(&user, long).await, "description");
    let unknown = Task { status: 9, ..titled("ok") };
    assert_invalid(app.try_create(&user, unknown).await, "status");
    assert_eq!(app.count_tasks(user.id).await, 0, "nothing was written");
    // The limits themselves are accepted.
    let edge = Task { description: "d".repeat(10_000), ..titled(&"é".repeat(200)) };
    app.try_create(&user, edge).await.expect("200-character title and 10,000-character description");
}

#[tokio::test]
async fn every_bad_field_of_one_request_is_reported() {
    let app = spawn_app().await;
    let user = app.user().await;
    let bad = Task { title: String::new(), description: "d".repeat(10_001), status: 42, ..Default::default() };
    let result = app.try_create(&user, bad).await;
    for field in ["title", "description", "status"] {
        assert_invalid(result.clone(), field);
    }
}

#[tokio::test]
async fn malformed_ids_are_rejected_on_get_update_and_delete() {
    let app = spawn_app().await;
    let user = app.user().await;
    assert_invalid(app.get(&user, "not-a-uuid").await, "id");
    assert_invalid(app.delete(&user, "").await, "id");
    assert_invalid(app.update(&user, Task { id: "42".into(), ..titled("x") }, None).await, "id");
}

#[tokio::test]
async fn update_rejects_bad_fields_and_unknown_mask_paths_and_changes_nothing() {
    let app = spawn_app().await;
    let user = app.user().await;
    let task = app.create(&user, "original").await;
    let id = task.id.clone();
    assert_invalid(app.update(&user, Task { id: id.clone(), ..titled("") }, None).await, "title");
    assert_invalid(app.update(&user, Task { id: id.clone(), ..titled(" ") }, Some(&["title"])).await, "title");
    let long = Task { id: id.clone(), description: "d".repeat(10_001), ..titled("x") };
    assert_invalid(app.update(&user, long, Some(&["description"])).await, "description");
    let status = Task { id: id.clone(), status: -1, ..titled("x") };
    assert_invalid(app.update(&user, status, Some(&["status"])).await, "status");
    assert_invalid(app.update(&user, Task { id: id.clone(), ..titled("x") }, Some(&["owner_id"])).await, "update_mask");
    assert_invalid(
        app.update(&user, Task { id: id.clone(), ..titled("x") }, Some(&["created_at"])).await,
        "update_mask",
    );
    assert_eq!(app.get(&user, &id).await.expect("get"), task, "the task is unchanged");
}

#[tokio::test]
async fn list_rejects_bad_page_sizes_statuses_and_tokens() {
    let app = spawn_app().await;
    let user = app.user().await;
    assert_invalid(app.list(&user, ListTasksRequest { page_size: -1, ..Default::default() }).await, "page_size");
    assert_invalid(app.list(&user, ListTasksRequest { status: 7, ..Default::default() }).await, "status");
    let garbage = ListTasksRequest { page_token: "garbage!".into(), ..Default::default() };
    assert_invalid(app.list(&user, garbage).await, "page_token");

    // A real token, damaged by one character, and a real token used with
    // another status filter.
    app.insert_tasks(user.id, 5, "t").await;
    let page = app.list(&user, ListTasksRequest { page_size: 2, ..Default::default() }).await.expect("list");
    let token = page.next_page_token;
    assert!(!token.is_empty());
    let mut damaged = token.clone().into_bytes();
    damaged[3] = if damaged[3] == b'A' { b'B' } else { b'A' };
    let damaged = String::from_utf8(damaged).expect("ascii");
    let request = ListTasksRequest { page_size: 2, page_token: damaged, ..Default::default() };
    assert_invalid(app.list(&user, request).await, "page_token");
    let request = ListTasksRequest { page_size: 2, page_token: token, status: TaskStatus::Done as i32 };
    assert_invalid(app.list(&user, request).await, "page_token");
}

#[tokio::test]
async fn the_rules_declared_in_the_proto_are_enforced_over_grpc() {
    let app = spawn_app().await;
    let user = app.user().await;
    // One character over `Task.title`'s max_len (after trimming).
    let over = format!(" {} ", "t".repeat(TASK_TITLE_MAX_LEN + 1));
    let status = app.try_create(&user, titled(&over)).await.expect_err("a title over the declared max_len");
    assert_invalid(Err::<(), _>(status.clone()), "title");
    let details = status.get_error_details();
    let violation = &details.bad_request().expect("a BadRequest detail").field_violations[0];
    assert!(violation.description.contains(&TASK_TITLE_MAX_LEN.to_string()), "{violation:?}");
    assert_eq!(app.count_tasks(user.id).await, 0, "nothing was created");
    // Padding does not count: at the limit once trimmed, it is accepted.
    let padded = format!("  {}  ", "t".repeat(TASK_TITLE_MAX_LEN));
    app.try_create(&user, titled(&padded)).await.expect("a title at the limit once trimmed");

    let task = app.create(&user, "original").await;
    // The contract holds for every field of the message, including one the
    // update mask leaves alone (the domain would never read that title).
    let update = Task { id: task.id.clone(), ..titled(&"t".repeat(TASK_TITLE_MAX_LEN + 1)) };
    assert_invalid(app.update(&user, update, Some(&["status"])).await, "title");
    // `GetTaskRequest.id` must be a UUID in its canonical form; the braced
    // form the domain parser reads is refused by the contract first.
    assert_invalid(app.get(&user, &format!("{{{}}}", task.id)).await, "id");
    assert_eq!(app.get(&user, &task.id).await.expect("get"), task, "the task is unchanged");
}
