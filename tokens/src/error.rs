//! Why a token was rejected, and how that reaches a client.

use tonic::Status;

/// Every way verification can fail. The messages are safe to show a client:
/// they never include the token or key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// No token was presented.
    #[error("missing bearer token")]
    Missing,
    /// Not a JWT, or a header/claim set that does not parse.
    #[error("malformed token")]
    Malformed,
    /// `alg` other than EdDSA (including `none`).
    #[error("token algorithm not allowed")]
    Algorithm,
    /// An access token where a refresh token is expected, or the reverse.
    #[error("wrong token type")]
    WrongType,
    /// The `kid` is not among the published keys, even after a refetch.
    #[error("token signed by an unknown key")]
    UnknownKey,
    /// The signature does not match the payload.
    #[error("invalid token signature")]
    BadSignature,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// Issuer, audience or another claim is wrong or missing.
    #[error("invalid token claims")]
    InvalidClaims,
    /// The session was ended (logout, reuse detection, disabled user).
    #[error("session has been revoked")]
    Revoked,
    /// Keys or the revocation store could not be reached.
    #[error("token verification is unavailable right now")]
    Unavailable,
}

impl From<VerifyError> for Status {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::Unavailable => Status::unavailable(e.to_string()),
            _ => Status::unauthenticated(e.to_string()),
        }
    }
}
