//! Every call needs a valid, unexpired, unrevoked access token that the task
//! service verifies itself.

use fred::prelude::*;
use taskgate_proto::task::v1::{
    CreateTaskRequest, DeleteTaskRequest, GetTaskRequest, ListTasksRequest, Task, UpdateTaskRequest,
};
use tonic::{Code, Request};

use crate::helpers::{TestApp, TestUser, authed, keypair, sign_with, spawn_app};

/// Runs every RPC with `make(request)` and checks each is UNAUTHENTICATED.
async fn every_rpc_is_unauthenticated(app: &TestApp, make: impl Fn() -> Option<String>) {
    let id = uuid::Uuid::new_v4().to_string();
    fn request<T>(token: &Option<String>, message: T) -> Request<T> {
        match token {
            Some(token) => authed(token, message),
            None => Request::new(message),
        }
    }
    let mut client = app.client.clone();
    let task = Task { id: id.clone(), title: "t".into(), ..Default::default() };
    let results = [
        client.create_task(request(&make(), CreateTaskRequest { task: Some(task.clone()) })).await.err(),
        client.get_task(request(&make(), GetTaskRequest { id: id.clone() })).await.err(),
        client.list_tasks(request(&make(), ListTasksRequest::default())).await.err(),
        client.update_task(request(&make(), UpdateTaskRequest { task: Some(task), update_mask: None })).await.err(),
        client.delete_task(request(&make(), DeleteTaskRequest { id })).await.err(),
    ];
    for (rpc, status) in ["create", "get", "list", "update", "delete"].iter().zip(results) {
        let status = status.unwrap_or_else(|| panic!("{rpc} succeeded without a valid token"));
        assert_eq!(status.code(), Code::Unauthenticated, "{rpc}: {status:?}");
    }
}

#[tokio::test]
async fn a_missing_token_is_unauthenticated_on_every_rpc() {
    let app = spawn_app().await;
    every_rpc_is_unauthenticated(&app, || None).await;
}

#[tokio::test]
async fn a_malformed_token_is_unauthenticated() {
    let app = spawn_app().await;
    every_rpc_is_unauthenticated(&app, || Some("not.a.jwt".into())).await;
}

#[tokio::test]
async fn an_expired_token_is_unauthenticated() {
    let app = spawn_app().await;
    let mut claims = app.issuer.claims(uuid::Uuid::new_v4());
    claims.exp = chrono::Utc::now().timestamp() - 120;
    claims.iat = claims.exp - 900;
    claims.nbf = claims.iat;
    let token = app.issuer.sign(&claims, "at+jwt");
    every_rpc_is_unauthenticated(&app, || Some(token.clone())).await;
}

#[tokio::test]
async fn a_token_signed_by_an_unknown_key_is_unauthenticated() {
    let app = spawn_app().await;
    let (kid, key, _) = keypair();
    let token = sign_with(&kid, &key, &app.issuer.claims(uuid::Uuid::new_v4()), "at+jwt");
    every_rpc_is_unauthenticated(&app, || Some(token.clone())).await;
}

#[tokio::test]
async fn a_refresh_token_or_a_wrong_audience_is_unauthenticated() {
    let app = spawn_app().await;
    let refresh = app.issuer.sign(&app.issuer.claims(uuid::Uuid::new_v4()), "rt+jwt");
    every_rpc_is_unauthenticated(&app, || Some(refresh.clone())).await;
    let mut claims = app.issuer.claims(uuid::Uuid::new_v4());
    claims.aud = "someone-else".into();
    let foreign = app.issuer.sign(&claims, "at+jwt");
    every_rpc_is_unauthenticated(&app, || Some(foreign.clone())).await;
}

#[tokio::test]
async fn a_subject_that_is_not_a_user_id_is_unauthenticated() {
    let app = spawn_app().await;
    let mut claims = app.issuer.claims(uuid::Uuid::new_v4());
    claims.sub = "admin".into();
    let token = app.issuer.sign(&claims, "at+jwt");
    every_rpc_is_unauthenticated(&app, || Some(token.clone())).await;
}

#[tokio::test]
async fn a_token_of_a_revoked_session_is_unauthenticated() {
    let app = spawn_app().await;
    let user: TestUser = app.user();
    app.create(&user, "before logout").await;
    let redis = app.redis().await;
    let key = taskgate_tokens::session_revocation_key(&app.redis_prefix, &user.sid);
    let _: () = redis.set(key, 1, Some(Expiration::EX(60)), None, false).await.expect("revoking the session");
    every_rpc_is_unauthenticated(&app, || Some(user.token.clone())).await;
}
