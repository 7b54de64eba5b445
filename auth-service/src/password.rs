//! Password hashing with argon2id (OWASP parameters), run on a bounded pool
//! of blocking threads so a burst of logins never stalls the async workers.

use std::sync::Arc;

use anyhow::Context as _;
use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher as _, PasswordVerifier as _, Version};
use tokio::sync::Semaphore;

use crate::{domain::Password, error::AuthError};

/// Memory cost in KiB (OWASP password storage cheat sheet: 19 MiB).
pub const M_COST: u32 = 19_456;
/// Iterations.
pub const T_COST: u32 = 2;
/// Lanes.
pub const P_COST: u32 = 1;

/// Hashes and verifies passwords. Cheap to clone.
#[derive(Clone)]
pub struct PasswordHasher {
    /// One permit per core: at most that many hashes run at once, the rest
    /// queue here instead of piling up on the blocking pool.
    permits: Arc<Semaphore>,
    /// A hash of a random password, verified against when the login is
    /// unknown so that such a login takes as long as a wrong password.
    dummy_hash: Arc<str>,
}

/// The outcome of checking a password.
#[derive(Debug, PartialEq, Eq)]
pub enum Verified {
    /// The password does not match.
    No,
    /// It matches, and the stored hash uses today's parameters.
    Yes,
    /// It matches; here is a hash with today's parameters to store instead.
    YesRehashed(String),
}

fn argon2() -> anyhow::Result<Argon2<'static>> {
    let params = Params::new(M_COST, T_COST, P_COST, None).map_err(|e| anyhow::anyhow!("argon2 params: {e}"))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

fn hash_blocking(password: &[u8]) -> anyhow::Result<String> {
    let hash = argon2()?.hash_password(password).map_err(|e| anyhow::anyhow!("hashing a password: {e}"))?;
    Ok(hash.to_string())
}

/// True when `hash` was made with exactly today's algorithm and parameters.
fn is_current(hash: &PasswordHash) -> bool {
    let Ok(params) = Params::try_from(hash) else {
        return false;
    };
    hash.algorithm == argon2::ARGON2ID_IDENT
        && hash.version == Some(Version::V0x13.into())
        && params.m_cost() == M_COST
        && params.t_cost() == T_COST
        && params.p_cost() == P_COST
}

fn verify_blocking(password: &[u8], stored: &str) -> anyhow::Result<Verified> {
    let Ok(hash) = PasswordHash::new(stored) else {
        // A corrupt stored hash never matches; log it, do not fail the call.
        tracing::error!("stored password hash is not a valid PHC string");
        return Ok(Verified::No);
    };
    // The parameters come from the stored hash, not from `argon2()`.
    if argon2()?.verify_password(password, &hash).is_err() {
        return Ok(Verified::No);
    }
    if is_current(&hash) { Ok(Verified::Yes) } else { Ok(Verified::YesRehashed(hash_blocking(password)?)) }
}

impl PasswordHasher {
    /// A hasher with one permit per core; computes the dummy hash (blocking,
    /// once, at start-up).
    pub async fn new() -> anyhow::Result<Self> {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let random = uuid::Uuid::new_v4().to_string();
        let dummy = tokio::task::spawn_blocking(move || hash_blocking(random.as_bytes()))
            .await
            .context("computing the dummy password hash")??;
        Ok(PasswordHasher { permits: Arc::new(Semaphore::new(cores)), dummy_hash: dummy.into() })
    }

    /// Runs `f` on the blocking pool once a permit is free.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T, AuthError> {
        let permit = self.permits.clone().acquire_owned().await.context("password hashing pool closed")?;
        let result = tokio::task::spawn_blocking(move || {
            let result = f();
            drop(permit);
            result
        })
        .await
        .context("password hashing task panicked")??;
        Ok(result)
    }

    /// Hashes a new password into a PHC string.
    pub async fn hash(&self, password: &Password) -> Result<String, AuthError> {
        let password = password.expose().to_owned();
        self.run(move || hash_blocking(password.as_bytes())).await
    }

    /// Checks `password` against `stored`, or against the dummy hash when
    /// there is no user (the answer is then always [`Verified::No`]).
    pub async fn verify(&self, password: &str, stored: Option<&str>) -> Result<Verified, AuthError> {
        let password = password.to_owned();
        let (stored, real) = match stored {
            Some(s) => (s.to_owned(), true),
            None => (self.dummy_hash.to_string(), false),
        };
        let verified = self.run(move || verify_blocking(password.as_bytes(), &stored)).await?;
        Ok(if real { verified } else { Verified::No })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_and_is_current() {
        let hash = hash_blocking(b"a long passphrase").expect("hash");
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        assert_eq!(verify_blocking(b"a long passphrase", &hash).expect("verify"), Verified::Yes);
        assert_eq!(verify_blocking(b"another one", &hash).expect("verify"), Verified::No);
    }

    #[test]
    fn a_weaker_hash_is_rehashed_on_success() {
        let weak = Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(8, 1, 1, None).expect("params"))
            .hash_password(b"a long passphrase")
            .expect("hash")
            .to_string();
        match verify_blocking(b"a long passphrase", &weak).expect("verify") {
            Verified::YesRehashed(new) => assert!(new.starts_with("$argon2id$v=19$m=19456,t=2,p=1$")),
            other => panic!("expected a rehash, got {other:?}"),
        }
    }

    #[test]
    fn a_corrupt_hash_never_matches() {
        assert_eq!(verify_blocking(b"x", "not a hash").expect("verify"), Verified::No);
    }
}
