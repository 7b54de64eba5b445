//! Users managing credentials: ChangePassword, EnableUser, the last-admin
//! rule, the bootstrap admin following ADMIN_PASSWORD, password screening,
//! and a login racing a DisableUser.

use std::time::Duration;

use taskgate_proto::auth::v1::{
    ChangePasswordRequest, DisableUserRequest, EnableUserRequest, GetMeRequest, LoginRequest, RefreshRequest,
    RegisterRequest, TokenPair,
};
use tonic::{Code, Status};

use crate::helpers::{PASSWORD, TestApp, bad_request_field, bearer, spawn_app, spawn_app_on, spawn_app_with, username};

const NEW_PASSWORD: &str = "a brand new passphrase 77";
const ADMIN_PASSWORD: &str = "an admin passphrase 42";

async fn get_me(app: &TestApp, access_token: &str) -> Result<(), Status> {
    app.client.clone().get_me(bearer(GetMeRequest {}, access_token)).await.map(|_| ())
}

async fn login_with(app: &TestApp, login: &str, password: &str) -> Result<TokenPair, Status> {
    app.client
        .clone()
        .login(LoginRequest { login: login.into(), password: password.into(), ..Default::default() })
        .await
        .map(|r| r.into_inner().tokens.expect("tokens"))
}

async fn change_password(app: &TestApp, access_token: &str, current: &str, new: &str) -> Result<TokenPair, Status> {
    app.client
        .clone()
        .change_password(bearer(
            ChangePasswordRequest { current_password: current.into(), new_password: new.into() },
            access_token,
        ))
        .await
        .map(|r| r.into_inner().tokens.expect("tokens"))
}

async fn app_with_admin() -> (TestApp, String, TokenPair) {
    let admin = username();
    let name = admin.clone();
    let app = spawn_app_with(move |s| {
        s.admin_username = Some(name);
        s.admin_password = Some(ADMIN_PASSWORD.into());
    })
    .await;
    let tokens = login_with(&app, &admin, ADMIN_PASSWORD).await.expect("the bootstrap admin logs in");
    (app, admin, tokens)
}

#[tokio::test]
async fn change_password_ends_the_other_sessions_at_once_and_returns_a_fresh_pair() {
    let app = spawn_app().await;
    let name = username();
    app.register(&name).await;
    let here = app.login(&name).await;
    let elsewhere = app.login(&name).await;

    let fresh = change_password(&app, &here.access_token, PASSWORD, NEW_PASSWORD).await.expect("change");
    get_me(&app, &fresh.access_token).await.expect("the fresh pair works");
    for old in [&here, &elsewhere] {
        let status = get_me(&app, &old.access_token).await.expect_err("an old access token still works");
        assert_eq!(status.code(), Code::Unauthenticated);
        let status = app
            .client
            .clone()
            .refresh(RefreshRequest { refresh_token: old.refresh_token.clone() })
            .await
            .expect_err("an old refresh token still works");
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    let status = login_with(&app, &name, PASSWORD).await.expect_err("the old password still works");
    assert_eq!(status.code(), Code::Unauthenticated);
    login_with(&app, &name, NEW_PASSWORD).await.expect("the new password works");
}

#[tokio::test]
async fn change_password_needs_the_current_password_and_a_strong_new_one() {
    let app = spawn_app().await;
    let (_, tokens) = app.user_with_session().await;
    let status =
        change_password(&app, &tokens.access_token, "not my password", NEW_PASSWORD).await.expect_err("wrong current");
    assert_eq!((status.code(), bad_request_field(&status).as_str()), (Code::InvalidArgument, "current_password"));
    let status = change_password(&app, &tokens.access_token, PASSWORD, "password123").await.expect_err("common");
    assert_eq!((status.code(), bad_request_field(&status).as_str()), (Code::InvalidArgument, "new_password"));
    let status = app
        .client
        .clone()
        .change_password(ChangePasswordRequest { current_password: PASSWORD.into(), new_password: NEW_PASSWORD.into() })
        .await
        .expect_err("anonymous");
    assert_eq!(status.code(), Code::Unauthenticated);
    get_me(&app, &tokens.access_token).await.expect("failed changes end no session");
}

#[tokio::test]
async fn an_admin_enables_a_disabled_user_who_can_then_log_in_again() {
    let (app, _, admin) = app_with_admin().await;
    let name = username();
    let user = app.register(&name).await;
    let mut client = app.client.clone();
    client
        .disable_user(bearer(DisableUserRequest { id: user.id.clone() }, &admin.access_token))
        .await
        .expect("disable");
    assert_eq!(login_with(&app, &name, PASSWORD).await.expect_err("disabled").code(), Code::Unauthenticated);

    // Only an admin may enable.
    let (_, other) = app.user_with_session().await;
    let status = client
        .enable_user(bearer(EnableUserRequest { id: user.id.clone() }, &other.access_token))
        .await
        .expect_err("a non-admin enabled a user");
    assert_eq!(status.code(), Code::PermissionDenied);

    let enabled = client
        .enable_user(bearer(EnableUserRequest { id: user.id.clone() }, &admin.access_token))
        .await
        .expect("enable")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(enabled.id, user.id);
    login_with(&app, &name, PASSWORD).await.expect("logs in again");
    let status = client
        .enable_user(bearer(EnableUserRequest { id: uuid::Uuid::new_v4().to_string() }, &admin.access_token))
        .await
        .expect_err("no such user");
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn the_last_active_admin_cannot_be_disabled() {
    let (app, admin_name, admin) = app_with_admin().await;
    let admin_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users WHERE username = $1")
        .bind(&admin_name)
        .fetch_one(&app.db)
        .await
        .expect("admin row");
    let mut client = app.client.clone();
    let status = client
        .disable_user(bearer(DisableUserRequest { id: admin_id.to_string() }, &admin.access_token))
        .await
        .expect_err("the last admin disabled themself");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    get_me(&app, &admin.access_token).await.expect("still signed in");

    // With a second active admin, the first may go.
    let second = username();
    app.register(&second).await;
    sqlx::query("UPDATE users SET is_admin = true WHERE username = $1")
        .bind(&second)
        .execute(&app.db)
        .await
        .expect("promote");
    client
        .disable_user(bearer(DisableUserRequest { id: admin_id.to_string() }, &admin.access_token))
        .await
        .expect("disabled while another admin remains");
}

#[tokio::test]
async fn the_bootstrap_admin_follows_a_changed_admin_password_and_its_sessions_end() {
    let (first, admin_name, old_tokens) = app_with_admin().await;
    let database_url = first.settings.database_url.clone();
    let prefix = first.settings.redis_prefix.clone();
    let name = admin_name.clone();
    // The operator rotates ADMIN_PASSWORD and restarts the service.
    let second = spawn_app_on(
        secrecy::ExposeSecret::expose_secret(&database_url).to_owned(),
        taskgate_test_support::redis_url(),
        move |s| {
            s.redis_prefix = prefix;
            s.admin_username = Some(name);
            s.admin_password = Some(NEW_PASSWORD.into());
        },
    )
    .await;
    let status = login_with(&second, &admin_name, ADMIN_PASSWORD).await.expect_err("the old secret still works");
    assert_eq!(status.code(), Code::Unauthenticated);
    login_with(&second, &admin_name, NEW_PASSWORD).await.expect("the new secret works");
    let status = second
        .client
        .clone()
        .refresh(RefreshRequest { refresh_token: old_tokens.refresh_token.clone() })
        .await
        .expect_err("a session from before the rotation lives on");
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_common_password_and_a_weak_password_are_refused_with_a_clear_field_message() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    for (password, says) in [("trustno1trustno1", "too easy to guess"), ("sunshine", "most commonly used")] {
        let status = client
            .register(RegisterRequest { username: Some(username()), password: password.into(), ..Default::default() })
            .await
            .expect_err("a guessable password was accepted");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(bad_request_field(&status), "password");
        assert!(status.message().contains(says), "{password}: {}", status.message());
    }
    let name = username();
    let status = client
        .register(RegisterRequest {
            username: Some(name.clone()),
            password: format!("{name}2024"),
            ..Default::default()
        })
        .await
        .expect_err("a password made of the username was accepted");
    assert_eq!(bad_request_field(&status), "password", "{status:?}");
}

#[tokio::test]
async fn a_login_in_flight_when_its_user_is_disabled_gets_no_usable_token() {
    let admin = username();
    let name = admin.clone();
    let app = spawn_app_with(move |s| {
        s.admin_username = Some(name);
        s.admin_password = Some(ADMIN_PASSWORD.into());
        s.login_delay_step = Duration::from_millis(800);
    })
    .await;
    let admin_tokens = login_with(&app, &admin, ADMIN_PASSWORD).await.expect("admin");
    let victim = username();
    let user = app.register(&victim).await;
    // One earlier failure makes the next login wait 800 ms before hashing.
    login_with(&app, &victim, "not the password").await.expect_err("wrong");
    let in_flight = {
        let client = app.client.clone();
        let victim = victim.clone();
        tokio::spawn(async move {
            client.clone().login(LoginRequest { login: victim, password: PASSWORD.into(), ..Default::default() }).await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.client
        .clone()
        .disable_user(bearer(DisableUserRequest { id: user.id.clone() }, &admin_tokens.access_token))
        .await
        .expect("disable");
    match in_flight.await.expect("login task") {
        Err(status) => assert_eq!(status.code(), Code::Unauthenticated),
        Ok(reply) => {
            let tokens = reply.into_inner().tokens.expect("tokens");
            let status =
                get_me(&app, &tokens.access_token).await.expect_err("a token minted for a disabled user works");
            assert_eq!(status.code(), Code::Unauthenticated);
        }
    }
}
