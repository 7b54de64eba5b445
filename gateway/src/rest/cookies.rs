//! Cookie sessions for browsers: `?cookies=true` on login and refresh puts
//! the tokens in `HttpOnly` cookies, plus a CSRF token JavaScript can read;
//! logout clears all three.
//!
//! - `tg_access`: the access token, sent with every request (`Path=/`).
//! - `tg_refresh`: the refresh token, sent only to `/api/v1/auth` endpoints.
//! - `tg_csrf`: 32 random bytes, base64url; the page echoes it in an
//!   `x-csrf-token` header, which the auth layer compares with the cookie on
//!   cookie-authenticated writes (double-submit).

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use http::{HeaderMap, HeaderValue, header};
use rand::RngCore as _;
use taskgate_proto::auth::v1::TokenPair;

/// The access-token cookie.
pub const ACCESS: &str = "tg_access";
/// The refresh-token cookie.
pub const REFRESH: &str = "tg_refresh";
/// The CSRF double-submit cookie.
pub const CSRF: &str = "tg_csrf";
/// The header a page echoes the CSRF cookie in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The path the refresh cookie is limited to.
pub const REFRESH_PATH: &str = "/api/v1/auth";

/// A request extension the server adds to leave `Secure` off the session
/// cookies, for plain-HTTP local development only (`COOKIE_SECURE=false`).
/// Without it every session cookie is `Secure`.
#[derive(Debug, Clone, Copy)]
pub struct InsecureCookies;

/// One `set-cookie` value with taskgate's attributes.
fn set_cookie(name: &str, value: &str, path: &str, max_age: i64, http_only: bool, secure: bool) -> Option<HeaderValue> {
    let http_only = if http_only { "; HttpOnly" } else { "" };
    let secure = if secure { "; Secure" } else { "" };
    let max_age = max_age.max(0);
    HeaderValue::from_str(&format!(
        "{name}={value}; Path={path}; Max-Age={max_age}{http_only}{secure}; SameSite=Strict"
    ))
    .ok()
}

/// A fresh CSRF token: 32 random bytes, base64url without padding.
pub fn csrf_token() -> String {
    let mut bytes = [0_u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether the `x-csrf-token` header equals the `tg_csrf` cookie (both present).
pub fn csrf_matches(headers: &HeaderMap) -> bool {
    let header = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
    match crate::rest::extract::cookie(headers, CSRF) {
        // Not constant-time: both values are the caller's own, so timing
        // reveals nothing they do not already hold.
        Some(cookie) => !header.is_empty() && header == cookie,
        None => false,
    }
}

/// Adds the three session cookies for `tokens` to `headers`.
pub fn set_session(headers: &mut HeaderMap, tokens: &TokenPair, secure: bool) {
    let cookies = [
        set_cookie(ACCESS, &tokens.access_token, "/", tokens.expires_in, true, secure),
        set_cookie(REFRESH, &tokens.refresh_token, REFRESH_PATH, tokens.refresh_expires_in, true, secure),
        // The CSRF cookie lives as long as the session can be refreshed, since
        // refreshing through the cookie is itself a cookie-authenticated write.
        set_cookie(CSRF, &csrf_token(), "/", tokens.refresh_expires_in, false, secure),
    ];
    for cookie in cookies.into_iter().flatten() {
        headers.append(header::SET_COOKIE, cookie);
    }
}

/// Adds `set-cookie` headers that delete the three session cookies.
pub fn clear_session(headers: &mut HeaderMap, secure: bool) {
    let cookies = [
        set_cookie(ACCESS, "", "/", 0, true, secure),
        set_cookie(REFRESH, "", REFRESH_PATH, 0, true, secure),
        set_cookie(CSRF, "", "/", 0, false, secure),
    ];
    for cookie in cookies.into_iter().flatten() {
        headers.append(header::SET_COOKIE, cookie);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_cookies(headers: &HeaderMap) -> Vec<String> {
        headers.get_all(header::SET_COOKIE).iter().filter_map(|v| v.to_str().ok().map(str::to_owned)).collect()
    }

    #[test]
    fn a_session_sets_three_cookies_with_their_expiries() {
        let tokens = TokenPair {
            access_token: "a.b.c".into(),
            refresh_token: "d.e.f".into(),
            token_type: "Bearer".into(),
            expires_in: 900,
            refresh_expires_in: 86_400,
        };
        let mut headers = HeaderMap::new();
        set_session(&mut headers, &tokens, true);
        let cookies = set_cookies(&headers);
        assert_eq!(cookies[0], "tg_access=a.b.c; Path=/; Max-Age=900; HttpOnly; Secure; SameSite=Strict");
        assert_eq!(cookies[1], "tg_refresh=d.e.f; Path=/api/v1/auth; Max-Age=86400; HttpOnly; Secure; SameSite=Strict");
        assert!(cookies[2].starts_with("tg_csrf="));
        assert!(!cookies[2].contains("HttpOnly"));
        assert!(cookies[2].ends_with("; Path=/; Max-Age=86400; Secure; SameSite=Strict"));
    }

    #[test]
    fn csrf_tokens_are_32_random_bytes() {
        let token = csrf_token();
        assert_eq!(URL_SAFE_NO_PAD.decode(&token).expect("base64url").len(), 32);
        assert_ne!(token, csrf_token());
    }

    #[test]
    fn csrf_needs_the_header_to_equal_the_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("tg_csrf=abc"));
        assert!(!csrf_matches(&headers));
        headers.insert(CSRF_HEADER, HeaderValue::from_static("xyz"));
        assert!(!csrf_matches(&headers));
        headers.insert(CSRF_HEADER, HeaderValue::from_static("abc"));
        assert!(csrf_matches(&headers));
    }

    #[test]
    fn clearing_expires_all_three() {
        let mut headers = HeaderMap::new();
        clear_session(&mut headers, true);
        let cookies = set_cookies(&headers);
        assert_eq!(cookies.len(), 3);
        assert!(cookies.iter().all(|c| c.contains("Max-Age=0")));
    }

    #[test]
    fn insecure_cookies_leave_out_only_secure() {
        let mut headers = HeaderMap::new();
        clear_session(&mut headers, false);
        let cookies = set_cookies(&headers);
        assert_eq!(cookies[0], "tg_access=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict");
    }
}
