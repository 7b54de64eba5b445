//! Every call needs a valid, unexpired, unrevoked access token, which the
//! task service verifies itself.

use taskgate_proto::{
    auth::v1::{LoginRequest, LogoutRequest},
    task::v1::{CreateTaskRequest, DeleteTaskRequest, GetTaskRequest, ListTasksRequest, Task, UpdateTaskRequest},
};
use tonic::{Code, Request};

use crate::helpers::{PASSWORD, TestApp, authed, fresh_claims, keypair, sign_with, spawn_app, spawn_app_minting};

/// Runs every RPC with the token `make` gives and checks each is UNAUTHENTICATED.
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
        client
            .create_task(request(&make(), CreateTaskRequest { task: Some(task.clone()), ..Default::default() }))
            .await
            .err(),
        client.get_task(request(&make(), GetTaskRequest { id: id.clone() })).await.err(),
        client.list_tasks(request(&make(), ListTasksRequest::default())).await.err(),
        client.update_task(request(&make(), UpdateTaskRequest { task: Some(task), update_mask: None })).await.err(),
        client.delete_task(request(&make(), DeleteTaskRequest { id, ..Default::default() })).await.err(),
    ];
    for (rpc, status) in ["create", "get", "list", "update", "delete"].iter().zip(results) {
        let status = status.unwrap_or_else(|| panic!("{rpc} succeeded without a valid token"));
        assert_eq!(status.code(), Code::Unauthenticated, "{rpc}: {status:?}");
    }
}

#[tokio::test]
async fn a_token_from_the_auth_service_works_and_a_missing_token_is_unauthenticated_on_every_rpc() {
    let app = spawn_app().await;
    let user = app.user().await;
    app.create(&user, "with a real token").await;
    assert_eq!(app.first_page(&user, 0).await.len(), 1);
    every_rpc_is_unauthenticated(&app, || None).await;
}

#[tokio::test]
async fn a_malformed_token_is_unauthenticated() {
    let app = spawn_app().await;
    every_rpc_is_unauthenticated(&app, || Some("not.a.jwt".into())).await;
}

#[tokio::test]
async fn a_token_signed_by_an_unknown_key_is_unauthenticated() {
    let app = spawn_app().await;
    let (kid, key, _) = keypair();
    let token = sign_with(&kid, &key, &fresh_claims(uuid::Uuid::new_v4()), "at+jwt");
    every_rpc_is_unauthenticated(&app, || Some(token.clone())).await;
}

#[tokio::test]
async fn a_refresh_token_is_not_an_access_token() {
    let app = spawn_app().await;
    // Register and log in by hand to see the refresh token of a real session.
    let username = format!("r{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
    let mut auth = app.auth();
    auth.register(taskgate_proto::auth::v1::RegisterRequest {
        username: Some(username.clone()),
        password: PASSWORD.into(),
        ..Default::default()
    })
    .await
    .expect("register");
    let pair = auth
        .login(LoginRequest { login: username, password: PASSWORD.into(), ..Default::default() })
        .await
        .expect("login")
        .into_inner()
        .tokens
        .expect("tokens");
    every_rpc_is_unauthenticated(&app, || Some(pair.refresh_token.clone())).await;
}

#[tokio::test]
async fn the_token_of_a_logged_out_session_is_unauthenticated_at_once() {
    let app = spawn_app().await;
    let user = app.user().await;
    app.create(&user, "before logout").await;
    app.auth().logout(authed(&user.token, LogoutRequest::default())).await.expect("logout");
    every_rpc_is_unauthenticated(&app, || Some(user.token.clone())).await;
}

#[tokio::test]
async fn an_expired_token_is_unauthenticated() {
    let app = spawn_app_minting().await;
    let mut claims = app.issuer().claims(uuid::Uuid::new_v4());
    claims.exp = chrono::Utc::now().timestamp() - 120;
    claims.iat = claims.exp - 900;
    claims.nbf = claims.iat;
    // A live session, so only the claim itself can be what is refused.
    app.start_session(&claims).await;
    let token = app.issuer().sign(&claims, "at+jwt");
    every_rpc_is_unauthenticated(&app, || Some(token.clone())).await;
}

#[tokio::test]
async fn a_wrong_audience_or_issuer_is_unauthenticated() {
    let app = spawn_app_minting().await;
    let mut claims = app.issuer().claims(uuid::Uuid::new_v4());
    claims.aud = "someone-else".into();
    // A live session, so only the claim itself can be what is refused.
    app.start_session(&claims).await;
    let foreign = app.issuer().sign(&claims, "at+jwt");
    every_rpc_is_unauthenticated(&app, || Some(foreign.clone())).await;
    let mut claims = app.issuer().claims(uuid::Uuid::new_v4());
    claims.iss = "evil".into();
    // A live session, so only the claim itself can be what is refused.
    app.start_session(&claims).await;
    let forged = app.issuer().sign(&claims, "at+jwt");
    every_rpc_is_unauthenticated(&app, || Some(forged.clone())).await;
}

#[tokio::test]
async fn a_subject_that_is_not_a_user_id_is_unauthenticated() {
    let app = spawn_app_minting().await;
    let mut claims = app.issuer().claims(uuid::Uuid::new_v4());
    claims.sub = "admin".into();
    // A live session, so only the claim itself can be what is refused.
    app.start_session(&claims).await;
    let token = app.issuer().sign(&claims, "at+jwt");
    every_rpc_is_unauthenticated(&app, || Some(token.clone())).await;
    // And a minted token that is right in every way is accepted.
    let user = app.user().await;
    app.create(&user, "minted").await;
}
