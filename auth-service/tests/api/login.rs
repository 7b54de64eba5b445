//! Login: each login kind, enumeration safety (same error, same time),
//! rehashing, the throttle.

use std::time::{Duration, Instant};

use argon2::{Algorithm, Argon2, Params, PasswordHasher as _, Version};
use taskgate_proto::auth::v1::{LoginRequest, RegisterRequest};
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::helpers::{PASSWORD, TestApp, spawn_app, spawn_app_with, username};

fn login_request(login: &str, password: &str) -> LoginRequest {
    LoginRequest { login: login.into(), password: password.into(), ..Default::default() }
}

#[tokio::test]
async fn login_works_with_username_email_or_phone() {
    let app = spawn_app().await;
    let name = username();
    app.client
        .clone()
        .register(RegisterRequest {
            username: Some(name.clone()),
            email: Some(format!("{name}@example.com")),
            phone: Some("+14155550123".into()),
            password: PASSWORD.into(),
        })
        .await
        .expect("register");
    for login in [name.to_uppercase(), format!("{}@EXAMPLE.com", name), "+1 415 555 0123".to_owned()] {
        let tokens = app.login(&login).await;
        assert!(!tokens.access_token.is_empty());
        assert_eq!(tokens.token_type, "Bearer");
        assert_eq!(tokens.expires_in, 15 * 60);
        assert_eq!(tokens.refresh_expires_in, 7 * 24 * 3600);
    }
    // The `username` field is accepted in place of `login`.
    app.client
        .clone()
        .login(LoginRequest { username: name, password: PASSWORD.into(), ..Default::default() })
        .await
        .expect("login through the username field");
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_login_give_the_same_error() {
    let app = spawn_app().await;
    let name = username();
    app.register(&name).await;
    let mut client = app.client.clone();
    let wrong = client.login(login_request(&name, "not the password")).await.expect_err("wrong password");
    let unknown = client.login(login_request(&username(), PASSWORD)).await.expect_err("unknown user");
    let garbage = client.login(login_request("?", PASSWORD)).await.expect_err("not a login name");
    for status in [&wrong, &unknown, &garbage] {
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(status.message(), "invalid login or password");
    }
}

async fn time_login(app: &TestApp, login: &str, password: &str) -> Duration {
    let started = Instant::now();
    let status = app.client.clone().login(login_request(login, password)).await.expect_err("must fail");
    let took = started.elapsed();
    assert_eq!(status.code(), Code::Unauthenticated);
    took
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::test]
async fn unknown_logins_take_as_long_as_wrong_passwords() {
    let app = spawn_app().await;
    let name = username();
    app.register(&name).await;
    // Warm up connections and caches.
    time_login(&app, &name, "warm up password").await;
    time_login(&app, &username(), "warm up password").await;
    let (mut wrong, mut unknown) = (Vec::new(), Vec::new());
    // Interleaved, so load from tests running alongside hits both alike.
    for _ in 0..20 {
        wrong.push(time_login(&app, &name, "not the password").await);
        unknown.push(time_login(&app, &username(), "not the password").await);
    }
    let (w, u) = (median(wrong), median(unknown));
    let ratio = u.as_secs_f64() / w.as_secs_f64();
    eprintln!("median wrong password {w:?}, unknown login {u:?}, ratio {ratio:.2}");
    // Without the dummy hash an unknown login is ~20x faster than an
    // argon2id verification; with it they match up to scheduling noise.
    assert!((0.6..=1.67).contains(&ratio), "median wrong password {w:?}, unknown login {u:?}");
}

#[tokio::test]
async fn a_hash_with_old_parameters_is_upgraded_on_login() {
    let app = spawn_app().await;
    let name = username();
    let weak = Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(1024, 1, 1, None).expect("params"))
        .hash_password(PASSWORD.as_bytes())
        .expect("hash")
        .to_string();
    sqlx::query("INSERT INTO users (id, username, password_hash) VALUES ($1, $2, $3)")
        .bind(uuid::Uuid::new_v4())
        .bind(&name)
        .bind(&weak)
        .execute(&app.db)
        .await
        .expect("insert a user with a weak hash");
    app.login(&name).await;
    let stored: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE username = $1")
        .bind(&name)
        .fetch_one(&app.db)
        .await
        .expect("stored hash");
    assert!(stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{stored}");
    // And the new hash still verifies.
    app.login(&name).await;
}

#[tokio::test]
async fn repeated_failures_on_an_account_are_throttled_with_a_retry_time() {
    let app = spawn_app_with(|s| {
        s.login_max_failures_per_account = 3;
        s.login_failure_window = Duration::from_secs(60);
    })
    .await;
    let name = username();
    app.register(&name).await;
    let mut client = app.client.clone();
    for _ in 0..3 {
        let status = client.login(login_request(&name, "not the password")).await.expect_err("wrong");
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    // Even the right password waits until the window slides.
    let status = client.login(login_request(&name, PASSWORD)).await.expect_err("throttled");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let retry = status.get_error_details().retry_info().and_then(|r| r.retry_delay).expect("retry info");
    assert!(retry > Duration::ZERO && retry <= Duration::from_secs(60), "{retry:?}");
    // Other accounts are not affected.
    let other = username();
    app.register(&other).await;
    app.login(&other).await;
}

#[tokio::test]
async fn the_throttle_window_slides_so_there_is_no_permanent_lockout() {
    let app = spawn_app_with(|s| {
        s.login_max_failures_per_account = 2;
        s.login_failure_window = Duration::from_secs(2);
    })
    .await;
    let name = username();
    app.register(&name).await;
    let mut client = app.client.clone();
    for _ in 0..2 {
        client.login(login_request(&name, "not the password")).await.expect_err("wrong");
    }
    let status = client.login(login_request(&name, PASSWORD)).await.expect_err("throttled");
    assert_eq!(status.code(), Code::ResourceExhausted);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    app.login(&name).await;
}

#[tokio::test]
async fn a_successful_login_clears_the_account_failures() {
    let app = spawn_app_with(|s| s.login_max_failures_per_account = 3).await;
    let name = username();
    app.register(&name).await;
    let mut client = app.client.clone();
    for _ in 0..2 {
        client.login(login_request(&name, "not the password")).await.expect_err("wrong");
    }
    app.login(&name).await;
    for _ in 0..2 {
        let status = client.login(login_request(&name, "not the password")).await.expect_err("wrong");
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    app.login(&name).await;
}

#[tokio::test]
async fn failures_from_one_address_are_throttled_across_accounts() {
    let app = spawn_app_with(|s| s.login_max_failures_per_ip = 3).await;
    let mut client = app.client.clone();
    let with_ip = |login: String| {
        let mut request = tonic::Request::new(login_request(&login, "not the password"));
        request.metadata_mut().insert("x-client-ip", "198.51.100.9".parse().expect("ascii"));
        request
    };
    for _ in 0..3 {
        let status = client.login(with_ip(username())).await.expect_err("unknown");
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    let status = client.login(with_ip(username())).await.expect_err("throttled");
    assert_eq!(status.code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn earlier_failures_add_a_progressive_delay() {
    let app = spawn_app_with(|s| s.login_delay_step = Duration::from_millis(300)).await;
    let name = username();
    app.register(&name).await;
    let first = time_login(&app, &name, "not the password").await;
    time_login(&app, &name, "not the password").await;
    let third = time_login(&app, &name, "not the password").await;
    // The third attempt waits 2 x 300 ms before checking.
    assert!(third >= Duration::from_millis(600), "third attempt took {third:?}");
    assert!(third > first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_logins_does_not_stall_other_calls() {
    let app = spawn_app().await;
    let name = username();
    app.register(&name).await;
    let burst: Vec<_> = (0..16)
        .map(|_| {
            let mut client = app.client.clone();
            let name = name.clone();
            tokio::spawn(async move { client.login(login_request(&name, "not the password")).await })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut client = app.new_client().await;
    for _ in 0..10 {
        let started = Instant::now();
        client.get_jwks(taskgate_proto::auth::v1::GetJwksRequest {}).await.expect("jwks during the burst");
        latencies.push(started.elapsed());
        // Spread the calls over the burst (~0.3 s of hashing).
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for task in burst {
        let _ = task.await.expect("login task");
    }
    let typical = median(latencies.clone());
    eprintln!("JWKS latencies during a login burst: {latencies:?}");
    // 16 argon2id verifications take ~0.5 s of CPU; had they run on the
    // async workers, JWKS calls would wait behind them.
    assert!(typical < Duration::from_millis(250), "median JWKS latency during a login burst: {typical:?}");
}

#[tokio::test]
async fn a_password_over_the_declared_limit_is_refused_before_any_work() {
    use taskgate_proto::auth::v1::rules::LOGIN_REQUEST_PASSWORD_MAX_BYTES;

    use crate::helpers::bad_request_field;
    let app = spawn_app().await;
    let name = username();
    app.register(&name).await;
    // `LoginRequest.password`'s max_bytes: enforced by the contract's
    // validator alone (the service has no length check of its own).
    let request = LoginRequest {
        login: name.clone(),
        password: "p".repeat(LOGIN_REQUEST_PASSWORD_MAX_BYTES + 1),
        ..Default::default()
    };
    let status = app.client.clone().login(request).await.expect_err("an over-long password");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(bad_request_field(&status), "password");
    // At the limit it is an ordinary wrong password.
    let request =
        LoginRequest { login: name, password: "p".repeat(LOGIN_REQUEST_PASSWORD_MAX_BYTES), ..Default::default() };
    let status = app.client.clone().login(request).await.expect_err("a wrong password");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}
