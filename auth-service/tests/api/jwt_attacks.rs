//! Forged and misused tokens through the real RPCs: every one is
//! UNAUTHENTICATED.

use base64::Engine as _;
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use jsonwebtoken::{EncodingKey, Header};
use taskgate_proto::auth::v1::{GetMeRequest, RefreshRequest};
use taskgate_tokens::{Claims, TokenKind, claims::ALGORITHM};
use tonic::Code;

use crate::helpers::{TestApp, bearer, jwt_claims, spawn_app};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn claims_of(token: &str) -> Claims {
    serde_json::from_value(jwt_claims(token)).expect("claims")
}

fn sign(kind: TokenKind, kid: &str, claims: &Claims, key: &EncodingKey) -> String {
    let mut header = Header::new(ALGORITHM);
    header.typ = Some(kind.typ().into());
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

/// Signs with the service's real current key.
fn sign_real(app: &TestApp, kind: TokenKind, claims: &Claims) -> String {
    let (kid, key) = app.keys.signing_key().expect("signing key");
    sign(kind, &kid, claims, &key)
}

async fn assert_rejected(app: &TestApp, token: &str, what: &str) {
    let status = app.client.clone().get_me(bearer(GetMeRequest {}, token)).await.expect_err(what);
    assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    assert!(!status.message().contains(token), "{what}: token echoed");
}

#[tokio::test]
async fn the_genuine_token_works_as_a_control() {
    let app = spawn_app().await;
    let (_, tokens) = app.user_with_session().await;
    let resigned = sign_real(&app, TokenKind::Access, &claims_of(&tokens.access_token));
    app.client.clone().get_me(bearer(GetMeRequest {}, &resigned)).await.expect("re-signed genuine claims");
}

#[tokio::test]
async fn alg_none_is_unauthenticated() {
    let app = spawn_app().await;
    let (_, tokens) = app.user_with_session().await;
    let payload = tokens.access_token.split('.').nth(1).expect("payload");
    let kid = app.keys.signing_key().expect("key").0;
    let header = b64(format!(r#"{{"alg":"none","typ":"at+jwt","kid":"{kid}"}}"#).as_bytes());
    assert_rejected(&app, &format!("{header}.{payload}."), "alg none").await;
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_unauthenticated() {
    let app = spawn_app().await;
    let (_, tokens) = app.user_with_session().await;
    let jwk = app.keys.jwks().into_iter().next().expect("jwk");
    let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
    header.typ = Some("at+jwt".into());
    header.kid = Some(jwk.kid.clone());
    let token =
        jsonwebtoken::encode(&header, &claims_of(&tokens.access_token), &EncodingKey::from_secret(jwk.x.as_bytes()))
            .expect("sign");
    assert_rejected(&app, &token, "algorithm confusion").await;
}

#[tokio::test]
async fn a_token_signed_by_another_key_is_unauthenticated() {
    let app = spawn_app().await;
    let (_, tokens) = app.user_with_session().await;
    let attacker = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let der = attacker.to_pkcs8_der().expect("der");
    let key = EncodingKey::from_ed_der(der.as_bytes());
    let kid = app.keys.signing_key().expect("key").0;
    let claims = claims_of(&tokens.access_token);
    assert_rejected(&app, &sign(TokenKind::Access, &kid, &claims, &key), "known kid, wrong key").await;
    assert_rejected(&app, &sign(TokenKind::Access, "attacker-kid", &claims, &key), "unknown kid").await;
}

#[tokio::test]
async fn a_tampered_payload_is_unauthenticated() {
    let app = spawn_app().await;
    let (_, tokens) = app.user_with_session().await;
    let (victim, _) = app.user_with_session().await;
    let parts: Vec<&str> = tokens.access_token.split('.').collect();
    let mut claims = claims_of(&tokens.access_token);
    claims.sub = victim.id;
    let forged = format!("{}.{}.{}", parts[0], b64(&serde_json::to_vec(&claims).expect("json")), parts[2]);
    assert_rejected(&app, &forged, "tampered payload").await;
}

#[tokio::test]
async fn expired_and_not_yet_valid_tokens_are_unauthenticated() {
    let app = spawn_app().await;
    let (_, tokens) = app.user_with_session().await;
    let now = chrono::Utc::now().timestamp();
    let mut expired = claims_of(&tokens.access_token);
    expired.exp = now - 120;
    assert_rejected(&app, &sign_real(&app, TokenKind::Access, &expired), "expired").await;
    let mut early = claims_of(&tokens.access_token);
    early.nbf = now + 120;
    assert_rejected(&app, &sign_real(&app, TokenKind::Access, &early), "not yet valid").await;
}

#[tokio::test]
async fn a_wrong_issuer_or_audience_is_unauthenticated() {
    let app = spawn_app().await;
    let (_, tokens) = app.user_with_session().await;
    let mut claims = claims_of(&tokens.access_token);
    claims.iss = "someone-else".into();
    assert_rejected(&app, &sign_real(&app, TokenKind::Access, &claims), "wrong issuer").await;
    let mut claims = claims_of(&tokens.access_token);
    claims.aud = "another-api".into();
    assert_rejected(&app, &sign_real(&app, TokenKind::Access, &claims), "wrong audience").await;
}

#[tokio::test]
async fn a_token_missing_a_claim_is_unauthenticated() {
    let app = spawn_app().await;
    let (_, tokens) = app.user_with_session().await;
    let mut value = jwt_claims(&tokens.access_token);
    value.as_object_mut().expect("object").remove("sid");
    let (kid, key) = app.keys.signing_key().expect("key");
    let mut header = Header::new(ALGORITHM);
    header.typ = Some("at+jwt".into());
    header.kid = Some(kid);
    let token = jsonwebtoken::encode(&header, &value, &key).expect("sign");
    assert_rejected(&app, &token, "missing sid").await;
}

#[tokio::test]
async fn token_types_are_not_interchangeable() {
    let app = spawn_app().await;
    let (_, tokens) = app.user_with_session().await;
    assert_rejected(&app, &tokens.refresh_token, "refresh token as access token").await;
    let status = app
        .client
        .clone()
        .refresh(RefreshRequest { refresh_token: tokens.access_token.clone() })
        .await
        .expect_err("access token as refresh token");
    assert_eq!(status.code(), Code::Unauthenticated);
    // A refresh-typed token signed over access claims is still no access token.
    let claims = claims_of(&tokens.access_token);
    assert_rejected(&app, &sign_real(&app, TokenKind::Refresh, &claims), "rt+jwt typ").await;
}

#[tokio::test]
async fn garbage_in_the_authorization_header_is_unauthenticated() {
    let app = spawn_app().await;
    for junk in ["x", "a.b.c", "....", "eyJhbGciOiJFZERTQSJ9.e30.AAAA"] {
        assert_rejected(&app, junk, junk).await;
    }
}
