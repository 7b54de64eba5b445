//! Public keys: where they come from, and the cache verifiers keep in memory.

use std::{collections::HashMap, future::Future, pin::Pin, sync::Arc};

use jsonwebtoken::DecodingKey;
use taskgate_common::balance::BalancedChannel;
use taskgate_proto::auth::v1::{GetJwksRequest, Jwk, auth_service_client::AuthServiceClient};

use crate::VerifyError;

/// A boxed future, so [`KeySource`] stays object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Somewhere the current JSON Web Key Set can be fetched from.
pub trait KeySource: Send + Sync + 'static {
    /// Returns every public key that may have signed a live token.
    fn fetch(&self) -> BoxFuture<'_, Result<Vec<Jwk>, VerifyError>>;
}

/// Fetches the JWKS from the auth service over gRPC (`AuthService/GetJwks`),
/// on a channel shared with the caller's other calls, balanced over every
/// auth replica (and retried once on another when one is unavailable).
#[derive(Clone)]
pub struct GrpcKeySource {
    /// Client on the balanced channel to the auth service's replicas.
    client: AuthServiceClient<BalancedChannel>,
}

impl GrpcKeySource {
    /// Uses `channel` (an existing, balanced channel to the auth service).
    pub fn new(channel: BalancedChannel) -> Self {
        GrpcKeySource { client: AuthServiceClient::new(channel) }
    }
}

impl KeySource for GrpcKeySource {
    fn fetch(&self) -> BoxFuture<'_, Result<Vec<Jwk>, VerifyError>> {
        let mut client = self.client.clone();
        Box::pin(async move {
            match client.get_jwks(GetJwksRequest {}).await {
                Ok(r) => Ok(r.into_inner().keys),
                Err(status) => {
                    tracing::warn!(code = ?status.code(), "fetching JWKS from the auth service failed");
                    Err(VerifyError::Unavailable)
                }
            }
        })
    }
}

/// A key set held in memory, swapped in by its owner (the auth service uses
/// this to verify with its own keys, tests to serve a fixed set).
#[derive(Clone, Default)]
pub struct StaticKeySource {
    /// The current keys; replaced whole on rotation.
    keys: Arc<std::sync::RwLock<Vec<Jwk>>>,
}

impl StaticKeySource {
    /// A source serving `keys`.
    pub fn new(keys: Vec<Jwk>) -> Self {
        StaticKeySource { keys: Arc::new(std::sync::RwLock::new(keys)) }
    }

    /// Replaces the served keys.
    pub fn set(&self, keys: Vec<Jwk>) {
        if let Ok(mut guard) = self.keys.write() {
            *guard = keys;
        }
    }
}

impl KeySource for StaticKeySource {
    fn fetch(&self) -> BoxFuture<'_, Result<Vec<Jwk>, VerifyError>> {
        let keys = self.keys.read().map(|k| k.clone()).map_err(|_| VerifyError::Unavailable);
        Box::pin(async move { keys })
    }
}

/// Turns JWKs into decoding keys by `kid`, skipping any key that is not an
/// Ed25519 signing key.
pub(crate) fn decoding_keys(jwks: &[Jwk]) -> HashMap<String, DecodingKey> {
    jwks.iter()
        .filter(|k| k.kty == "OKP" && k.crv == "Ed25519" && (k.alg.is_empty() || k.alg == "EdDSA"))
        .filter_map(|k| DecodingKey::from_ed_components(&k.x).ok().map(|d| (k.kid.clone(), d)))
        .collect()
}
