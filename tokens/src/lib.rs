//! The one place taskgate verifies JWTs, so the gateway, the task service and
//! the auth service accept and reject exactly the same tokens.
//!
//! # Layout
//! - [`claims`]: the claim set and the two token types (`at+jwt`, `rt+jwt`).
//! - [`jwks`]: where public keys come from ([`KeySource`]) and the in-memory
//!   key cache that refetches on an unknown `kid`.
//! - [`verify`]: [`Verifier`], signature and claim checks (RFC 8725).
//! - [`revocation`]: the allow-list of live sessions in Redis that ends a
//!   session's access tokens at once, and the one-round-trip check against it.
//! - [`error`]: [`VerifyError`] and its mapping to `tonic::Status`.

pub mod claims;
pub mod error;
pub mod jwks;
pub mod revocation;
pub mod verify;

pub use claims::{Claims, TokenKind};
pub use error::VerifyError;
pub use jwks::{GrpcKeySource, KeySource, StaticKeySource};
pub use revocation::{RedisFailure, RevocationCheck, RevocationPolicy, redis_failure, session_key};
pub use verify::{Verifier, VerifierConfig, bearer_token};
