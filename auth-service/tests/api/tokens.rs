//! Refresh: rotation, the grace window, reuse detection, the concurrent
//! refresh race, the absolute session lifetime.

use std::{collections::HashSet, time::Duration};

use taskgate_proto::auth::v1::{GetMeRequest, RefreshRequest, TokenPair};
use tonic::{Code, Status};

use crate::helpers::{TestApp, bearer, jwt_claims, jwt_header, spawn_app, spawn_app_with};

async fn refresh(app: &TestApp, refresh_token: &str) -> Result<TokenPair, Status> {
    app.client
        .clone()
        .refresh(RefreshRequest { refresh_token: refresh_token.into() })
        .await
        .map(|r| r.into_inner().tokens.expect("tokens"))
}

async fn get_me(app: &TestApp, access_token: &str) -> Result<(), Status> {
    app.client.clone().get_me(bearer(GetMeRequest {}, access_token)).await.map(|_| ())
}

#[tokio::test]
async fn tokens_carry_the_claims_and_types_verifiers_expect() {
    let app = spawn_app().await;
    let (user, tokens) = app.user_with_session().await;
    let access = jwt_header(&tokens.access_token);
    let refresh = jwt_header(&tokens.refresh_token);
    assert_eq!(access["alg"], "EdDSA");
    assert_eq!(access["typ"], "at+jwt");
    assert_eq!(refresh["typ"], "rt+jwt");
    assert!(access["kid"].as_str().is_some_and(|k| !k.is_empty()));
    let claims = jwt_claims(&tokens.access_token);
    for claim in ["iss", "aud", "sub", "exp", "iat", "nbf", "jti", "sid"] {
        assert!(claims.get(claim).is_some(), "missing {claim}");
    }
    assert_eq!(claims["sub"], user.id.as_str());
    assert_eq!(claims["sid"], jwt_claims(&tokens.refresh_token)["sid"]);
    assert_ne!(claims["jti"], jwt_claims(&tokens.refresh_token)["jti"]);
}

#[tokio::test]
async fn refresh_returns_a_new_pair_and_the_session_goes_on() {
    let app = spawn_app().await;
    let (_, first) = app.user_with_session().await;
    // A second apart, so the new pair's iat differs too.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = refresh(&app, &first.refresh_token).await.expect("first refresh");
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_ne!(second.access_token, first.access_token);
    assert_eq!(jwt_claims(&second.access_token)["sid"], jwt_claims(&first.access_token)["sid"]);
    get_me(&app, &second.access_token).await.expect("new access token works");
    let third = refresh(&app, &second.refresh_token).await.expect("second refresh");
    get_me(&app, &third.access_token).await.expect("newer access token works");
}

#[tokio::test]
async fn a_retry_within_the_grace_window_returns_the_identical_pair() {
    let app = spawn_app().await;
    let (_, first) = app.user_with_session().await;
    let second = refresh(&app, &first.refresh_token).await.expect("refresh");
    // The client lost the response and retries with the same token.
    let again = refresh(&app, &first.refresh_token).await.expect("retry within grace");
    assert_eq!(again, second);
    // The successor is still the session's current token.
    let third = refresh(&app, &second.refresh_token).await.expect("successor refresh");
    get_me(&app, &third.access_token).await.expect("session alive");
}

#[tokio::test]
async fn reusing_a_rotated_token_after_the_grace_window_revokes_the_whole_session() {
    let app = spawn_app_with(|s| s.refresh_grace = Duration::from_secs(1)).await;
    let (_, first) = app.user_with_session().await;
    let second = refresh(&app, &first.refresh_token).await.expect("refresh");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let status = refresh(&app, &first.refresh_token).await.expect_err("reuse accepted");
    assert_eq!(status.code(), Code::Unauthenticated);
    // The thief's successor pair dies with the session, access tokens included.
    let status = refresh(&app, &second.refresh_token).await.expect_err("successor survived");
    assert_eq!(status.code(), Code::Unauthenticated);
    for access in [&second.access_token, &first.access_token] {
        let status = get_me(&app, access).await.expect_err("access token survived");
        assert_eq!(status.code(), Code::Unauthenticated);
    }
}

#[tokio::test]
async fn only_the_immediate_predecessor_gets_the_grace_window() {
    let app = spawn_app().await;
    let (_, first) = app.user_with_session().await;
    let second = refresh(&app, &first.refresh_token).await.expect("refresh 1");
    let third = refresh(&app, &second.refresh_token).await.expect("refresh 2");
    // Two steps back, well within the grace period: theft.
    let status = refresh(&app, &first.refresh_token).await.expect_err("grandparent accepted");
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = get_me(&app, &third.access_token).await.expect_err("session survived");
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn concurrent_refreshes_of_one_token_have_exactly_one_winner() {
    let app = spawn_app().await;
    let (_, first) = app.user_with_session().await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(app.new_client().await);
    }
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let mut client = clients[i % clients.len()].clone();
            let token = first.refresh_token.clone();
            tokio::spawn(async move {
                client
                    .refresh(RefreshRequest { refresh_token: token })
                    .await
                    .map(|r| r.into_inner().tokens.expect("tokens"))
            })
        })
        .collect();
    let mut pairs = HashSet::new();
    for task in tasks {
        match task.await.expect("task") {
            Ok(pair) => {
                pairs.insert((pair.access_token, pair.refresh_token));
            }
            Err(status) => assert_eq!(status.code(), Code::Unauthenticated, "{status:?}"),
        }
    }
    assert_eq!(pairs.len(), 1, "more than one new pair: {}", pairs.len());
    let (access, refresh_token) = pairs.into_iter().next().expect("one pair");
    get_me(&app, &access).await.expect("winner's access token works");
    refresh(&app, &refresh_token).await.expect("winner's refresh token is current");
}

#[tokio::test]
async fn an_access_token_cannot_be_used_to_refresh() {
    let app = spawn_app().await;
    let (_, tokens) = app.user_with_session().await;
    let status = refresh(&app, &tokens.access_token).await.expect_err("access token refreshed");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), "wrong token type");
}

#[tokio::test]
async fn refreshing_stops_at_the_absolute_session_lifetime() {
    let app = spawn_app_with(|s| s.session_max_lifetime = Duration::from_secs(3)).await;
    let (_, first) = app.user_with_session().await;
    assert!(first.refresh_expires_in <= 3);
    let second = refresh(&app, &first.refresh_token).await.expect("refresh inside the lifetime");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let status = refresh(&app, &second.refresh_token).await.expect_err("refreshed past the lifetime");
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn an_idle_session_ends_when_its_refresh_token_expires() {
    let app = spawn_app_with(|s| s.refresh_token_ttl = Duration::from_secs(1)).await;
    let (_, tokens) = app.user_with_session().await;
    assert_eq!(tokens.refresh_expires_in, 1);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    // Even inside the verifiers' clock-skew leeway the session record is gone.
    let status = refresh(&app, &tokens.refresh_token).await.expect_err("expired refresh token accepted");
    assert_eq!(status.code(), Code::Unauthenticated);
}
