//! The claims every taskgate token carries, and the token types.

use serde::{Deserialize, Serialize};

/// The JWT `alg` taskgate signs and accepts: EdDSA over Ed25519. Nothing else
/// is ever accepted (RFC 8725 section 3.1).
pub const ALGORITHM: jsonwebtoken::Algorithm = jsonwebtoken::Algorithm::EdDSA;

/// Which of the two token types a JWT is, told by its `typ` header
/// (RFC 8725 section 3.11, RFC 9068 for `at+jwt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A short-lived access token: `typ: at+jwt`.
    Access,
    /// A single-use refresh token: `typ: rt+jwt`.
    Refresh,
}

impl TokenKind {
    /// The `typ` header value of this kind.
    pub fn typ(self) -> &'static str {
        match self {
            TokenKind::Access => "at+jwt",
            TokenKind::Refresh => "rt+jwt",
        }
    }
}

/// The claim set of both token types. Every field is required on
/// verification; a token missing any of them is rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer, checked against the configured issuer.
    pub iss: String,
    /// Audience, checked against the configured audience.
    pub aud: String,
    /// Subject: the user id (UUID).
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    /// Issued at, seconds since the Unix epoch.
    pub iat: i64,
    /// Not before, seconds since the Unix epoch.
    pub nbf: i64,
    /// Unique token id (UUID); for refresh tokens it names the rotation step.
    pub jti: String,
    /// Session id (UUID): the refresh-token family this token belongs to.
    pub sid: String,
}
