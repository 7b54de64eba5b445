//! `/metrics` on the admin listener: the go-grpc-prometheus series and the
//! auth service's own after a known sequence of calls, and label sets that
//! no client can grow.

use taskgate_proto::auth::v1::{LoginRequest, RefreshRequest};
use taskgate_test_support::metrics::{
    assert_random_paths_add_no_series, assert_samples, call_paths, channel, scrape, value,
};
use tonic::Code;

use crate::helpers::{PASSWORD, spawn_app, username};

/// The labels of AuthService method `method`, as the server series write them.
fn auth(method: &str) -> String {
    format!("grpc_type=\"unary\",grpc_service=\"taskgate.auth.v1.AuthService\",grpc_method=\"{method}\"")
}

#[tokio::test]
async fn a_known_sequence_of_calls_shows_in_the_grpc_and_domain_series() {
    let app = spawn_app().await;
    let name = username();
    app.register(&name).await;
    let tokens = app.login(&name).await;
    let wrong = app
        .client
        .clone()
        .login(LoginRequest { login: name.clone(), password: format!("{PASSWORD}x"), ..Default::default() })
        .await
        .expect_err("a wrong password");
    assert_eq!(wrong.code(), Code::Unauthenticated);
    let refresh = |token: String| {
        let mut client = app.client.clone();
        async move { client.refresh(RefreshRequest { refresh_token: token }).await.map(|r| r.into_inner()) }
    };
    let first = tokens.refresh_token.clone();
    let second = refresh(first.clone()).await.expect("rotated").tokens.expect("a pair").refresh_token;
    refresh(first.clone()).await.expect("a retry within the grace period");
    refresh(second).await.expect("rotated again");
    let reused = refresh(first).await.expect_err("an old token again");
    assert_eq!(reused.code(), Code::Unauthenticated);
    // A method no served service declares.
    call_paths(channel(app.addr).await, &["/taskgate.auth.v1.AuthService/Nope".to_owned()]).await;

    let text = scrape(app.admin).await;
    let expected = [
        (format!("grpc_server_started_total{{{}}}", auth("Register")), 1.0),
        (format!("grpc_server_handled_total{{{},grpc_code=\"OK\"}}", auth("Register")), 1.0),
        (format!("grpc_server_started_total{{{}}}", auth("Login")), 2.0),
        (format!("grpc_server_handled_total{{{},grpc_code=\"OK\"}}", auth("Login")), 1.0),
        (format!("grpc_server_handled_total{{{},grpc_code=\"Unauthenticated\"}}", auth("Login")), 1.0),
        (format!("grpc_server_started_total{{{}}}", auth("Refresh")), 4.0),
        (format!("grpc_server_handled_total{{{},grpc_code=\"OK\"}}", auth("Refresh")), 3.0),
        (format!("grpc_server_handled_total{{{},grpc_code=\"Unauthenticated\"}}", auth("Refresh")), 1.0),
        (format!("grpc_server_handling_seconds_count{{{}}}", auth("Refresh")), 4.0),
        (
            "grpc_server_handled_total{grpc_type=\"unary\",grpc_service=\"unknown\",grpc_method=\"unknown\",grpc_code=\"Unimplemented\"}".to_owned(),
            1.0,
        ),
        ("auth_logins_total{outcome=\"success\"}".to_owned(), 1.0),
        ("auth_logins_total{outcome=\"invalid_credentials\"}".to_owned(), 1.0),
        ("auth_refreshes_total{outcome=\"rotated\"}".to_owned(), 2.0),
        ("auth_refreshes_total{outcome=\"grace\"}".to_owned(), 1.0),
        ("auth_refreshes_total{outcome=\"reuse_detected\"}".to_owned(), 1.0),
        ("auth_sessions_revoked_total{reason=\"refresh_reuse\"}".to_owned(), 1.0),
        ("auth_password_hash_queue_depth".to_owned(), 0.0),
    ];
    assert_samples(&text, &expected).await;
    // The start-up dummy hash, the registration and two logins each waited for a thread.
    assert!(value(&text, "auth_password_hash_wait_seconds_count") >= 4.0, "{text}");
    // No series for a method nobody called.
    assert!(!text.contains("grpc_method=\"DisableUser\""), "{text}");
}

#[tokio::test]
async fn ten_thousand_random_paths_add_no_label_sets() {
    let app = spawn_app().await;
    assert_random_paths_add_no_series(app.addr, app.admin, "taskgate.auth.v1.AuthService").await;
}
