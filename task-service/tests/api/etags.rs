//! Etags (AIP-154): every write changes a task's etag; a write that names a
//! stale one fails with ABORTED; writes without one behave as before.

use taskgate_proto::task::v1::{DeleteTaskRequest, Task};
use tonic::Code;

use crate::helpers::{assert_code, assert_invalid, authed, spawn_app};

#[tokio::test]
async fn every_write_changes_the_etag() {
    let app = spawn_app().await;
    let user = app.user().await;
    let created = app.create(&user, "t").await;
    assert!(!created.etag.is_empty());
    let updated = app
        .update(&user, Task { id: created.id.clone(), title: "u".into(), ..Default::default() }, Some(&["title"]))
        .await
        .expect("update");
    assert_ne!(updated.etag, created.etag);
    assert_eq!(app.get(&user, &created.id).await.expect("get").etag, updated.etag);
}

#[tokio::test]
async fn two_concurrent_updates_with_the_same_etag_give_exactly_one_success_and_one_aborted() {
    let app = spawn_app().await;
    let user = app.user().await;
    let created = app.create(&user, "shared").await;
    for round in 0..5 {
        let current = app.get(&user, &created.id).await.expect("get");
        let edit =
            |title: String| Task { id: created.id.clone(), title, etag: current.etag.clone(), ..Default::default() };
        let (one, two) = tokio::join!(
            app.update(&user, edit(format!("laptop {round}")), Some(&["title"])),
            app.update(&user, edit(format!("phone {round}")), Some(&["title"])),
        );
        let codes: Vec<Code> =
            [&one, &two].iter().map(|r| r.as_ref().map_or_else(|s| s.code(), |_| Code::Ok)).collect();
        assert_eq!(codes.iter().filter(|c| **c == Code::Ok).count(), 1, "round {round}: {codes:?}");
        assert_eq!(codes.iter().filter(|c| **c == Code::Aborted).count(), 1, "round {round}: {codes:?}");
        let winner = one.or(two).expect("one succeeded");
        assert_eq!(app.get(&user, &created.id).await.expect("get").title, winner.title, "the winner's edit stands");
    }
}

#[tokio::test]
async fn a_delete_with_a_stale_etag_is_aborted_and_with_the_current_one_succeeds() {
    let app = spawn_app().await;
    let user = app.user().await;
    let created = app.create(&user, "t").await;
    let updated = app
        .update(&user, Task { id: created.id.clone(), title: "u".into(), ..Default::default() }, Some(&["title"]))
        .await
        .expect("update");
    let mut client = app.client.clone();
    let stale = DeleteTaskRequest { id: created.id.clone(), etag: created.etag.clone() };
    assert_code(client.delete_task(authed(&user.token, stale)).await, Code::Aborted);
    let current = DeleteTaskRequest { id: created.id.clone(), etag: updated.etag.clone() };
    client.delete_task(authed(&user.token, current)).await.expect("delete with the current etag");
    // Gone: a conditional write now says NOT_FOUND, not ABORTED.
    let again = DeleteTaskRequest { id: created.id.clone(), etag: updated.etag };
    assert_code(client.delete_task(authed(&user.token, again)).await, Code::NotFound);
}

#[tokio::test]
async fn writes_without_an_etag_behave_as_before_and_a_malformed_one_is_invalid() {
    let app = spawn_app().await;
    let user = app.user().await;
    let created = app.create(&user, "t").await;
    app.update(&user, Task { id: created.id.clone(), title: "a".into(), ..Default::default() }, None).await.expect("a");
    app.update(&user, Task { id: created.id.clone(), title: "b".into(), ..Default::default() }, None).await.expect("b");
    let bad = Task { id: created.id.clone(), title: "c".into(), etag: "not-an-etag".into(), ..Default::default() };
    assert_invalid(app.update(&user, bad, None).await, "etag");
    // Someone else's task with its real etag is still NOT_FOUND.
    let other = app.user().await;
    let theirs = Task { id: created.id.clone(), title: "x".into(), etag: created.etag, ..Default::default() };
    assert_code(app.update(&other, theirs, None).await, Code::NotFound);
}

#[tokio::test]
async fn a_mask_with_no_paths_changes_nothing_but_still_checks_the_etag() {
    let app = spawn_app().await;
    let user = app.user().await;
    let created = app.create(&user, "keep me").await;
    let blank = Task { id: created.id.clone(), ..Default::default() };
    let same = app.update(&user, blank.clone(), Some(&[])).await.expect("an empty mask");
    assert_eq!(same, created, "nothing changed, the etag included");
    let with_etag = Task { etag: created.etag.clone(), ..blank.clone() };
    assert_eq!(app.update(&user, with_etag, Some(&["etag"])).await.expect("etag only"), created);
    app.update(
        &user,
        Task { id: created.id.clone(), title: "moved on".into(), ..Default::default() },
        Some(&["title"]),
    )
    .await
    .expect("a real change");
    let stale = Task { etag: created.etag.clone(), ..blank };
    assert_code(app.update(&user, stale, Some(&[])).await, Code::Aborted);
}
