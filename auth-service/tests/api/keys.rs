//! Signing keys: JWKS shape, rotation without rejecting valid tokens,
//! publish-before-use, retirement.

use std::time::Duration;

use taskgate_proto::auth::v1::{GetJwksRequest, GetMeRequest, Jwk, RefreshRequest};

use crate::helpers::{TestApp, bearer, jwt_header, spawn_app, spawn_app_with};

async fn jwks(app: &TestApp) -> Vec<Jwk> {
    app.client.clone().get_jwks(GetJwksRequest {}).await.expect("jwks").into_inner().keys
}

fn kid(token: &str) -> String {
    jwt_header(token)["kid"].as_str().expect("kid").to_owned()
}

#[tokio::test]
async fn the_jwks_publishes_ed25519_keys_matching_the_token_kid() {
    let app = spawn_app().await;
    let (_, tokens) = app.user_with_session().await;
    let keys = jwks(&app).await;
    assert_eq!(keys.len(), 1);
    let key = &keys[0];
    assert_eq!(
        (key.kty.as_str(), key.crv.as_str(), key.alg.as_str(), key.r#use.as_str()),
        ("OKP", "Ed25519", "EdDSA", "sig")
    );
    assert_eq!(key.x.len(), 43, "32 bytes in base64url without padding");
    assert_eq!(key.kid, kid(&tokens.access_token));
}

#[tokio::test]
async fn after_rotation_old_tokens_stay_valid_and_new_ones_use_the_new_key() {
    let app = spawn_app().await;
    let (_, before) = app.user_with_session().await;
    let old_kid = kid(&before.access_token);
    // The `rotate-keys` command, then the running replica notices.
    let new_kid = auth_service::rotate_keys(&app.settings).await.expect("rotate");
    app.keys.reload().await.expect("reload");
    let published: Vec<String> = jwks(&app).await.into_iter().map(|k| k.kid).collect();
    assert!(published.contains(&old_kid) && published.contains(&new_kid), "{published:?}");

    let (_, after) = app.user_with_session().await;
    assert_eq!(kid(&after.access_token), new_kid);
    let mut client = app.client.clone();
    client.get_me(bearer(GetMeRequest {}, &before.access_token)).await.expect("old access token still valid");
    let refreshed = client
        .refresh(RefreshRequest { refresh_token: before.refresh_token.clone() })
        .await
        .expect("old refresh token still valid")
        .into_inner()
        .tokens
        .expect("tokens");
    assert_eq!(kid(&refreshed.access_token), new_kid);
}

#[tokio::test]
async fn a_new_key_is_published_before_it_signs() {
    let app = spawn_app_with(|s| s.key_publish_delay = Duration::from_secs(3600)).await;
    let (_, before) = app.user_with_session().await;
    let new_kid = app.keys.rotate().await.expect("rotate");
    assert!(jwks(&app).await.iter().any(|k| k.kid == new_kid), "new key not published");
    let (_, after) = app.user_with_session().await;
    assert_eq!(kid(&after.access_token), kid(&before.access_token), "signed with an unpublished-long-enough key");
}

#[tokio::test]
async fn a_replaced_key_is_retired_after_the_longest_token_lifetime() {
    let app = spawn_app_with(|s| {
        s.access_token_ttl = Duration::from_secs(1);
        s.refresh_token_ttl = Duration::from_secs(2);
        s.session_max_lifetime = Duration::from_secs(2);
    })
    .await;
    let (_, before) = app.user_with_session().await;
    let old_kid = kid(&before.access_token);
    let new_kid = app.keys.rotate().await.expect("rotate");
    assert_eq!(jwks(&app).await.len(), 2);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let published: Vec<String> = jwks(&app).await.into_iter().map(|k| k.kid).collect();
    assert_eq!(published, vec![new_kid]);
    assert!(!published.contains(&old_kid));
}

#[tokio::test]
async fn a_signing_key_file_replaces_the_database_keys() {
    use ed25519_dalek::pkcs8::{EncodePrivateKey as _, spki::der::pem::LineEnding};
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("signing.pem");
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let pem = key.to_pkcs8_pem(LineEnding::LF).expect("pem");
    std::fs::write(&path, pem.as_bytes()).expect("write key file");
    let app = spawn_app_with(|s| s.signing_key_file = Some(path.clone())).await;
    let (_, tokens) = app.user_with_session().await;
    let keys = jwks(&app).await;
    assert_eq!(keys.len(), 1);
    assert!(keys[0].kid.starts_with("file-"));
    assert_eq!(kid(&tokens.access_token), keys[0].kid);
    use base64::Engine as _;
    assert_eq!(keys[0].x, base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes()));
    app.client.clone().get_me(bearer(GetMeRequest {}, &tokens.access_token)).await.expect("file-signed token works");
}

#[tokio::test]
async fn a_withdrawn_key_stops_signing_and_verifying_at_once_on_a_running_replica() {
    // An hour between timed reloads: only the withdrawal notice can explain
    // the running replica dropping the key within the test.
    let app = spawn_app_with(|s| s.key_reload_interval = Duration::from_secs(3600)).await;
    let (_, before) = app.user_with_session().await;
    let old_kid = kid(&before.access_token);

    // The `revoke-key` command, as an operator runs it next to the service.
    let replacement = auth_service::revoke_key(&app.settings, &old_kid)
        .await
        .expect("revoke-key")
        .expect("the signing key gets a replacement");

    let mut client = app.client.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let published: Vec<String> = jwks(&app).await.into_iter().map(|k| k.kid).collect();
        let refused = client.get_me(bearer(GetMeRequest {}, &before.access_token)).await.is_err();
        if !published.contains(&old_kid) && published.contains(&replacement) && refused {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after 5 s: published {published:?}, old token refused {refused}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, after) = app.user_with_session().await;
    assert_eq!(kid(&after.access_token), replacement, "new tokens are signed by the replacement");
    let status = client.get_me(bearer(GetMeRequest {}, &before.access_token)).await.expect_err("old access token");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let status = client
        .refresh(RefreshRequest { refresh_token: before.refresh_token.clone() })
        .await
        .expect_err("a session the withdrawn key signed cannot be refreshed");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
}
