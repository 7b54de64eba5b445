//! Signature and claim verification.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use jsonwebtoken::{DecodingKey, Validation, errors::ErrorKind};
use tonic::metadata::MetadataMap;

use crate::{
    Claims, TokenKind, VerifyError,
    claims::ALGORITHM,
    jwks::{KeySource, decoding_keys},
};

/// What a verifier accepts.
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
}

impl VerifierConfig {
    /// Defaults for `issuer` and `audience`: 5 s leeway, refetch at most once a second.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        VerifierConfig {
            issuer: issuer.into(),
            audience: audience.into(),
            leeway: Duration::from_secs(5),
            min_refetch_interval: Duration::from_secs(1),
        }
    }
}

/// Verifies taskgate JWTs against a cached key set.
///
/// Cheap to clone; clones share the cache. Verification is in memory except
/// when a token names a `kid` the cache does not know, which triggers one
/// (rate-limited) refetch from the [`KeySource`].
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where keys come from.
    source: Arc<dyn KeySource>,
    /// Decoding keys by `kid`; replaced whole after each fetch.
    keys: RwLock<Arc<HashMap<String, DecodingKey>>>,
    /// When the last fetch happened, for `min_refetch_interval`.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    /// Claim checks shared by both token types.
    validation: Validation,
    config: VerifierConfig,
}

impl Verifier {
    /// A verifier with an empty cache; keys are fetched on first use.
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
        Verifier {
            inner: Arc::new(Inner {
                source,
                keys: RwLock::new(Arc::new(HashMap::new())),
                last_fetch: tokio::sync::Mutex::new(None),
                validation,
                config,
            }),
        }
    }

    /// The configuration this verifier checks against.
    pub fn config(&self) -> &VerifierConfig {
        &self.inner.config
    }

    /// Verifies `token` as a token of `kind`: header (`alg`, `typ`, `kid`),
    /// signature, then `iss`, `aud`, `exp`, `nbf` and the presence of every
    /// claim. Does not check revocation (see [`crate::RevocationCheck`]).
    pub async fn verify(&self, token: &str, kind: TokenKind) -> Result<Claims, VerifyError> {
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

    /// Fetches the key set unless another fetch happened within
    /// `min_refetch_interval` (then the cache stays as it is).
    pub async fn refetch(&self) -> Result<(), VerifyError> {
        let mut last = self.inner.last_fetch.lock().await;
        if let Some(at) = *last
            && at.elapsed() < self.inner.config.min_refetch_interval
        {
            return Ok(());
        }
        let jwks = self.inner.source.fetch().await?;
        let keys = Arc::new(decoding_keys(&jwks));
        if let Ok(mut guard) = self.inner.keys.write() {
            *guard = keys;
        }
        *last = Some(Instant::now());
        Ok(())
    }
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
                key_use: "sig".into(),
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
