//! Who is calling: every RPC starts by verifying the caller's access token
//! itself (defence in depth behind the gateway) and takes the owner id from
//! its `sub`, never from anything else in the request.

use taskgate_tokens::{Claims, RedisFailure, RevocationCheck, TokenKind, Verifier, VerifyError, bearer_token};
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
        let (owner, session) = self.verify(metadata).await?;
        // Fail-open while Redis is unavailable (the check does not wait then).
        session.check().await?;
        Ok((owner, session.claims))
    }

    /// The id of the user whose valid access token is in `metadata`, and
    /// its session, whose liveness is still to be checked: alone
    /// ([`Session::check`]) or inside another script ([`Session::judge`]).
    pub async fn verify(&self, metadata: &MetadataMap) -> Result<(Uuid, Session<'_>), TaskError> {
        let token = bearer_token(metadata).ok_or(VerifyError::Missing)?;
        let claims = self.verifier.verify(token, TokenKind::Access).await?;
        let owner = Uuid::parse_str(&claims.sub).map_err(|_| TaskError::Unauthenticated(VerifyError::InvalidClaims))?;
        Ok((owner, Session { claims, revocation: &self.revocation }))
    }
}

/// A verified token whose session has yet to be found live: a caller must
/// [`check`](Session::check) it, or fold its [`key`](Session::key) into a
/// script it sends anyway and [`judge`](Session::judge) the answer, before
/// it answers with anything of the user's.
pub struct Session<'a> {
    /// The token's claims.
    pub claims: Claims,
    /// The revocation check (and its policy).
    revocation: &'a RevocationCheck,
}

impl Session<'_> {
    /// Checks the session with its own round trip.
    pub async fn check(&self) -> Result<(), TaskError> {
        Ok(self.revocation.check(&self.claims).await?)
    }

    /// The key that exists while the session is live (the user's hash tag).
    pub fn key(&self) -> String {
        self.revocation.key(&self.claims)
    }

    /// What a script that checked [`Session::key`] said of it.
    pub fn judge(&self, answer: Result<bool, RedisFailure>) -> Result<(), TaskError> {
        Ok(self.revocation.judge(answer)?)
    }
}
