//! Register: login kinds, validation, duplicates, common passwords; GetMe.

use taskgate_proto::auth::v1::{GetMeRequest, RegisterRequest};
use tonic::Code;

use crate::helpers::{PASSWORD, bad_request_field, bearer, spawn_app, username};

#[tokio::test]
async fn register_accepts_each_kind_of_login_name() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let name = username();
    let by_name = client
        .register(RegisterRequest { username: Some(name.clone()), password: PASSWORD.into(), ..Default::default() })
        .await
        .expect("username")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(by_name.username.as_deref(), Some(name.as_str()));

    let email = format!("{name}@Example.COM");
    let by_email = client
        .register(RegisterRequest { email: Some(email), password: PASSWORD.into(), ..Default::default() })
        .await
        .expect("email")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(by_email.email, Some(format!("{name}@example.com")));

    let by_phone = client
        .register(RegisterRequest {
            phone: Some("+1 (415) 555-0100".into()),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await
        .expect("phone")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(by_phone.phone.as_deref(), Some("+14155550100"));
    assert!(uuid::Uuid::parse_str(&by_phone.id).is_ok());
}

#[tokio::test]
async fn invalid_fields_are_named_in_a_bad_request_detail() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let cases = [
        (RegisterRequest { username: Some("ab".into()), password: PASSWORD.into(), ..Default::default() }, "username"),
        (
            RegisterRequest { username: Some("no spaces".into()), password: PASSWORD.into(), ..Default::default() },
            "username",
        ),
        (
            RegisterRequest { email: Some("not-an-email".into()), password: PASSWORD.into(), ..Default::default() },
            "email",
        ),
        (RegisterRequest { phone: Some("555-0100".into()), password: PASSWORD.into(), ..Default::default() }, "phone"),
        (RegisterRequest { username: Some(username()), password: "short".into(), ..Default::default() }, "password"),
        (RegisterRequest { username: Some(username()), password: "x".repeat(129), ..Default::default() }, "password"),
        (RegisterRequest { password: PASSWORD.into(), ..Default::default() }, "username"),
    ];
    for (request, field) in cases {
        let status = client.register(request).await.expect_err("must be rejected");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(bad_request_field(&status), field, "{status:?}");
    }
}

#[tokio::test]
async fn a_common_password_is_rejected() {
    let app = spawn_app().await;
    for common in ["password123", "Qwerty123", "iloveyou1", "1q2w3e4r5t"] {
        let status = app
            .client
            .clone()
            .register(RegisterRequest { username: Some(username()), password: common.into(), ..Default::default() })
            .await
            .expect_err("common password accepted");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(bad_request_field(&status), "password");
    }
}

#[tokio::test]
async fn duplicate_login_names_are_already_exists_whatever_their_case() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let name = username();
    let email = format!("{name}@example.com");
    client
        .register(RegisterRequest {
            username: Some(name.clone()),
            email: Some(email.clone()),
            phone: Some("+442071838750".into()),
            password: PASSWORD.into(),
        })
        .await
        .expect("first registration");
    let duplicates = [
        RegisterRequest { username: Some(name.to_uppercase()), password: PASSWORD.into(), ..Default::default() },
        RegisterRequest { email: Some(email.to_uppercase()), password: PASSWORD.into(), ..Default::default() },
        RegisterRequest { phone: Some("+44 20 7183 8750".into()), password: PASSWORD.into(), ..Default::default() },
    ];
    for request in duplicates {
        let status = client.register(request).await.expect_err("duplicate accepted");
        assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    }
}

#[tokio::test]
async fn get_me_returns_the_caller() {
    let app = spawn_app().await;
    let (user, tokens) = app.user_with_session().await;
    let me = app
        .client
        .clone()
        .get_me(bearer(GetMeRequest {}, &tokens.access_token))
        .await
        .expect("get me")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(me, user);
}

#[tokio::test]
async fn get_me_without_a_token_is_unauthenticated() {
    let app = spawn_app().await;
    let status = app.client.clone().get_me(GetMeRequest {}).await.expect_err("anonymous get me");
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn the_admin_bootstrap_never_promotes_an_account_it_cannot_prove_is_the_operators() {
    use auth_service::{Application, Settings};
    use sqlx::Connection as _;

    let database_url = taskgate_test_support::fresh_database().await;
    let settings = || {
        Settings::for_tests(
            database_url.clone(),
            taskgate_test_support::redis_url(),
            taskgate_test_support::unique_prefix(),
        )
    };
    // Someone registers the name before the operator configures it.
    let squatter = Application::build(settings()).await.expect("build");
    let mut client = {
        let addr = squatter.local_addr();
        tokio::spawn(squatter.run_until_stopped(std::future::pending()));
        taskgate_proto::auth::v1::auth_service_client::AuthServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("connect")
    };
    let name = username();
    client
        .register(RegisterRequest { username: Some(name.clone()), password: PASSWORD.into(), ..Default::default() })
        .await
        .expect("register");

    let mut wrong = settings();
    wrong.admin_username = Some(name.clone());
    wrong.admin_password = Some("the operator's passphrase".into());
    // A clear error in the log, and the service starts (no crash loop)
    // without making the squatter admin.
    Application::build(wrong).await.expect("starts without a bootstrap admin");
    let mut conn = sqlx::PgConnection::connect(&database_url).await.expect("connect");
    let is_admin: bool = sqlx::query_scalar("SELECT is_admin FROM auth.users WHERE username = $1")
        .bind(&name)
        .fetch_one(&mut conn)
        .await
        .expect("user row");
    assert!(!is_admin, "promoted a squatted account");

    let mut right = settings();
    right.admin_username = Some(name.clone());
    right.admin_password = Some(PASSWORD.into());
    Application::build(right).await.expect("promotes the operator's own account");
    let is_admin: bool = sqlx::query_scalar("SELECT is_admin FROM auth.users WHERE username = $1")
        .bind(&name)
        .fetch_one(&mut conn)
        .await
        .expect("user row");
    assert!(is_admin);
}

#[tokio::test]
async fn the_contract_applies_to_trimmed_login_names_and_blank_ones_are_not_given() {
    use taskgate_proto::auth::v1::rules::REGISTER_REQUEST_USERNAME_MAX_LEN;
    let app = spawn_app().await;
    let mut client = app.client.clone();
    // A username at the declared max_len, padded: kept trimmed.
    let long = format!("{}{}", username(), "x".repeat(REGISTER_REQUEST_USERNAME_MAX_LEN));
    let long = &long[..REGISTER_REQUEST_USERNAME_MAX_LEN];
    let request =
        RegisterRequest { username: Some(format!("  {long} ")), password: PASSWORD.into(), ..Default::default() };
    let user = client.register(request).await.expect("a padded username").into_inner().user.expect("user");
    assert_eq!(user.username.as_deref(), Some(long));
    // Blank names are not given, whatever rules they would break.
    let email = format!("{}@example.com", username());
    let request = RegisterRequest {
        username: Some(String::new()),
        email: Some(email.clone()),
        phone: Some("  ".into()),
        password: PASSWORD.into(),
    };
    let user = client.register(request).await.expect("blank username and phone").into_inner().user.expect("user");
    assert_eq!(
        (user.username.as_deref(), user.email.as_deref(), user.phone.as_deref()),
        (None, Some(email.as_str()), None)
    );
    // One character over max_len is named by the contract.
    let over = format!("{long}y");
    let request = RegisterRequest { username: Some(over), password: PASSWORD.into(), ..Default::default() };
    let status = client.register(request).await.expect_err("a username over max_len");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(bad_request_field(&status), "username");
}
