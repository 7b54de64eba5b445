//! Which of the three protocols a request speaks, and how the gateway answers
//! an error in each: a gRPC status for gRPC and gRPC-web, the JSON error
//! shape for REST. Every layer that refuses a request goes through [`reject`].

use std::{
    net::{IpAddr, SocketAddr},
    time::Instant,
};

use axum::{body::Body, response::Response};
use http::{HeaderMap, HeaderValue, header::CONTENT_TYPE};
use tonic::Status;

use crate::rest::error::json_error;

/// The wire protocol of one request, told by its `content-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Native gRPC over HTTP/2 (`application/grpc`, `application/grpc+proto`).
    Grpc,
    /// gRPC-web (`application/grpc-web...`), as browsers send it.
    GrpcWeb,
    /// Anything else: REST/JSON and the plain HTTP endpoints.
    Rest,
}

impl Protocol {
    /// The protocol of a request with these headers.
    pub fn of(headers: &HeaderMap) -> Protocol {
        let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if content_type.starts_with("application/grpc-web") {
            Protocol::GrpcWeb
        } else if content_type.starts_with("application/grpc") {
            Protocol::Grpc
        } else {
            Protocol::Rest
        }
    }

    /// The label used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::GrpcWeb => "grpc-web",
            Protocol::Rest => "rest",
        }
    }

    /// True for gRPC and gRPC-web.
    pub fn is_grpc(self) -> bool {
        self != Protocol::Rest
    }
}

/// The peer address of the connection a request came in on, put in the
/// request's extensions by the server loop. Never taken from a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// The client's address as the gateway trusts it: the peer, or, when the
/// peer is one of `TRUSTED_PROXIES`, the address that proxy reports in
/// `X-Forwarded-For`. Set by the authentication layer; anonymous callers are
/// rate-limited by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl ClientIp {
    /// The rate-limit subject of this address: an IPv4 address, or the /64
    /// of an IPv6 one (`2001:db8:1:2::/64`), since one subscriber usually
    /// holds a whole /64 and could otherwise rotate through it.
    pub fn subject(self) -> String {
        match self.0.to_canonical() {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => {
                let s = v6.segments();
                let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("{net}/64")
            }
        }
    }
}

/// When the gateway received a request; deadlines forwarded to the backends
/// are shortened by the time already spent at the gateway.
#[derive(Debug, Clone, Copy)]
pub struct ReceivedAt(pub Instant);

/// The gateway's own answer carrying `status`, in the request's protocol.
///
/// gRPC and gRPC-web get a trailers-only response (HTTP 200, `grpc-status`,
/// `grpc-message` and `grpc-status-details-bin` as headers), which both
/// protocols define; REST gets the JSON error shape with its HTTP status.
pub fn reject(protocol: Protocol, status: &Status) -> Response {
    match protocol {
        Protocol::Rest => json_error(status),
        Protocol::Grpc | Protocol::GrpcWeb => {
            let mut response = Response::new(Body::empty());
            let content_type =
                if protocol == Protocol::Grpc { "application/grpc" } else { "application/grpc-web+proto" };
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            if status.add_header(response.headers_mut()).is_err() {
                // Only a message with bytes no header may hold gets here; the code still goes out.
                response.headers_mut().insert("grpc-status", HeaderValue::from(status.code() as i32));
            }
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;

    fn headers(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_str(content_type).expect("ascii"));
        h
    }

    #[test]
    fn content_type_tells_the_protocol() {
        assert_eq!(Protocol::of(&headers("application/grpc")), Protocol::Grpc);
        assert_eq!(Protocol::of(&headers("application/grpc+proto")), Protocol::Grpc);
        assert_eq!(Protocol::of(&headers("application/grpc-web+proto")), Protocol::GrpcWeb);
        assert_eq!(Protocol::of(&headers("application/grpc-web-text")), Protocol::GrpcWeb);
        assert_eq!(Protocol::of(&headers("application/json")), Protocol::Rest);
        assert_eq!(Protocol::of(&HeaderMap::new()), Protocol::Rest);
    }

    #[test]
    fn addresses_are_keyed_by_ipv4_address_or_ipv6_slash_64() {
        let subject = |ip: &str| ClientIp(ip.parse().expect("ip")).subject();
        assert_eq!(subject("198.51.100.7"), "198.51.100.7");
        assert_eq!(subject("::ffff:198.51.100.7"), "198.51.100.7");
        assert_eq!(subject("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::/64");
        assert_eq!(subject("2001:db8:1:2::1"), subject("2001:db8:1:2:ffff::9"));
        assert_ne!(subject("2001:db8:1:2::1"), subject("2001:db8:1:3::1"));
    }

    #[test]
    fn grpc_rejections_are_trailers_only_responses() {
        let response = reject(Protocol::Grpc, &Status::unauthenticated("missing bearer token"));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["grpc-status"], "16");
        assert_eq!(response.headers()["grpc-message"], "missing%20bearer%20token");
        assert_eq!(response.headers()[CONTENT_TYPE], "application/grpc");
    }

    #[test]
    fn rest_rejections_use_the_json_error_shape() {
        let response = reject(Protocol::Rest, &Status::unauthenticated("missing bearer token"));
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
}
