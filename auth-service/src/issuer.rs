//! Minting access and refresh tokens.
//!
//! A pair is a pure function of (user, session, two jtis, issue time,
//! session end) and the signing key; Ed25519 signatures are deterministic, so
//! minting the same inputs again yields byte-identical tokens. The refresh
//! grace window relies on that to hand a retrying client the same pair.

use std::time::Duration;

use anyhow::Context as _;
use jsonwebtoken::Header;
use taskgate_proto::auth::v1::TokenPair;
use taskgate_tokens::{Claims, TokenKind, claims::ALGORITHM};

use crate::{error::AuthError, keys::KeyStore};

/// What a token pair is minted from; stored with the session so a pair can
/// be minted again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairSpec {
    /// The user id.
    pub sub: String,
    /// The session id.
    pub sid: String,
    /// The access token's `jti`.
    pub access_jti: String,
    /// The refresh token's `jti` (the session's current one once stored).
    pub refresh_jti: String,
    /// Issue time, seconds since the epoch.
    pub iat: i64,
    /// When the session ends at the latest, seconds since the epoch.
    pub session_exp: i64,
}

/// Signs tokens with the current key.
#[derive(Clone)]
pub struct TokenIssuer {
    /// Signing keys.
    keys: KeyStore,
    /// `iss` claim.
    issuer: String,
    /// `aud` claim.
    audience: String,
    /// Access-token lifetime.
    access_ttl: Duration,
    /// Refresh-token lifetime (capped by the session end).
    refresh_ttl: Duration,
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

impl TokenIssuer {
    /// An issuer with these claims and lifetimes.
    pub fn new(keys: KeyStore, issuer: String, audience: String, access_ttl: Duration, refresh_ttl: Duration) -> Self {
        TokenIssuer { keys, issuer, audience, access_ttl, refresh_ttl }
    }

    fn sign(&self, kind: TokenKind, claims: &Claims) -> Result<String, AuthError> {
        let (kid, key) = self.keys.signing_key()?;
        let mut header = Header::new(ALGORITHM);
        header.typ = Some(kind.typ().to_owned());
        header.kid = Some(kid);
        Ok(jsonwebtoken::encode(&header, claims, &key).context("signing a token")?)
    }

    /// Signs the pair described by `spec`.
    pub fn mint(&self, spec: &PairSpec) -> Result<TokenPair, AuthError> {
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        let access_exp = spec.iat.saturating_add(secs(self.access_ttl)).min(spec.session_exp);
        let refresh_exp = spec.iat.saturating_add(secs(self.refresh_ttl)).min(spec.session_exp);
        let claims = |jti: &str, exp: i64| Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: spec.sub.clone(),
            exp,
            iat: spec.iat,
            nbf: spec.iat,
            jti: jti.to_owned(),
            sid: spec.sid.clone(),
        };
        Ok(TokenPair {
            access_token: self.sign(TokenKind::Access, &claims(&spec.access_jti, access_exp))?,
            refresh_token: self.sign(TokenKind::Refresh, &claims(&spec.refresh_jti, refresh_exp))?,
            token_type: "Bearer".into(),
            // Lifetimes are configured in seconds well inside i32.
            expires_in: i32::try_from(access_exp - spec.iat).unwrap_or(i32::MAX),
            refresh_expires_in: i32::try_from(refresh_exp - spec.iat).unwrap_or(i32::MAX),
        })
    }
}
