//! Reading REST requests without axum's plain-text rejections: JSON bodies
//! and query strings are read here, and every problem becomes a 400
//! INVALID_ARGUMENT whose google.rpc.BadRequest detail names the field (or
//! a 413 / 415 for a body too large or not JSON).

use axum::body::Body;
use http::{HeaderMap, StatusCode, header};
use serde_json::{Map, Value};
use taskgate_common::status::invalid_field;
use tonic::metadata::MetadataValue;

use crate::rest::error::RestError;

/// The largest request body read, in bytes; a task description is at most
/// 10,000 characters, so this leaves ample room for any valid request.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Inbound headers copied into the metadata of every backend call: the
/// (already verified) credentials, the request id for log correlation, and
/// the client's user agent and address, which the auth service records on
/// new sessions.
pub const FORWARDED_HEADERS: &[&str] = &["authorization", "x-request-id", "user-agent", "x-client-ip"];

/// Wraps `message` in a gRPC request carrying the [`FORWARDED_HEADERS`] of
/// the REST request.
pub fn grpc_request<T>(headers: &HeaderMap, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for name in FORWARDED_HEADERS {
        // A header that is not valid metadata (non-ASCII) is dropped rather
        // than failing the call; none of these is ever legitimately binary.
        if let Some(value) = headers.get(*name)
            && let Ok(value) = MetadataValue::try_from(value.as_bytes())
        {
            request.metadata_mut().insert(*name, value);
        }
    }
    request
}

/// Reads a request body: `None` when empty (or only white space),
/// otherwise a JSON object. A non-empty body must be declared
/// `application/json` (or `+json`), well-formed and an object.
pub async fn json_body(headers: &HeaderMap, body: Body) -> Result<Option<Map<String, Value>>, RestError> {
    let is_json = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(is_json_content_type);
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES).await.map_err(|_| {
        RestError::with_http(
            StatusCode::PAYLOAD_TOO_LARGE,
            invalid_field("body", format!("must be at most {MAX_BODY_BYTES} bytes")),
        )
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    if is_json != Some(true) {
        return Err(RestError::with_http(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            invalid_field("content-type", "must be application/json"),
        ));
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(fields)) => Ok(Some(fields)),
        Ok(_) => Err(invalid_field("body", "must be a JSON object").into()),
        Err(e) => Err(invalid_field("body", format!("malformed JSON: {e}")).into()),
    }
}

/// Whether a `content-type` value names JSON (`application/json`,
/// `application/problem+json`, any parameters).
fn is_json_content_type(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// A query string's parameters.
#[derive(Debug, Default)]
pub struct QueryParams {
    /// The decoded `(name, value)` pairs, in order.
    pairs: Vec<(String, String)>,
}

impl QueryParams {
    /// Decodes an `application/x-www-form-urlencoded` query string.
    pub fn parse(query: Option<&str>) -> Self {
        let pairs = form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned().collect();
        Self { pairs }
    }

    /// Every `(name, value)` pair, in order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The last value of `name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// A boolean flag, `true` or `false` exactly (as documented), false when
    /// absent.
    pub fn flag(&self, name: &str) -> Result<bool, RestError> {
        match self.get(name) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(_) => Err(invalid_field(name, "must be true or false").into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types_are_recognised() {
        assert!(is_json_content_type("application/json"));
        assert!(is_json_content_type("Application/JSON; charset=utf-8"));
        assert!(is_json_content_type("application/merge-patch+json"));
        assert!(!is_json_content_type("text/plain"));
    }

    #[test]
    fn forwarded_headers_become_metadata() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer x".parse().expect("a header value"));
        headers.insert("x-request-id", "r1".parse().expect("a header value"));
        headers.insert("cookie", "tg_access=secret".parse().expect("a header value"));
        let request = grpc_request(&headers, ());
        assert_eq!(request.metadata().get("authorization").and_then(|v| v.to_str().ok()), Some("Bearer x"));
        assert_eq!(request.metadata().get("x-request-id").and_then(|v| v.to_str().ok()), Some("r1"));
        assert!(request.metadata().get("cookie").is_none());
    }
}
