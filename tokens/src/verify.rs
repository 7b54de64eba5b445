//! Signature and claim verification.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use jsonwebtoken::{DecodingKey, Validation, errors::ErrorKind};
use tonic::metadata::MetadataMap;

use crate::{
    Claims, TokenKind, VerifyError,
    claims::ALGORITHM,
    jwks::{KeySource, decoding_keys},
};

/// What a verifier accepts, and how it keeps its key set current.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// The only accepted `iss`.
    pub issuer: String,
    /// The only accepted `aud`.
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Least time between two JWKS fetches caused by unknown `kid`s, so a
    /// flood of forged tokens cannot turn into a flood of fetches.
    pub min_refetch_interval: Duration,
    /// How often the key set is fetched again even when every `kid` is known,
    /// so a key withdrawn at the auth service (`auth-service revoke-key`)
    /// stops being trusted by this verifier within this time. `None` turns
    /// the timer off (then only an unknown `kid` refetches).
    pub refresh_interval: Option<Duration>,
    /// Longest one JWKS fetch may take; a fetch that takes longer counts as failed.
    pub fetch_timeout: Duration,
    /// Longest pause between attempts after failed fetches (the pause
    /// doubles from `min_refetch_interval` with each failure up to this).
    pub max_backoff: Duration,
    /// How many verified access tokens are remembered, so a client's every
    /// call does not pay an Ed25519 verification (about 0.5 KiB each).
    pub verified_tokens: usize,
}

/// The default of [`VerifierConfig::verified_tokens`].
pub const DEFAULT_VERIFIED_TOKENS: usize = 10_000;

/// The default of [`VerifierConfig::refresh_interval`]: five minutes.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(300);

impl VerifierConfig {
    /// Defaults for `issuer` and `audience`: 5 s leeway, refetch on unknown
    /// `kid`s at most once a second, the whole set every five minutes, 2 s
    /// per fetch, back-off up to 30 s.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        VerifierConfig {
            issuer: issuer.into(),
            audience: audience.into(),
            leeway: Duration::from_secs(5),
            min_refetch_interval: Duration::from_secs(1),
            refresh_interval: Some(DEFAULT_REFRESH_INTERVAL),
            fetch_timeout: Duration::from_secs(2),
            max_backoff: Duration::from_secs(30),
            verified_tokens: DEFAULT_VERIFIED_TOKENS,
        }
    }
}

/// Verifies taskgate JWTs against a cached key set.
///
/// Cheap to clone; clones share the cache. Verification is in memory except
/// when a token names a `kid` the cache does not know, which triggers one
/// (rate-limited) refetch from the [`KeySource`]. A background task (started
/// by [`Verifier::new`] inside a Tokio runtime when
/// [`VerifierConfig::refresh_interval`] is set) also refetches the whole set
/// on a timer, so withdrawn keys drop out.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where keys come from.
    source: Arc<dyn KeySource>,
    /// Decoding keys by `kid`; replaced whole after each fetch.
    keys: RwLock<Arc<HashMap<String, DecodingKey>>>,
    /// Held only while one fetch runs (at most `fetch_timeout`), so callers
    /// that find a fetch under way wait for its result instead of starting
    /// another; never held across anything else.
    fetching: tokio::sync::Mutex<()>,
    /// When the next fetch caused by an unknown `kid` may start, and whether
    /// the last fetch failed; a short-held std mutex, never held across an await.
    schedule: Mutex<Schedule>,
    /// Access tokens verified before: token -> claims and the signing `kid`.
    /// A hit skips only the signature and claim checks, which cannot change
    /// for the same token bytes before `exp`, and only while the signing key
    /// is still in the key set; revocation is the caller's, on every call.
    verified: quick_cache::sync::Cache<String, Arc<VerifiedToken>>,
    /// Claim checks shared by both token types.
    validation: Validation,
    config: VerifierConfig,
}

/// What [`Inner::verified`] keeps of one verified access token.
struct VerifiedToken {
    claims: Claims,
    kid: String,
}

/// The fetch schedule: success waits `min_refetch_interval`, failures back off.
#[derive(Debug, Default)]
struct Schedule {
    /// No fetch for an unknown `kid` before this instant.
    not_before: Option<Instant>,
    /// Failed fetches in a row (0 after a success).
    failures: u32,
}

impl Verifier {
    /// A verifier with an empty cache; keys are fetched on first use, and on
    /// the refresh timer when one is configured and a Tokio runtime is running.
    pub fn new(source: Arc<dyn KeySource>, config: VerifierConfig) -> Self {
        let mut validation = Validation::new(ALGORITHM);
        validation.algorithms = vec![ALGORITHM];
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.leeway = config.leeway.as_secs();
        let verifier = Verifier {
            inner: Arc::new(Inner {
                source,
                keys: RwLock::new(Arc::new(HashMap::new())),
                fetching: tokio::sync::Mutex::new(()),
                schedule: Mutex::new(Schedule::default()),
                verified: quick_cache::sync::Cache::new(config.verified_tokens.max(1)),
                validation,
                config,
            }),
        };
        if let (Some(every), Ok(runtime)) =
            (verifier.inner.config.refresh_interval, tokio::runtime::Handle::try_current())
        {
            runtime.spawn(refresh_forever(Arc::downgrade(&verifier.inner), every));
        }
        verifier
    }

    /// The configuration this verifier checks against.
    pub fn config(&self) -> &VerifierConfig {
        &self.inner.config
    }

    /// Verifies `token` as a token of `kind`: header (`alg`, `typ`, `kid`),
    /// signature, then `iss`, `aud`, `exp`, `nbf` and the presence of every
    /// claim. Does not check revocation (see [`crate::RevocationCheck`]).
    /// An access token verified before is answered from memory until its
    /// `exp`, as long as its signing key is still in the key set.
    pub async fn verify(&self, token: &str, kind: TokenKind) -> Result<Claims, VerifyError> {
        if kind == TokenKind::Access
            && let Some(hit) = self.inner.verified.get(token)
            && hit.claims.exp > unix_now()
            // A key withdrawn since (dropped from the JWKS) ends its tokens here too.
            && self.knows(&hit.kid)
        {
            return Ok(hit.claims.clone());
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| header_error(token))?;
        if header.alg != ALGORITHM {
            return Err(VerifyError::Algorithm);
        }
        if header.typ.as_deref() != Some(kind.typ()) {
            return Err(VerifyError::WrongType);
        }
        let kid = header.kid.ok_or(VerifyError::Malformed)?;
        let key = self.key(&kid).await?;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &self.inner.validation).map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => VerifyError::BadSignature,
            ErrorKind::ExpiredSignature => VerifyError::Expired,
            ErrorKind::ImmatureSignature => VerifyError::NotYetValid,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::MissingAlgorithm => {
                VerifyError::Algorithm
            }
            ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => VerifyError::Malformed,
            _ => VerifyError::InvalidClaims,
        })?;
        let claims = data.claims;
        if claims.jti.is_empty() || claims.sid.is_empty() || claims.sub.is_empty() {
            return Err(VerifyError::InvalidClaims);
        }
        if kind == TokenKind::Access && claims.exp > unix_now() {
            self.inner.verified.insert(token.to_owned(), Arc::new(VerifiedToken { claims: claims.clone(), kid }));
        }
        Ok(claims)
    }

    /// The decoding key for `kid`, refetching the key set once if it is unknown.
    async fn key(&self, kid: &str) -> Result<DecodingKey, VerifyError> {
        if let Some(key) = self.cached(kid) {
            return Ok(key);
        }
        self.refetch().await?;
        self.cached(kid).ok_or(VerifyError::UnknownKey)
    }

    fn cached(&self, kid: &str) -> Option<DecodingKey> {
        self.inner.keys.read().ok().and_then(|keys| keys.get(kid).cloned())
    }

    /// How many verified access tokens are remembered now (bounded by
    /// [`VerifierConfig::verified_tokens`]).
    pub fn remembered_tokens(&self) -> usize {
        self.inner.verified.len()
    }

    /// Whether `kid` is in the key set right now (a remembered token of a
    /// withdrawn key stops being accepted).
    pub fn knows(&self, kid: &str) -> bool {
        self.inner.keys.read().is_ok_and(|keys| keys.contains_key(kid))
    }

    /// Fetches the key set unless the schedule says not yet: within
    /// `min_refetch_interval` of a success the cache stays as it is; during
    /// the back-off after failures the answer is UNAVAILABLE without a fetch.
    pub async fn refetch(&self) -> Result<(), VerifyError> {
        if !self.inner.due()? {
            return Ok(());
        }
        let _one_at_a_time = self.inner.fetching.lock().await;
        // Another caller may have fetched while this one waited.
        if !self.inner.due()? {
            return Ok(());
        }
        self.inner.fetch_now().await
    }

    /// Fetches the key set now, whatever the schedule says: for an owner
    /// that knows its source changed (the auth service after a key was
    /// withdrawn), never for a request path.
    pub async fn refresh_now(&self) -> Result<(), VerifyError> {
        let _one_at_a_time = self.inner.fetching.lock().await;
        self.inner.fetch_now().await
    }
}

impl Inner {
    /// Whether a fetch for an unknown `kid` may start now: Ok(false) right
    /// after a success (the cache is fresh), Err(Unavailable) while backing
    /// off after failures.
    fn due(&self) -> Result<bool, VerifyError> {
        let schedule = self.schedule.lock().map_err(|_| VerifyError::Unavailable)?;
        match schedule.not_before {
            Some(at) if Instant::now() < at && schedule.failures > 0 => Err(VerifyError::Unavailable),
            Some(at) if Instant::now() < at => Ok(false),
            _ => Ok(true),
        }
    }

    /// One fetch within `fetch_timeout`; replaces the key set on success and
    /// moves the schedule either way.
    async fn fetch_now(&self) -> Result<(), VerifyError> {
        let fetched = tokio::time::timeout(self.config.fetch_timeout, self.source.fetch()).await;
        let result = match fetched {
            Ok(Ok(jwks)) => {
                let keys = Arc::new(decoding_keys(&jwks));
                if let Ok(mut guard) = self.keys.write() {
                    *guard = keys;
                }
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => {
                tracing::warn!(timeout = ?self.config.fetch_timeout, "fetching the JWKS timed out");
                Err(VerifyError::Unavailable)
            }
        };
        if let Ok(mut schedule) = self.schedule.lock() {
            schedule.failures = if result.is_ok() { 0 } else { schedule.failures.saturating_add(1) };
            schedule.not_before = Some(Instant::now() + self.pause(schedule.failures));
        }
        result
    }

    /// The pause after a fetch: `min_refetch_interval` after a success,
    /// doubling with each failure in a row up to `max_backoff`.
    fn pause(&self, failures: u32) -> Duration {
        let base = self.config.min_refetch_interval;
        if failures == 0 {
            return base;
        }
        let factor = 1_u32.checked_shl(failures.min(16)).unwrap_or(u32::MAX);
        base.saturating_mul(factor).min(self.config.max_backoff.max(base))
    }
}

/// The refresh timer: fetches the whole key set every `every` (sooner, on
/// the back-off schedule, after a failure), for as long as the verifier lives.
async fn refresh_forever(inner: std::sync::Weak<Inner>, every: Duration) {
    let mut wait = every;
    loop {
        tokio::time::sleep(wait).await;
        let Some(inner) = inner.upgrade() else { return };
        let result = {
            let _one_at_a_time = inner.fetching.lock().await;
            inner.fetch_now().await
        };
        wait = match result {
            Ok(()) => every,
            Err(_) => {
                let failures = inner.schedule.lock().map(|s| s.failures).unwrap_or(1);
                inner.pause(failures).min(every)
            }
        };
    }
}

/// Seconds since the Unix epoch.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Tells a header that names a foreign `alg` (`none`, `HS256`, ...) from one
/// that does not parse at all, for a precise error.
fn header_error(token: &str) -> VerifyError {
    use base64::Engine as _;
    let alg = token
        .split('.')
        .next()
        .and_then(|h| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(h).ok())
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|v| v.get("alg").and_then(|a| a.as_str()).map(str::to_owned));
    match alg {
        Some(alg) if alg != "EdDSA" => VerifyError::Algorithm,
        _ => VerifyError::Malformed,
    }
}

/// The token in an `authorization: Bearer <token>` metadata entry, if any.
pub fn bearer_token(metadata: &MetadataMap) -> Option<&str> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use ed25519_dalek::{SigningKey, pkcs8::EncodePrivateKey as _};
    use jsonwebtoken::{EncodingKey, Header};
    use taskgate_proto::auth::v1::Jwk;

    use super::*;
    use crate::StaticKeySource;

    struct Key {
        kid: String,
        encoding: EncodingKey,
        jwk: Jwk,
    }

    fn key(kid: &str) -> Key {
        let signing = SigningKey::generate(&mut rand::rngs::OsRng);
        let der = signing.to_pkcs8_der().expect("pkcs8");
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signing.verifying_key().as_bytes());
        Key {
            kid: kid.to_owned(),
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            jwk: Jwk {
                kty: "OKP".into(),
                crv: "Ed25519".into(),
                x,
                kid: kid.into(),
                alg: "EdDSA".into(),
                r#use: "sig".into(),
            },
        }
    }

    fn now() -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
    }

    fn claims() -> Claims {
        let now = now();
        Claims {
            iss: "taskgate".into(),
            aud: "taskgate".into(),
            sub: "u1".into(),
            exp: now + 60,
            iat: now,
            nbf: now,
            jti: "j1".into(),
            sid: "s1".into(),
        }
    }

    fn sign(key: &Key, typ: &str, claims: &Claims) -> String {
        let mut header = Header::new(ALGORITHM);
        header.typ = Some(typ.into());
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, &key.encoding).expect("sign")
    }

    fn verifier(keys: Vec<Jwk>) -> Verifier {
        Verifier::new(Arc::new(StaticKeySource::new(keys)), VerifierConfig::new("taskgate", "taskgate"))
    }

    #[tokio::test]
    async fn a_good_access_token_verifies() {
        let k = key("k1");
        let v = verifier(vec![k.jwk.clone()]);
        let got = v.verify(&sign(&k, "at+jwt", &claims()), TokenKind::Access).await;
        assert_eq!(got, Ok(claims()));
    }

    #[tokio::test]
    async fn a_refresh_token_is_not_an_access_token_and_back() {
        let k = key("k1");
        let v = verifier(vec![k.jwk.clone()]);
        let refresh = sign(&k, "rt+jwt", &claims());
        assert_eq!(v.verify(&refresh, TokenKind::Access).await, Err(VerifyError::WrongType));
        let access = sign(&k, "at+jwt", &claims());
        assert_eq!(v.verify(&access, TokenKind::Refresh).await, Err(VerifyError::WrongType));
    }

    #[tokio::test]
    async fn alg_none_is_rejected() {
        let v = verifier(vec![key("k1").jwk]);
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(r#"{"alg":"none","typ":"at+jwt","kid":"k1"}"#);
        let payload = b64.encode(serde_json::to_vec(&claims()).expect("json"));
        let token = format!("{header}.{payload}.");
        assert_eq!(v.verify(&token, TokenKind::Access).await, Err(VerifyError::Algorithm));
    }

    #[tokio::test]
    async fn a_token_signed_by_another_key_with_a_known_kid_is_rejected() {
        let real = key("k1");
        let forged = key("k1");
        let v = verifier(vec![real.jwk.clone()]);
        let got = v.verify(&sign(&forged, "at+jwt", &claims()), TokenKind::Access).await;
        assert_eq!(got, Err(VerifyError::BadSignature));
    }

    #[tokio::test]
    async fn a_tampered_payload_is_rejected() {
        let k = key("k1");
        let v = verifier(vec![k.jwk.clone()]);
        let token = sign(&k, "at+jwt", &claims());
        let parts: Vec<&str> = token.split('.').collect();
        let mut c = claims();
        c.sub = "someone-else".into();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let forged = format!("{}.{}.{}", parts[0], b64.encode(serde_json::to_vec(&c).expect("json")), parts[2]);
        assert_eq!(v.verify(&forged, TokenKind::Access).await, Err(VerifyError::BadSignature));
    }

    #[tokio::test]
    async fn expired_and_not_yet_valid_tokens_are_rejected() {
        let k = key("k1");
        let v = verifier(vec![k.jwk.clone()]);
        let mut c = claims();
        c.exp = now() - 60;
        assert_eq!(v.verify(&sign(&k, "at+jwt", &c), TokenKind::Access).await, Err(VerifyError::Expired));
        let mut c = claims();
        c.nbf = now() + 60;
        assert_eq!(v.verify(&sign(&k, "at+jwt", &c), TokenKind::Access).await, Err(VerifyError::NotYetValid));
    }

    #[tokio::test]
    async fn wrong_issuer_or_audience_is_rejected() {
        let k = key("k1");
        let v = verifier(vec![k.jwk.clone()]);
        let mut c = claims();
        c.iss = "evil".into();
        assert_eq!(v.verify(&sign(&k, "at+jwt", &c), TokenKind::Access).await, Err(VerifyError::InvalidClaims));
        let mut c = claims();
        c.aud = "other".into();
        assert_eq!(v.verify(&sign(&k, "at+jwt", &c), TokenKind::Access).await, Err(VerifyError::InvalidClaims));
    }

    #[tokio::test]
    async fn a_token_missing_sid_is_rejected() {
        let k = key("k1");
        let v = verifier(vec![k.jwk.clone()]);
        let mut value = serde_json::to_value(claims()).expect("json");
        value.as_object_mut().expect("object").remove("sid");
        let mut header = Header::new(ALGORITHM);
        header.typ = Some("at+jwt".into());
        header.kid = Some("k1".into());
        let token = jsonwebtoken::encode(&header, &value, &k.encoding).expect("sign");
        assert_eq!(v.verify(&token, TokenKind::Access).await, Err(VerifyError::InvalidClaims));
    }

    #[tokio::test]
    async fn an_unknown_kid_triggers_a_refetch_that_finds_a_new_key() {
        let old = key("k1");
        let new = key("k2");
        let source = StaticKeySource::new(vec![old.jwk.clone()]);
        let mut config = VerifierConfig::new("taskgate", "taskgate");
        config.min_refetch_interval = Duration::ZERO;
        let v = Verifier::new(Arc::new(source.clone()), config);
        assert!(v.verify(&sign(&old, "at+jwt", &claims()), TokenKind::Access).await.is_ok());
        source.set(vec![old.jwk.clone(), new.jwk.clone()]);
        assert!(v.verify(&sign(&new, "at+jwt", &claims()), TokenKind::Access).await.is_ok());
        assert_eq!(
            v.verify(&sign(&key("k3"), "at+jwt", &claims()), TokenKind::Access).await,
            Err(VerifyError::UnknownKey)
        );
    }

    #[tokio::test]
    async fn a_key_withdrawn_at_the_source_stops_verifying_after_the_refresh_interval() {
        let k = key("k1");
        let source = StaticKeySource::new(vec![k.jwk.clone()]);
        let mut config = VerifierConfig::new("taskgate", "taskgate");
        config.refresh_interval = Some(Duration::from_millis(100));
        let v = Verifier::new(Arc::new(source.clone()), config);
        let token = sign(&k, "at+jwt", &claims());
        assert!(v.verify(&token, TokenKind::Access).await.is_ok());
        source.set(Vec::new());
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(!v.knows("k1"));
        assert!(v.verify(&token, TokenKind::Access).await.is_err());
    }

    #[tokio::test]
    async fn an_access_token_is_remembered_until_it_expires_and_never_for_other_bytes() {
        let k = key("k1");
        let mut config = VerifierConfig::new("taskgate", "taskgate");
        config.leeway = Duration::ZERO;
        let v = Verifier::new(Arc::new(StaticKeySource::new(vec![k.jwk.clone()])), config);
        let mut c = claims();
        c.exp = now() + 2;
        let token = sign(&k, "at+jwt", &c);
        assert_eq!(v.verify(&token, TokenKind::Access).await, Ok(c.clone()));
        assert_eq!(v.remembered_tokens(), 1);
        assert_eq!(v.verify(&token, TokenKind::Access).await, Ok(c.clone()), "from memory");
        assert_eq!(v.verify(&token, TokenKind::Refresh).await, Err(VerifyError::WrongType), "never for another kind");
        let parts: Vec<&str> = token.split('.').collect();
        let forged = format!("{}.{}.{}x", parts[0], parts[1], &parts[2][..parts[2].len() - 1]);
        assert!(v.verify(&forged, TokenKind::Access).await.is_err(), "other bytes are verified afresh");
        tokio::time::sleep(Duration::from_millis(3100)).await;
        assert_eq!(v.verify(&token, TokenKind::Access).await, Err(VerifyError::Expired));
    }

    #[tokio::test]
    async fn refresh_tokens_are_never_remembered() {
        let k = key("k1");
        let v = verifier(vec![k.jwk.clone()]);
        assert!(v.verify(&sign(&k, "rt+jwt", &claims()), TokenKind::Refresh).await.is_ok());
        assert_eq!(v.remembered_tokens(), 0);
    }

    #[tokio::test]
    async fn the_memory_of_verified_tokens_is_bounded() {
        let k = key("k1");
        let mut config = VerifierConfig::new("taskgate", "taskgate");
        config.verified_tokens = 16;
        let v = Verifier::new(Arc::new(StaticKeySource::new(vec![k.jwk.clone()])), config);
        for i in 0..200 {
            let mut c = claims();
            c.jti = format!("j{i}");
            assert!(v.verify(&sign(&k, "at+jwt", &c), TokenKind::Access).await.is_ok());
        }
        assert!(v.remembered_tokens() <= 16, "{} remembered", v.remembered_tokens());
    }

    /// A key source that always fails and counts its calls.
    struct Failing(std::sync::atomic::AtomicUsize);

    impl KeySource for Failing {
        fn fetch(&self) -> crate::jwks::BoxFuture<'_, Result<Vec<Jwk>, VerifyError>> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Box::pin(async { Err(VerifyError::Unavailable) })
        }
    }

    #[tokio::test]
    async fn failed_fetches_back_off_instead_of_retrying_on_every_request() {
        let source = Arc::new(Failing(std::sync::atomic::AtomicUsize::new(0)));
        let mut config = VerifierConfig::new("taskgate", "taskgate");
        config.refresh_interval = None;
        let v = Verifier::new(source.clone(), config);
        let token = sign(&key("k1"), "at+jwt", &claims());
        for _ in 0..50 {
            assert_eq!(v.verify(&token, TokenKind::Access).await, Err(VerifyError::Unavailable));
        }
        assert_eq!(source.0.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn callers_that_wait_for_a_fetch_in_progress_use_its_keys() {
        let k = key("k1");
        let v = verifier(vec![k.jwk.clone()]);
        let token = sign(&k, "at+jwt", &claims());
        let results = futures_join(&v, &token).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }

    /// Twenty concurrent verifications of `token` on a cold cache.
    async fn futures_join(v: &Verifier, token: &str) -> Vec<Result<Claims, VerifyError>> {
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (v, token) = (v.clone(), token.to_owned());
            tasks.push(tokio::spawn(async move { v.verify(&token, TokenKind::Access).await }));
        }
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap_or(Err(VerifyError::Unavailable)));
        }
        results
    }

    #[test]
    fn bearer_token_reads_the_authorization_metadata() {
        let mut md = MetadataMap::new();
        assert_eq!(bearer_token(&md), None);
        md.insert("authorization", "Bearer abc.def.ghi".parse().expect("ascii"));
        assert_eq!(bearer_token(&md), Some("abc.def.ghi"));
        md.insert("authorization", "Basic xyz".parse().expect("ascii"));
        assert_eq!(bearer_token(&md), None);
    }
}
