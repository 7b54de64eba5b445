//! Redis and Postgres going away: UNAVAILABLE with a clear message, and
//! recovery without a restart.

use std::time::{Duration, Instant};

use taskgate_proto::auth::v1::{
    GetJwksRequest, GetMeRequest, LoginRequest, LogoutRequest, RefreshRequest, RegisterRequest,
};
use taskgate_test_support::{PrivatePostgres, PrivateRedis};
use tonic::Code;

use crate::helpers::{PASSWORD, TestApp, bearer, spawn_app, spawn_app_on, username};

async fn try_login(app: &TestApp, name: &str) -> Result<(), tonic::Status> {
    app.client
        .clone()
        .login(LoginRequest { login: name.into(), password: PASSWORD.into(), ..Default::default() })
        .await
        .map(|_| ())
}

/// Retries `f` until it succeeds or 20 s pass.
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match f().await {
            Ok(()) => return,
            Err(status) if Instant::now() < deadline => {
                assert_ne!(status.code(), Code::Internal, "{what}: {status:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => panic!("{what} did not recover: {status:?}"),
        }
    }
}

#[tokio::test]
async fn with_redis_down_calls_are_unavailable_and_recover_when_it_returns() {
    let mut redis = PrivateRedis::start();
    let database_url = taskgate_test_support::fresh_database().await;
    let app = spawn_app_on(database_url, redis.url(), |_| {}).await;
    let name = username();
    app.register(&name).await;
    let tokens = app.login(&name).await;

    redis.stop();
    let status = try_login(&app, &name).await.expect_err("login without redis");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "session store unavailable");
    let status = app
        .client
        .clone()
        .get_me(bearer(GetMeRequest {}, &tokens.access_token))
        .await
        .expect_err("revocation check without redis");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let status = app
        .client
        .clone()
        .refresh(RefreshRequest { refresh_token: tokens.refresh_token.clone() })
        .await
        .expect_err("refresh without redis");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let status = app
        .client
        .clone()
        .logout(LogoutRequest { refresh_token: tokens.refresh_token.clone() })
        .await
        .expect_err("logout without redis");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // Registration and the JWKS need no Redis.
    app.register(&username()).await;
    app.client.clone().get_jwks(GetJwksRequest {}).await.expect("jwks without redis");

    redis.restart();
    eventually("login after redis restart", || try_login(&app, &name)).await;
}

#[tokio::test]
async fn with_postgres_down_calls_are_unavailable_and_recover_when_it_returns() {
    let mut postgres = PrivatePostgres::start();
    let database_url = taskgate_test_support::fresh_database_on(&postgres.admin_url()).await;
    let app = spawn_app_on(database_url, taskgate_test_support::redis_url(), |_| {}).await;
    let name = username();
    app.register(&name).await;

    postgres.stop();
    let status = app
        .client
        .clone()
        .register(RegisterRequest { username: Some(username()), password: PASSWORD.into(), ..Default::default() })
        .await
        .expect_err("register without postgres");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "database unavailable");
    let status = try_login(&app, &name).await.expect_err("login without postgres");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    postgres.restart();
    eventually("login after postgres restart", || try_login(&app, &name)).await;
}

#[tokio::test]
async fn the_health_service_reports_serving() {
    let app = spawn_app().await;
    let url = format!("http://{}", app.addr);
    taskgate_common::grpc::probe(&url, taskgate_proto::service_names::AUTH).await.expect("auth service serving");
    taskgate_common::grpc::probe(&url, "").await.expect("server serving");
}
