//! Who is calling: every RPC starts by verifying the caller's access token
//! itself (defence in depth behind the gateway) and takes the owner id from
//! its `sub`, never from anything else in the request.

use taskgate_tokens::{Claims, RevocationCheck, TokenKind, Verifier, VerifyError, bearer_token};
use tonic::metadata::MetadataMap;
use uuid::Uuid;

use crate::TaskError;

/// Verifies access tokens and checks their session was not revoked.
#[derive(Clone)]
pub struct Authenticator {
    /// Signature and claim checks against the auth service's JWKS.
    verifier: Verifier,
    /// The revocation record check; fail-open, so a Redis outage does not
    /// stop the task service. Revocation then cannot be checked anywhere:
    /// the gateway also accepts tokens on their signature alone while Redis
    /// is down (see gateway/README.md), so a revoked token lives at most
    /// until it expires or Redis returns. While Redis is unavailable (not
    /// connected, or its circuit breaker open after repeated timeouts) the
    /// check is skipped without waiting.
    revocation: RevocationCheck,
}

impl Authenticator {
    /// An authenticator over `verifier` and `revocation`.
    pub fn new(verifier: Verifier, revocation: RevocationCheck) -> Self {
        Authenticator { verifier, revocation }
    }

    /// The id of the user whose valid, unrevoked access token is in `metadata`.
    pub async fn owner(&self, metadata: &MetadataMap) -> Result<Uuid, TaskError> {
        Ok(self.caller(metadata).await?.0)
    }

    /// Like [`Authenticator::owner`], with the token's claims (a watch
    /// stream needs its session and expiry).
    pub async fn caller(&self, metadata: &MetadataMap) -> Result<(Uuid, Claims), TaskError> {
        let token = bearer_token(metadata).ok_or(VerifyError::Missing)?;
        let claims = self.verifier.verify(token, TokenKind::Access).await?;
        // Fail-open while Redis is unavailable (the check does not wait then).
        self.revocation.check(&claims).await?;
        let owner = Uuid::parse_str(&claims.sub).map_err(|_| TaskError::Unauthenticated(VerifyError::InvalidClaims))?;
        Ok((owner, claims))
    }
}
