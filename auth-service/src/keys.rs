//! Ed25519 signing keys: stored in Postgres and shared by every replica (or
//! read from `SIGNING_KEY_FILE`), published as a JWKS, rotated without
//! rejecting any valid token.
//!
//! A key's life: `rotate` inserts it with `activate_at = now + publish delay`.
//! From insertion it is in the JWKS (publish before use); from `activate_at`
//! it signs. The key it replaces stays published until the longest token
//! lifetime has passed since the new one took over, then drops out of the
//! JWKS (retired) because nothing it signed can still be valid.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::Context as _;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use jsonwebtoken::EncodingKey;
use sqlx::PgPool;
use taskgate_proto::auth::v1::Jwk;
use taskgate_tokens::{KeySource, VerifyError, jwks::BoxFuture};

use crate::error::AuthError;

/// Serialises first-key creation across replicas starting together.
const KEY_INIT_LOCK: i64 = 0x6175_7468_6b65_7973;

/// One key, private half included.
#[derive(Clone)]
struct KeyRecord {
    /// The `kid` header of tokens it signs.
    kid: String,
    /// The private key, ready to sign.
    encoding: EncodingKey,
    /// The public half in JWK form.
    jwk: Jwk,
    /// From when it signs.
    activate_at: DateTime<Utc>,
}

/// The signing keys of this replica, reloaded from Postgres. Cheap to clone.
#[derive(Clone)]
pub struct KeyStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where keys live; `None` when they come from a key file.
    pool: Option<PgPool>,
    /// Every known key, ordered by `activate_at`; replaced whole on reload.
    keys: RwLock<Arc<Vec<KeyRecord>>>,
    /// Delay between publishing a rotated-in key and signing with it.
    publish_delay: Duration,
    /// How long a replaced key stays published: the longest token lifetime.
    retire_after: Duration,
}

fn jwk(kid: &str, public: &[u8]) -> Jwk {
    Jwk {
        kty: "OKP".into(),
        crv: "Ed25519".into(),
        x: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public),
        kid: kid.into(),
        alg: "EdDSA".into(),
        key_use: "sig".into(),
    }
}

fn record(kid: String, private_der: &[u8], activate_at: DateTime<Utc>) -> anyhow::Result<KeyRecord> {
    let signing = ed25519_dalek::SigningKey::from_pkcs8_der(private_der)
        .map_err(|e| anyhow::anyhow!("signing key {kid} is not PKCS#8 Ed25519: {e}"))?;
    let jwk = jwk(&kid, signing.verifying_key().as_bytes());
    Ok(KeyRecord { encoding: EncodingKey::from_ed_der(private_der), jwk, kid, activate_at })
}

/// Inserts a freshly generated key that signs from `activate_at`; returns its kid.
async fn insert_key(executor: impl sqlx::PgExecutor<'_>, activate_at: DateTime<Utc>) -> anyhow::Result<String> {
    let signing = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let der = signing.to_pkcs8_der().map_err(|e| anyhow::anyhow!("encoding a new key: {e}"))?;
    let kid = uuid::Uuid::now_v7().simple().to_string();
    sqlx::query("INSERT INTO signing_keys (kid, private_der, public_key, activate_at) VALUES ($1, $2, $3, $4)")
        .bind(&kid)
        .bind(der.as_bytes())
        .bind(signing.verifying_key().as_bytes().as_slice())
        .bind(activate_at)
        .execute(executor)
        .await
        .context("inserting a signing key")?;
    Ok(kid)
}

/// Introduces a new key that signs after `publish_delay` (the `rotate-keys`
/// command). Replicas pick it up on their next reload.
pub async fn rotate(pool: &PgPool, publish_delay: Duration) -> anyhow::Result<String> {
    let delay = chrono::Duration::from_std(publish_delay).context("publish delay too long")?;
    insert_key(pool, Utc::now() + delay).await
}

impl KeyStore {
    /// Keys from the PKCS#8 PEM file at `path` (one key; rotation is done by
    /// replacing the file and restarting, and verifiers keep old keys only if
    /// they cached them).
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Self> {
        let pem =
            std::fs::read_to_string(path).with_context(|| format!("reading SIGNING_KEY_FILE {}", path.display()))?;
        let signing = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem)
            .map_err(|e| anyhow::anyhow!("SIGNING_KEY_FILE is not a PKCS#8 Ed25519 key: {e}"))?;
        let public = signing.verifying_key();
        let kid = format!("file-{}", &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public.as_bytes())[..16]);
        let der = signing.to_pkcs8_der().map_err(|e| anyhow::anyhow!("encoding key: {e}"))?;
        let key = record(kid, der.as_bytes(), DateTime::<Utc>::UNIX_EPOCH)?;
        Ok(KeyStore {
            inner: Arc::new(Inner {
                pool: None,
                keys: RwLock::new(Arc::new(vec![key])),
                publish_delay: Duration::ZERO,
                retire_after: Duration::ZERO,
            }),
        })
    }

    /// Keys from Postgres; creates the first key if there is none.
    pub async fn from_database(pool: PgPool, publish_delay: Duration, retire_after: Duration) -> anyhow::Result<Self> {
        let mut tx = pool.begin().await.context("starting key initialisation")?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(KEY_INIT_LOCK)
            .execute(&mut *tx)
            .await
            .context("locking key initialisation")?;
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM signing_keys")
            .fetch_one(&mut *tx)
            .await
            .context("counting signing keys")?;
        if count == 0 {
            // The very first key signs at once: there is nothing to replace.
            let kid = insert_key(&mut *tx, Utc::now()).await?;
            tracing::info!(%kid, "created the first signing key");
        }
        tx.commit().await.context("committing key initialisation")?;
        let store = KeyStore {
            inner: Arc::new(Inner {
                pool: Some(pool),
                keys: RwLock::new(Arc::new(Vec::new())),
                publish_delay,
                retire_after,
            }),
        };
        store.reload().await.map_err(|e| anyhow::anyhow!("loading signing keys: {e}"))?;
        Ok(store)
    }

    /// Re-reads every key from Postgres (a no-op for a key file).
    pub async fn reload(&self) -> Result<(), AuthError> {
        let Some(pool) = &self.inner.pool else {
            return Ok(());
        };
        let rows: Vec<(String, Vec<u8>, DateTime<Utc>)> =
            sqlx::query_as("SELECT kid, private_der, activate_at FROM signing_keys ORDER BY activate_at, kid")
                .fetch_all(pool)
                .await?;
        let keys = rows.into_iter().map(|(kid, der, at)| record(kid, &der, at)).collect::<anyhow::Result<Vec<_>>>()?;
        if let Ok(mut guard) = self.inner.keys.write() {
            *guard = Arc::new(keys);
        }
        Ok(())
    }

    /// Inserts a new key (signing after the publish delay) and reloads.
    pub async fn rotate(&self) -> Result<String, AuthError> {
        let pool = self.inner.pool.as_ref().ok_or_else(|| {
            AuthError::Unexpected(anyhow::anyhow!("keys come from SIGNING_KEY_FILE; replace the file to rotate"))
        })?;
        let kid = rotate(pool, self.inner.publish_delay).await?;
        self.reload().await?;
        Ok(kid)
    }

    fn snapshot(&self) -> Arc<Vec<KeyRecord>> {
        self.inner.keys.read().map(|k| Arc::clone(&k)).unwrap_or_default()
    }

    /// The key to sign with now: the most recently activated one.
    pub fn signing_key(&self) -> Result<(String, EncodingKey), AuthError> {
        let now = Utc::now();
        let keys = self.snapshot();
        let key = keys
            .iter()
            .rev()
            .find(|k| k.activate_at <= now)
            .or_else(|| keys.first())
            .ok_or_else(|| AuthError::Unexpected(anyhow::anyhow!("no signing key loaded")))?;
        Ok((key.kid.clone(), key.encoding.clone()))
    }

    /// Every key that may have signed a token still valid, plus keys about to
    /// sign.
    pub fn jwks(&self) -> Vec<Jwk> {
        let now = Utc::now();
        let retire_after = chrono::Duration::from_std(self.inner.retire_after).unwrap_or(chrono::Duration::MAX);
        let keys = self.snapshot();
        keys.iter()
            .enumerate()
            .filter(|(i, _)| match keys.get(i + 1) {
                // Retired once its successor has signed for the longest token
                // lifetime: nothing this key signed is valid any more.
                Some(next) if next.activate_at <= now => {
                    next.activate_at.checked_add_signed(retire_after).is_none_or(|t| now <= t)
                }
                _ => true,
            })
            .map(|(_, k)| k.jwk.clone())
            .collect()
    }
}

/// Feeds the service's own [`taskgate_tokens::Verifier`]: a `kid` it does
/// not know makes it reload from Postgres (another replica may have rotated).
pub struct KeyStoreSource(pub KeyStore);

impl KeySource for KeyStoreSource {
    fn fetch(&self) -> BoxFuture<'_, Result<Vec<Jwk>, VerifyError>> {
        Box::pin(async move {
            if let Err(e) = self.0.reload().await {
                // Keep verifying with the keys in memory.
                tracing::warn!(error = %e, "reloading signing keys failed");
            }
            Ok(self.0.jwks())
        })
    }
}
