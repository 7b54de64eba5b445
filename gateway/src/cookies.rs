//! Cookie sessions for browsers, the one implementation the REST routes
//! (setting and clearing) and the authentication layer (reading, CSRF) share.
//!
//! `?cookies=true` on login and refresh puts the tokens in `HttpOnly`
//! cookies, plus a CSRF token JavaScript can read; logout clears all three.
//! With `Secure` cookies (the default) the names carry the prefixes browsers
//! enforce, so a sibling subdomain cannot plant or overwrite them:
//!
//! - `__Host-tg_access`: the access token, sent with every request (`Path=/`).
//! - `__Secure-tg_refresh`: the refresh token, sent only to `/api/v1/auth`
//!   endpoints (a `__Host-` cookie must have `Path=/`).
//! - `__Host-tg_csrf`: the CSRF token, an HMAC of the session id under a
//!   server key (`CSRF_SECRET`). A cookie-authenticated write must carry it in
//!   `x-csrf-token`, and it is checked against the session the cookie's
//!   token names, so a token from another session (planted, or the
//!   attacker's own) fails.
//!
//! With `COOKIE_SECURE=false` (plain-HTTP development) the names lose their
//! prefixes, which browsers only accept on `Secure` cookies.

use std::sync::Arc;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use cookie::{Cookie, SameSite};
use hmac::{Hmac, Mac as _};
use http::{HeaderMap, HeaderValue, header};
use rand::RngCore as _;
use secrecy::{ExposeSecret as _, SecretString};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;
use taskgate_proto::auth::v1::TokenPair;

/// The header a page echoes the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The path the refresh cookie is limited to.
pub const REFRESH_PATH: &str = "/api/v1/auth";

/// How this gateway names, sets and checks session cookies. Cheap to clone;
/// the REST routes get it as a request extension.
#[derive(Clone)]
pub struct CookiePolicy {
    inner: Arc<Policy>,
}

struct Policy {
    /// `COOKIE_SECURE`: `Secure` attribute and the `__Host-`/`__Secure-` names.
    secure: bool,
    /// The HMAC key of CSRF tokens (`CSRF_SECRET`, or random per process).
    csrf_key: Vec<u8>,
}

impl CookiePolicy {
    /// A policy with `Secure` cookies when `secure`, and CSRF tokens keyed by
    /// `secret` (a random key when none is given: right for one replica only).
    pub fn new(secure: bool, secret: Option<&SecretString>) -> CookiePolicy {
        let csrf_key = match secret {
            Some(secret) => secret.expose_secret().as_bytes().to_vec(),
            None => {
                tracing::warn!("CSRF_SECRET is not set: CSRF tokens only verify on this replica");
                let mut key = vec![0_u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut key);
                key
            }
        };
        CookiePolicy { inner: Arc::new(Policy { secure, csrf_key }) }
    }

    /// The access-token cookie's name.
    pub fn access_name(&self) -> &'static str {
        if self.inner.secure { "__Host-tg_access" } else { "tg_access" }
    }

    /// The refresh-token cookie's name.
    pub fn refresh_name(&self) -> &'static str {
        if self.inner.secure { "__Secure-tg_refresh" } else { "tg_refresh" }
    }

    /// The CSRF cookie's name.
    pub fn csrf_name(&self) -> &'static str {
        if self.inner.secure { "__Host-tg_csrf" } else { "tg_csrf" }
    }

    /// The access token in the request's cookies.
    pub fn access_token<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        cookie(headers, self.access_name())
    }

    /// The refresh token in the request's cookies.
    pub fn refresh_token<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        cookie(headers, self.refresh_name())
    }

    /// The CSRF token of session `sid`: base64url(HMAC-SHA256(key, sid)).
    pub fn csrf_token(&self, sid: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(sid))
    }

    fn mac(&self, sid: &str) -> Vec<u8> {
        // HMAC takes keys of any length; this cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.inner.csrf_key) else { return Vec::new() };
        mac.update(b"taskgate csrf v1\0");
        mac.update(sid.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// Whether the request's `x-csrf-token` is the CSRF token of session
    /// `sid` (the session of the cookie that authenticates the request).
    pub fn csrf_ok(&self, headers: &HeaderMap, sid: &str) -> bool {
        let Some(sent) = headers.get(CSRF_HEADER).and_then(|v| URL_SAFE_NO_PAD.decode(v.as_bytes()).ok()) else {
            return false;
        };
        !sid.is_empty() && bool::from(sent.ct_eq(&self.mac(sid)))
    }

    /// Whether the request's `x-csrf-token` belongs to the session of
    /// `token` (a refresh or access token from a cookie). The token's
    /// signature is not checked here: the backend that receives it does.
    pub fn csrf_ok_for_token(&self, headers: &HeaderMap, token: &str) -> bool {
        unverified_sid(token).is_some_and(|sid| self.csrf_ok(headers, &sid))
    }

    /// One `set-cookie` value with taskgate's attributes, formatted by the
    /// `cookie` crate (RFC 6265).
    fn set_cookie(
        &self,
        name: &'static str,
        value: &str,
        path: &'static str,
        max_age: i32,
        http_only: bool,
    ) -> Option<HeaderValue> {
        let cookie = Cookie::build((name, value.to_owned()))
            .path(path)
            .max_age(cookie::time::Duration::seconds(i64::from(max_age.max(0))))
            .http_only(http_only)
            .secure(self.inner.secure)
            .same_site(SameSite::Strict)
            .build();
        HeaderValue::from_str(&cookie.to_string()).ok()
    }

    /// Adds the three session cookies for `tokens` to `headers`; the CSRF
    /// token is derived from the session the new tokens belong to.
    pub fn set_session(&self, headers: &mut HeaderMap, tokens: &TokenPair) {
        let csrf = unverified_sid(&tokens.access_token).map(|sid| self.csrf_token(&sid)).unwrap_or_default();
        let cookies = [
            self.set_cookie(self.access_name(), &tokens.access_token, "/", tokens.expires_in, true),
            self.set_cookie(self.refresh_name(), &tokens.refresh_token, REFRESH_PATH, tokens.refresh_expires_in, true),
            // The CSRF cookie lives as long as the session can be refreshed, since
            // refreshing through the cookie is itself a cookie-authenticated write.
            self.set_cookie(self.csrf_name(), &csrf, "/", tokens.refresh_expires_in, false),
        ];
        for cookie in cookies.into_iter().flatten() {
            headers.append(header::SET_COOKIE, cookie);
        }
    }

    /// Adds `set-cookie` headers that delete the three session cookies.
    pub fn clear_session(&self, headers: &mut HeaderMap) {
        let cookies = [
            self.set_cookie(self.access_name(), "", "/", 0, true),
            self.set_cookie(self.refresh_name(), "", REFRESH_PATH, 0, true),
            self.set_cookie(self.csrf_name(), "", "/", 0, false),
        ];
        for cookie in cookies.into_iter().flatten() {
            headers.append(header::SET_COOKIE, cookie);
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers (every
/// header, each split and parsed by the `cookie` crate), without the double
/// quotes RFC 6265 allows around it.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .and_then(|c| c.value_raw())
        .map(|v| v.trim_matches('"'))
        .filter(|v| !v.is_empty())
}

/// The `sid` claim of a JWT, read without verifying it (for deriving and
/// matching CSRF tokens only; whoever acts on the token verifies it).
pub fn unverified_sid(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("sid")?.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_cookies(headers: &HeaderMap) -> Vec<String> {
        headers.get_all(header::SET_COOKIE).iter().filter_map(|v| v.to_str().ok().map(str::to_owned)).collect()
    }

    /// A JWT-shaped token whose payload names session `sid` (unsigned).
    fn token(sid: &str) -> String {
        format!("h.{}.s", URL_SAFE_NO_PAD.encode(format!(r#"{{"sid":"{sid}"}}"#)))
    }

    fn policy(secure: bool) -> CookiePolicy {
        CookiePolicy::new(secure, Some(&SecretString::from("k")))
    }

    #[test]
    fn secure_sessions_use_host_and_secure_prefixed_names() {
        let tokens = TokenPair {
            access_token: token("s1"),
            refresh_token: "d.e.f".into(),
            token_type: "Bearer".into(),
            expires_in: 900,
            refresh_expires_in: 86_400,
        };
        let mut headers = HeaderMap::new();
        let policy = policy(true);
        policy.set_session(&mut headers, &tokens);
        let cookies = set_cookies(&headers);
        let parsed: Vec<Cookie<'_>> =
            cookies.iter().map(|c| Cookie::parse(c.as_str()).expect("a Set-Cookie")).collect();
        let expected = [
            ("__Host-tg_access", tokens.access_token.clone(), "/", 900, true),
            ("__Secure-tg_refresh", "d.e.f".to_owned(), "/api/v1/auth", 86_400, true),
            ("__Host-tg_csrf", policy.csrf_token("s1"), "/", 86_400, false),
        ];
        assert_eq!(parsed.len(), expected.len());
        for (cookie, (name, value, path, max_age, http_only)) in parsed.iter().zip(expected) {
            assert_eq!((cookie.name(), cookie.value()), (name, value.as_str()));
            assert_eq!(cookie.path(), Some(path), "{name}");
            assert_eq!(cookie.max_age(), Some(cookie::time::Duration::seconds(max_age)), "{name}");
            assert_eq!(cookie.http_only(), Some(http_only).filter(|h| *h), "{name}");
            assert_eq!(cookie.secure(), Some(true), "{name}");
            assert_eq!(cookie.same_site(), Some(SameSite::Strict), "{name}");
        }
    }

    #[test]
    fn the_csrf_token_belongs_to_one_session() {
        let policy = policy(true);
        let mut headers = HeaderMap::new();
        headers.insert(CSRF_HEADER, HeaderValue::from_str(&policy.csrf_token("s1")).expect("ascii"));
        assert!(policy.csrf_ok(&headers, "s1"));
        assert!(!policy.csrf_ok(&headers, "s2"));
        assert!(policy.csrf_ok_for_token(&headers, &token("s1")));
        assert!(!policy.csrf_ok_for_token(&headers, &token("s2")));
        assert!(!policy.csrf_ok(&HeaderMap::new(), "s1"));
        let other_key = CookiePolicy::new(true, Some(&SecretString::from("other")));
        assert!(!other_key.csrf_ok(&headers, "s1"));
    }

    #[test]
    fn clearing_expires_all_three() {
        let mut headers = HeaderMap::new();
        policy(true).clear_session(&mut headers);
        let cookies = set_cookies(&headers);
        assert_eq!(cookies.len(), 3);
        assert!(cookies.iter().all(|c| c.contains("Max-Age=0")));
    }

    #[test]
    fn insecure_cookies_leave_out_secure_and_the_prefixes() {
        let mut headers = HeaderMap::new();
        policy(false).clear_session(&mut headers);
        let cookies = set_cookies(&headers);
        let access = Cookie::parse(cookies[0].as_str()).expect("a Set-Cookie");
        assert_eq!((access.name(), access.value(), access.path()), ("tg_access", "", Some("/")));
        assert_eq!(access.max_age(), Some(cookie::time::Duration::ZERO));
        assert_eq!((access.http_only(), access.secure()), (Some(true), None));
        assert_eq!(access.same_site(), Some(SameSite::Strict));
    }

    #[test]
    fn cookies_are_found_among_several_headers() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; __Host-tg_access=abc"));
        h.append(header::COOKIE, HeaderValue::from_static("tg_access=planted"));
        assert_eq!(policy(true).access_token(&h), Some("abc"));
        assert_eq!(policy(false).access_token(&h), Some("planted"));
        assert_eq!(cookie(&h, "missing"), None);
        h.append(header::COOKIE, HeaderValue::from_static("q=\"quoted\"; broken; =novalue; e="));
        assert_eq!(cookie(&h, "q"), Some("quoted"));
        assert_eq!(cookie(&h, "e"), None, "an empty value is no cookie");
    }
}
