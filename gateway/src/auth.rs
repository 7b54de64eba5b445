//! Authentication at the edge, for all three protocols alike.
//!
//! On the way in, every header through which a client could claim an identity
//! is removed and `x-client-ip` is set from the connection's real peer. Then
//! the access token (from `Authorization: Bearer` or the access cookie, see
//! [`CookiePolicy`]) is verified with the shared [`Verifier`] (signature
//! against the cached JWKS, type, issuer, audience, expiry). A
//! cookie-authenticated write must carry the CSRF token of the cookie's own
//! session. A verified request carries
//! `authorization: Bearer <token>` to the backends, whichever way the token
//! came, and its [`Claims`] in the request extensions. Revocation is checked
//! by the rate-limit layer, in the same Redis round trip as the limit.

use std::{net::IpAddr, sync::Arc};

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::Response,
};
use http::{HeaderMap, HeaderValue, Method, header::AUTHORIZATION};
use prost_reflect::{DynamicMessage, MethodDescriptor};
use taskgate_tokens::{Claims, TokenKind, Verifier, VerifyError};
use tonic::Status;

use crate::{
    cookies::CookiePolicy,
    policy::{RateLimit, Route},
    protocol::{ClientAddr, ClientIp, Protocol, reject},
};

/// The header the gateway sets to the client's real address.
pub const CLIENT_IP_HEADER: &str = "x-client-ip";

/// Headers a backend or a log might take as a statement of who the caller is
/// or where they are; clients may not send them, so they are dropped on
/// entry. Anything starting with `x-taskgate-` is dropped too.
pub const IDENTITY_HEADERS: &[&str] = &[
    "x-user-id",
    "x-user",
    "x-user-email",
    "x-user-name",
    "x-username",
    "x-user-roles",
    "x-authenticated-user",
    "x-authenticated-userid",
    "x-auth-user",
    "x-auth-request-user",
    "x-auth-request-email",
    "x-remote-user",
    "remote-user",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-preferred-username",
    "x-session-id",
    "x-claims",
    "x-jwt-claims",
    "x-jwt-payload",
    "x-client-ip",
    "x-real-ip",
    "x-forwarded-for",
    "forwarded",
];

/// What the authentication layer needs: the verifier (with its key set and
/// its memory of verified tokens), the trusted proxies and the cookie policy.
pub struct EdgeAuth {
    /// Verifies access tokens against the auth service's JWKS, cached in
    /// memory; remembers verified access tokens so a client's every call does
    /// not pay an Ed25519 verification (revocation is still checked per request).
    verifier: Verifier,
    /// Peers (load balancers) whose `X-Forwarded-For` is believed (`TRUSTED_PROXIES`).
    trusted_proxies: Vec<IpAddr>,
    /// Cookie names and CSRF tokens.
    cookies: CookiePolicy,
}

impl EdgeAuth {
    /// Authentication with `verifier`, believing `X-Forwarded-For` from
    /// `trusted_proxies` only, reading cookies as `cookies` says.
    pub fn new(verifier: Verifier, trusted_proxies: Vec<IpAddr>, cookies: CookiePolicy) -> EdgeAuth {
        EdgeAuth { verifier, trusted_proxies, cookies }
    }

    /// The claims of `token` if it is a valid token of `kind`.
    pub async fn verify(&self, token: &str, kind: TokenKind) -> Result<Claims, VerifyError> {
        self.verifier.verify(token, kind).await
    }
}

/// How a request presented its access token.
#[derive(Debug, PartialEq, Eq)]
enum Credential<'a> {
    /// `Authorization: Bearer <token>`.
    Bearer(&'a str),
    /// The `tg_access` cookie.
    Cookie(&'a str),
}

/// The client's address: `peer`, unless `peer` is a trusted proxy; then the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy
/// (entries left of it could have been written by the client). Entries may
/// carry a port (`1.2.3.4:5678`, `[2001:db8::1]:443`); IPv4-mapped IPv6
/// addresses come out as IPv4.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &[IpAddr]) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted_proxies.contains(&peer) {
        return peer;
    }
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for entry in forwarded.iter().rev() {
        match forwarded_ip(entry) {
            Some(ip) if trusted_proxies.contains(&ip) => continue,
            Some(ip) => return ip,
            // Garbage from here leftwards cannot be trusted.
            None => return peer,
        }
    }
    peer
}

/// One `X-Forwarded-For` entry as an address: bare, `ip:port`, `[v6]` or
/// `[v6]:port`, canonical (IPv4-mapped IPv6 as IPv4).
fn forwarded_ip(entry: &str) -> Option<IpAddr> {
    let ip = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| entry.strip_prefix('[')?.strip_suffix(']')?.parse().ok())?;
    Some(ip.to_canonical())
}

/// Removes every client-supplied identity header and sets `x-client-ip`.
pub fn strip_identity_headers(headers: &mut HeaderMap, client: Option<IpAddr>) {
    for name in IDENTITY_HEADERS {
        headers.remove(*name);
    }
    let prefixed: Vec<_> = headers.keys().filter(|k| k.as_str().starts_with("x-taskgate-")).cloned().collect();
    for name in prefixed {
        headers.remove(name);
    }
    if let Some(ip) = client
        && let Ok(value) = HeaderValue::from_str(&ip.to_string())
    {
        headers.insert(CLIENT_IP_HEADER, value);
    }
}

/// The token the request presents; the header wins over the cookie.
fn credential<'a>(headers: &'a HeaderMap, cookies: &CookiePolicy) -> Option<Credential<'a>> {
    if let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok())
        && let Some((scheme, token)) = value.split_once(' ')
        && scheme.eq_ignore_ascii_case("bearer")
        && !token.trim().is_empty()
    {
        return Some(Credential::Bearer(token.trim()));
    }
    cookies.access_token(headers).map(Credential::Cookie)
}

/// Writes are the methods a cross-site form or script could trigger with cookies.
fn is_unsafe(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The authentication middleware (see the module documentation).
///
/// Routes whose contract policy is public pass without a token. A token sent to one is still verified:
/// a good one makes the call the user's (logout names its session that way,
/// and the user's budget is charged); a bad one, or a cookie without its CSRF
/// token on a write, is dropped and the call goes on anonymously, so an
/// expired token that a client attaches to every call never locks it out of
/// login or refresh.
pub async fn authenticate(State(auth): State<Arc<EdgeAuth>>, mut request: Request, next: Next) -> Response {
    let client = request
        .extensions()
        .get::<ClientAddr>()
        .map(|ClientAddr(peer)| client_ip(peer.ip(), request.headers(), &auth.trusted_proxies));
    strip_identity_headers(request.headers_mut(), client);
    if let Some(ip) = client {
        request.extensions_mut().insert(ClientIp(ip));
    }
    let protocol = Protocol::of(request.headers());
    let route = Route::of(&request);
    let public = route.is_public();
    if route.rate_limit == RateLimit::RefreshTokenOwner {
        request = match charge_refresh_to_its_user(&auth, request, protocol, route.rpc).await {
            Ok(request) => request,
            Err(response) => return *response,
        };
    }

    let (token, via_cookie) = match credential(request.headers(), &auth.cookies) {
        None if public => return next.run(request).await,
        None => return reject(protocol, &Status::unauthenticated("missing bearer token")),
        Some(Credential::Bearer(t)) => (t.to_owned(), false),
        Some(Credential::Cookie(t)) => (t.to_owned(), true),
    };
    let claims = match auth.verify(&token, TokenKind::Access).await {
        Ok(claims) => claims,
        Err(_) if public => return next.run(anonymous(request, via_cookie)).await,
        Err(e) => return reject(protocol, &Status::from(e)),
    };
    if via_cookie && is_unsafe(request.method()) && !auth.cookies.csrf_ok(request.headers(), &claims.sid) {
        if public {
            return next.run(anonymous(request, via_cookie)).await;
        }
        return reject(
            protocol,
            &Status::permission_denied("cookie-authenticated writes need a matching x-csrf-token"),
        );
    }
    if via_cookie && let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) {
        request.headers_mut().insert(AUTHORIZATION, value);
    }
    request.extensions_mut().insert(claims);
    next.run(request).await
}

/// The user a refresh call is charged to: the `sub` of its refresh token,
/// once the token's signature verifies. Set by the authentication layer on
/// Refresh calls, read by the rate limit, so that refreshes are charged to
/// the token's user and not to everyone behind the caller's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshOf(pub String);

/// Reads the `refresh_token` field of a call whose policy charges it to
/// the refresh token's owner (from the gRPC or gRPC-web message, decoded
/// as `rpc`'s request type, the JSON body, or the refresh cookie) and, if
/// its signature verifies, marks the request [`RefreshOf`] its user. The body (a few hundred bytes) is read
/// into memory and put back; one larger than any valid message is refused.
async fn charge_refresh_to_its_user(
    auth: &EdgeAuth,
    request: Request,
    protocol: Protocol,
    rpc: Option<&MethodDescriptor>,
) -> Result<Request, Box<Response>> {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, taskgate_common::grpc::MAX_MESSAGE_BYTES)
        .await
        .map_err(|_| Box::new(reject(protocol, &Status::invalid_argument("request body too large"))))?;
    let token = match protocol {
        Protocol::Grpc | Protocol::GrpcWeb => rpc.and_then(|rpc| grpc_refresh_token(rpc, &bytes)),
        Protocol::Rest => serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get(REFRESH_TOKEN_FIELD)?.as_str().map(str::to_owned))
            .or_else(|| auth.cookies.refresh_token(&parts.headers).map(str::to_owned)),
    };
    let mut request = Request::from_parts(parts, axum::body::Body::from(bytes));
    if let Some(token) = token
        && let Ok(claims) = auth.verify(&token, TokenKind::Refresh).await
    {
        request.extensions_mut().insert(RefreshOf(claims.sub));
    }
    Ok(request)
}

/// The request field `RATE_LIMIT_REFRESH_TOKEN_OWNER` reads.
const REFRESH_TOKEN_FIELD: &str = "refresh_token";

/// The `refresh_token` field of the first message of a (binary) gRPC or
/// gRPC-web body, decoded as `rpc`'s request type.
fn grpc_refresh_token(rpc: &MethodDescriptor, body: &[u8]) -> Option<String> {
    let (&flag, rest) = body.split_first()?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let message = rest.get(4..4 + len)?;
    (flag == 0).then_some(())?;
    let request = DynamicMessage::decode(rpc.input(), message).ok()?;
    let token = request.get_field_by_name(REFRESH_TOKEN_FIELD)?.as_str()?.to_owned();
    Some(token).filter(|t| !t.is_empty())
}

/// The request without the credential that failed: an unverified Bearer
/// header is removed so no backend acts on it (a cookie stays for the REST
/// routes that read their own cookies, and never reaches a gRPC backend).
fn anonymous(mut request: Request, via_cookie: bool) -> Request {
    if !via_cookie {
        request.headers_mut().remove(AUTHORIZATION);
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("ascii"));
        }
        h
    }

    #[test]
    fn identity_headers_are_stripped_and_the_real_peer_is_set() {
        let mut h = headers(&[
            ("x-user-id", "someone"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-client-ip", "1.2.3.4"),
            ("x-taskgate-user", "admin"),
            ("x-request-id", "keep"),
        ]);
        strip_identity_headers(&mut h, Some("10.0.0.7".parse().expect("addr")));
        assert!(h.get("x-user-id").is_none());
        assert!(h.get("x-forwarded-for").is_none());
        assert!(h.get("x-taskgate-user").is_none());
        assert_eq!(h["x-client-ip"], "10.0.0.7");
        assert_eq!(h["x-request-id"], "keep");
    }

    #[test]
    fn forwarded_for_is_believed_from_trusted_proxies_only() {
        let lb: IpAddr = "10.0.0.2".parse().expect("ip");
        let client: IpAddr = "198.51.100.7".parse().expect("ip");
        let h = headers(&[("x-forwarded-for", "203.0.113.66, 198.51.100.7")]);
        assert_eq!(client_ip(client, &h, &[lb]), client, "an untrusted peer is the client");
        assert_eq!(client_ip(lb, &h, &[lb]), client, "the right-most entry the proxy added");
        let h = headers(&[("x-forwarded-for", "198.51.100.7, 10.0.0.2")]);
        assert_eq!(client_ip(lb, &h, &[lb]), client, "trusted hops are skipped");
        let h = headers(&[("x-forwarded-for", "203.0.113.66, 198.51.100.7:4711")]);
        assert_eq!(client_ip(lb, &h, &[lb]), client, "a port is not part of the address");
        let h = headers(&[("x-forwarded-for", "[2001:db8::7]:443")]);
        assert_eq!(client_ip(lb, &h, &[lb]), "2001:db8::7".parse::<IpAddr>().expect("ip"));
        let h = headers(&[("x-forwarded-for", "::ffff:198.51.100.7")]);
        assert_eq!(client_ip(lb, &h, &[lb]), client, "IPv4-mapped addresses are IPv4");
        let mapped: IpAddr = "::ffff:198.51.100.7".parse().expect("ip");
        assert_eq!(client_ip(mapped, &HeaderMap::new(), &[]), client);
        let h = headers(&[("x-forwarded-for", "junk")]);
        assert_eq!(client_ip(lb, &h, &[lb]), lb);
        assert_eq!(client_ip(lb, &HeaderMap::new(), &[lb]), lb);
    }

    #[test]
    fn the_header_wins_over_the_cookie() {
        let policy = CookiePolicy::new(true, None);
        let h = headers(&[("authorization", "Bearer hdr"), ("cookie", "__Host-tg_access=ck")]);
        assert_eq!(credential(&h, &policy), Some(Credential::Bearer("hdr")));
        let h = headers(&[("authorization", "Basic xyz"), ("cookie", "__Host-tg_access=ck")]);
        assert_eq!(credential(&h, &policy), Some(Credential::Cookie("ck")));
        let h = headers(&[("cookie", "tg_access=planted-by-a-sibling")]);
        assert_eq!(credential(&h, &policy), None, "secure cookies are read by their prefixed names only");
        assert_eq!(credential(&HeaderMap::new(), &policy), None);
    }
}
