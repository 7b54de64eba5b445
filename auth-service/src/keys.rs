//! Ed25519 signing keys: stored in Postgres and shared by every replica (or
//! read from `SIGNING_KEY_FILE`), published as a JWKS, rotated without
//! rejecting any valid token.
//!
//! A key's life: `rotate` inserts it with `activate_at = now + publish delay`.
//! From insertion it is in the JWKS (publish before use); from `activate_at`
//! it signs. The key it replaces stays published until the longest token
//! lifetime has passed since the new one took over, then drops out of the
//! JWKS (retired) because nothing it signed can still be valid; its row
//! (private key included) is then deleted at the next reload.
//!
//! A compromised key is withdrawn at once with `revoke-key <kid>`
//! ([`revoke`]): its row is deleted (a fresh key that signs immediately takes
//! its place if it was signing), so replicas stop signing with it and
//! publishing it at once (every replica LISTENs on [`KEYS_CHANGED`] and
//! reloads when told), and verifiers stop trusting it at their next JWKS
//! refresh. That ends every session it signed: their access
//! tokens name an unknown `kid`, and their refresh tokens no longer verify.
//!
//! With `KEY_ENCRYPTION_KEY` set, private keys are stored sealed with
//! ChaCha20-Poly1305 under that key ([`KeyCipher`]); rows written before it
//! was set are sealed at start-up.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::Context as _;
use base64::Engine as _;
use chacha20poly1305::{
    ChaCha20Poly1305, KeyInit as _, Nonce,
    aead::{Aead as _, AeadCore as _},
};
use chrono::{DateTime, Utc};
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use jsonwebtoken::EncodingKey;
use secrecy::{ExposeSecret as _, SecretString};
use sqlx::{PgPool, postgres::PgListener};
use taskgate_proto::auth::v1::Jwk;
use taskgate_tokens::{KeySource, VerifyError, jwks::BoxFuture};

use crate::error::AuthError;

/// Serialises first-key creation across replicas starting together.
const KEY_INIT_LOCK: i64 = 0x6175_7468_6b65_7973;

/// Marks a sealed private key in the `private_der` column: the tag, a
/// 12-byte nonce, then the ciphertext of the PKCS#8 DER.
const SEALED: &[u8] = b"tgk1";

/// Seals private keys at rest with ChaCha20-Poly1305 under the 32-byte
/// `KEY_ENCRYPTION_KEY` (base64 or hex).
#[derive(Clone)]
pub struct KeyCipher(ChaCha20Poly1305);

impl KeyCipher {
    /// The cipher of `KEY_ENCRYPTION_KEY`, if it is set.
    pub fn from_setting(setting: Option<&SecretString>) -> anyhow::Result<Option<KeyCipher>> {
        let Some(secret) = setting else { return Ok(None) };
        let text = secret.expose_secret().trim();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()
            .filter(|b| b.len() == 32)
            .or_else(|| (text.len() == 64).then(|| hex(text)).flatten())
            .context("KEY_ENCRYPTION_KEY must be 32 bytes in base64 or hex")?;
        let cipher = ChaCha20Poly1305::new_from_slice(&bytes).map_err(|_| anyhow::anyhow!("KEY_ENCRYPTION_KEY"))?;
        Ok(Some(KeyCipher(cipher)))
    }

    /// `SEALED ‖ nonce ‖ ciphertext` of `der`.
    fn seal(&self, der: &[u8]) -> anyhow::Result<Vec<u8>> {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut rand::rngs::OsRng);
        let sealed = self.0.encrypt(&nonce, der).map_err(|_| anyhow::anyhow!("sealing a signing key"))?;
        Ok([SEALED, &nonce[..], &sealed[..]].concat())
    }

    /// The DER inside a sealed column value.
    fn open(&self, stored: &[u8]) -> anyhow::Result<Vec<u8>> {
        let rest = stored.strip_prefix(SEALED).context("not a sealed key")?;
        anyhow::ensure!(rest.len() > 12, "a sealed key is too short");
        let (nonce, sealed) = rest.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().context("a sealed key's nonce")?;
        self.0
            .decrypt(&Nonce::from(nonce), sealed)
            .map_err(|_| anyhow::anyhow!("a signing key does not open with KEY_ENCRYPTION_KEY"))
    }
}

/// Bytes from 64 hex digits.
fn hex(text: &str) -> Option<Vec<u8>> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// The PKCS#8 DER in a `private_der` column value: sealed or (written
/// without `KEY_ENCRYPTION_KEY`) in the clear.
fn unseal(cipher: Option<&KeyCipher>, kid: &str, stored: &[u8]) -> anyhow::Result<Vec<u8>> {
    match (stored.starts_with(SEALED), cipher) {
        (true, Some(cipher)) => cipher.open(stored).with_context(|| format!("signing key {kid}")),
        (true, None) => anyhow::bail!("signing key {kid} is sealed: set KEY_ENCRYPTION_KEY"),
        (false, _) => Ok(stored.to_vec()),
    }
}

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
    /// Seals private keys at rest (`KEY_ENCRYPTION_KEY`), when set.
    cipher: Option<KeyCipher>,
}

fn jwk(kid: &str, public: &[u8]) -> Jwk {
    Jwk {
        kty: "OKP".into(),
        crv: "Ed25519".into(),
        x: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public),
        kid: kid.into(),
        alg: "EdDSA".into(),
        r#use: "sig".into(),
    }
}

fn record(kid: String, private_der: &[u8], activate_at: DateTime<Utc>) -> anyhow::Result<KeyRecord> {
    let signing = ed25519_dalek::SigningKey::from_pkcs8_der(private_der)
        .map_err(|e| anyhow::anyhow!("signing key {kid} is not PKCS#8 Ed25519: {e}"))?;
    let jwk = jwk(&kid, signing.verifying_key().as_bytes());
    Ok(KeyRecord { encoding: EncodingKey::from_ed_der(private_der), jwk, kid, activate_at })
}

/// Inserts a freshly generated key that signs from `activate_at` (sealed
/// when `cipher` is given); returns its kid.
async fn insert_key(
    executor: impl sqlx::PgExecutor<'_>,
    activate_at: DateTime<Utc>,
    cipher: Option<&KeyCipher>,
) -> anyhow::Result<String> {
    let signing = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let der = signing.to_pkcs8_der().map_err(|e| anyhow::anyhow!("encoding a new key: {e}"))?;
    let stored = match cipher {
        Some(cipher) => cipher.seal(der.as_bytes())?,
        None => der.as_bytes().to_vec(),
    };
    let kid = uuid::Uuid::now_v7().simple().to_string();
    sqlx::query("INSERT INTO signing_keys (kid, private_der, public_key, activate_at) VALUES ($1, $2, $3, $4)")
        .bind(&kid)
        .bind(stored)
        .bind(signing.verifying_key().as_bytes().as_slice())
        .bind(activate_at)
        .execute(executor)
        .await
        .context("inserting a signing key")?;
    Ok(kid)
}

/// Introduces a new key that signs after `publish_delay` (the `rotate-keys`
/// command). Replicas pick it up on their next reload.
pub async fn rotate(pool: &PgPool, publish_delay: Duration, cipher: Option<&KeyCipher>) -> anyhow::Result<String> {
    let delay = chrono::Duration::from_std(publish_delay).context("publish delay too long")?;
    insert_key(pool, Utc::now() + delay, cipher).await
}

/// The Postgres notification channel on which a withdrawal is announced.
pub const KEYS_CHANGED: &str = "taskgate_signing_keys_changed";

/// Reloads `keys` every `interval` (other replicas rotate keys) and at once
/// whenever a key is withdrawn (a NOTIFY on [`KEYS_CHANGED`]), then has
/// `verifier` (the service's own, over `keys`) drop the withdrawn key too;
/// until the task is aborted. If the listening connection cannot be made or
/// is lost, the timer still runs and listening is tried again at the next tick.
pub async fn reload_forever(keys: KeyStore, verifier: taskgate_tokens::Verifier, pool: PgPool, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut listener: Option<PgListener> = None;
    loop {
        if listener.is_none() {
            listener = listen(&pool).await;
        }
        let notified = async {
            match listener.as_mut() {
                Some(l) => l.try_recv().await,
                None => std::future::pending().await,
            }
        };
        let withdrawn = tokio::select! {
            _ = tick.tick() => false,
            received = notified => match received {
                Ok(Some(_)) => {
                    tracing::info!("a signing key was withdrawn: reloading keys");
                    true
                }
                // The connection was lost (notifications in between may be
                // lost too): reload now, listen again.
                Ok(None) | Err(_) => {
                    listener = None;
                    true
                }
            },
        };
        if let Err(e) = keys.reload().await {
            tracing::warn!(error = %e, "reloading signing keys failed");
        } else if withdrawn && verifier.refresh_now().await.is_err() {
            tracing::warn!("refreshing the service's own verifier failed");
        }
    }
}

/// A connection listening on [`KEYS_CHANGED`], or None (logged) if it
/// cannot be made now.
async fn listen(pool: &PgPool) -> Option<PgListener> {
    let made = async {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(KEYS_CHANGED).await?;
        Ok::<_, sqlx::Error>(listener)
    };
    match tokio::time::timeout(Duration::from_secs(3), made).await {
        Ok(Ok(listener)) => Some(listener),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "listening for key withdrawals failed; reloading on the timer only");
            None
        }
        Err(_) => {
            tracing::warn!("listening for key withdrawals timed out; reloading on the timer only");
            None
        }
    }
}

/// Withdraws key `kid` at once (the `revoke-key` command): deletes it, and
/// if it was the newest key already signing, first inserts a replacement
/// that signs immediately (no publish delay: the withdrawn key must not
/// sign one more token). Returns the replacement's kid, if one was made.
/// Running replicas are told at commit (NOTIFY on [`KEYS_CHANGED`]) and
/// reload at once.
pub async fn revoke(pool: &PgPool, kid: &str, cipher: Option<&KeyCipher>) -> anyhow::Result<Option<String>> {
    let mut tx = pool.begin().await.context("starting key withdrawal")?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(KEY_INIT_LOCK).execute(&mut *tx).await?;
    let signing: Option<String> = sqlx::query_scalar(
        "SELECT kid FROM signing_keys WHERE activate_at <= now() ORDER BY activate_at DESC, kid DESC LIMIT 1",
    )
    .fetch_optional(&mut *tx)
    .await
    .context("finding the signing key")?;
    let deleted = sqlx::query("DELETE FROM signing_keys WHERE kid = $1")
        .bind(kid)
        .execute(&mut *tx)
        .await
        .context("deleting the key")?
        .rows_affected();
    anyhow::ensure!(deleted == 1, "no signing key has kid {kid}");
    let replacement = match signing.as_deref() {
        Some(current) if current == kid => Some(insert_key(&mut *tx, Utc::now(), cipher).await?),
        _ => None,
    };
    // Delivered at commit, to every replica listening (see `listen`).
    sqlx::query("SELECT pg_notify($1, $2)").bind(KEYS_CHANGED).bind(kid).execute(&mut *tx).await?;
    tx.commit().await.context("committing key withdrawal")?;
    Ok(replacement)
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
                cipher: None,
            }),
        })
    }

    /// Keys from Postgres; creates the first key if there is none, and seals
    /// keys stored in the clear when `cipher` is given.
    pub async fn from_database(
        pool: PgPool,
        publish_delay: Duration,
        retire_after: Duration,
        cipher: Option<KeyCipher>,
    ) -> anyhow::Result<Self> {
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
            let kid = insert_key(&mut *tx, Utc::now(), cipher.as_ref()).await?;
            tracing::info!(%kid, "created the first signing key");
        }
        if let Some(cipher) = &cipher {
            let clear: Vec<(String, Vec<u8>)> = sqlx::query_as("SELECT kid, private_der FROM signing_keys")
                .fetch_all(&mut *tx)
                .await
                .context("reading signing keys to seal")?;
            for (kid, der) in clear.into_iter().filter(|(_, der)| !der.starts_with(SEALED)) {
                sqlx::query("UPDATE signing_keys SET private_der = $2 WHERE kid = $1")
                    .bind(&kid)
                    .bind(cipher.seal(&der)?)
                    .execute(&mut *tx)
                    .await
                    .context("sealing a signing key")?;
                tracing::info!(%kid, "sealed a signing key stored in the clear");
            }
        }
        tx.commit().await.context("committing key initialisation")?;
        let store = KeyStore {
            inner: Arc::new(Inner {
                pool: Some(pool),
                keys: RwLock::new(Arc::new(Vec::new())),
                publish_delay,
                retire_after,
                cipher,
            }),
        };
        store.reload().await.map_err(|e| anyhow::anyhow!("loading signing keys: {e}"))?;
        Ok(store)
    }

    /// Deletes retired keys (their successor has signed for longer than the
    /// longest token lifetime, so nothing they signed is valid), then
    /// re-reads every key from Postgres. A no-op for a key file.
    pub async fn reload(&self) -> Result<(), AuthError> {
        let Some(pool) = &self.inner.pool else {
            return Ok(());
        };
        let retire_after = self.inner.retire_after.as_secs_f64();
        // A key is retired once ANY later key activated more than
        // `retire_after` ago (then its immediate successor did too).
        let retired = sqlx::query(
            "DELETE FROM signing_keys k WHERE EXISTS (SELECT 1 FROM signing_keys n \
             WHERE (n.activate_at, n.kid) > (k.activate_at, k.kid) \
             AND n.activate_at + make_interval(secs => $1) < now())",
        )
        .bind(retire_after)
        .execute(pool)
        .await?
        .rows_affected();
        if retired > 0 {
            tracing::info!(retired, "deleted retired signing keys");
        }
        let rows: Vec<(String, Vec<u8>, DateTime<Utc>)> =
            sqlx::query_as("SELECT kid, private_der, activate_at FROM signing_keys ORDER BY activate_at, kid")
                .fetch_all(pool)
                .await?;
        let cipher = self.inner.cipher.as_ref();
        let keys = rows
            .into_iter()
            .map(|(kid, stored, at)| {
                let der = unseal(cipher, &kid, &stored)?;
                record(kid, &der, at)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
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
        let kid = rotate(pool, self.inner.publish_delay, self.inner.cipher.as_ref()).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_open_only_with_their_key() {
        let key = SecretString::from(base64::engine::general_purpose::STANDARD.encode([7_u8; 32]));
        let cipher = KeyCipher::from_setting(Some(&key)).expect("a valid key").expect("a cipher");
        let sealed = cipher.seal(b"pkcs8 der").expect("seal");
        assert!(sealed.starts_with(SEALED));
        assert!(!sealed.windows(9).any(|w| w == b"pkcs8 der"), "no clear text at rest");
        assert_eq!(unseal(Some(&cipher), "k", &sealed).expect("open"), b"pkcs8 der");
        assert!(unseal(None, "k", &sealed).is_err());
        let other = SecretString::from("0".repeat(64));
        let other = KeyCipher::from_setting(Some(&other)).expect("hex key").expect("a cipher");
        assert!(unseal(Some(&other), "k", &sealed).is_err());
        assert_eq!(unseal(None, "k", b"clear").expect("legacy"), b"clear");
        assert!(KeyCipher::from_setting(Some(&SecretString::from("short"))).is_err());
    }
}
