//! Reading REST requests without axum's plain-text rejections: JSON bodies,
//! query strings and path ids are parsed here, and every problem becomes a
//! 400 INVALID_ARGUMENT whose google.rpc.BadRequest detail names the field.
//!
//! Bodies are read field by field from a JSON object rather than through
//! `serde::Deserialize`, so that an error can always say which field was
//! wrong, unknown fields are refused by name, and PATCH can see which fields
//! were present.

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use http::{HeaderMap, StatusCode, header, request::Parts};
use serde_json::{Map, Value};
use taskgate_common::status::{invalid_field, invalid_fields};
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

/// A request body: `None` when empty, otherwise a JSON object.
///
/// A non-empty body must be declared `application/json` (or `+json`), must be
/// well-formed JSON and must be an object.
#[derive(Debug)]
pub struct JsonBody(pub Option<JsonObject>);

impl JsonBody {
    /// The object, or an empty one when no body was sent; for requests
    /// whose fields are all optional.
    pub fn or_empty(self) -> JsonObject {
        self.0.unwrap_or_default()
    }

    /// The object, or a 400 saying a body is required.
    pub fn required(self) -> Result<JsonObject, RestError> {
        self.0.ok_or_else(|| invalid_field("body", "a JSON object is required").into())
    }
}

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = RestError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let is_json =
            request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(is_json_content_type);
        let bytes = axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES).await.map_err(|_| {
            RestError::with_http(
                StatusCode::PAYLOAD_TOO_LARGE,
                invalid_field("body", format!("must be at most {MAX_BODY_BYTES} bytes")),
            )
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(None));
        }
        if is_json != Some(true) {
            return Err(RestError::with_http(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                invalid_field("content-type", "must be application/json"),
            ));
        }
        JsonObject::parse(&bytes).map(|o| Self(Some(o)))
    }
}

/// Whether a `content-type` value names JSON (`application/json`,
/// `application/problem+json`, any parameters).
fn is_json_content_type(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// A JSON object being read field by field. Each `take_*` removes a field;
/// [`JsonObject::finish`] then refuses whatever is left as unknown.
#[derive(Debug, Default)]
pub struct JsonObject {
    /// The fields not taken yet.
    fields: Map<String, Value>,
}

impl JsonObject {
    /// Parses `bytes` as a JSON object.
    pub fn parse(bytes: &[u8]) -> Result<Self, RestError> {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(fields)) => Ok(Self { fields }),
            Ok(_) => Err(invalid_field("body", "must be a JSON object").into()),
            Err(e) => Err(invalid_field("body", format!("malformed JSON: {e}")).into()),
        }
    }

    /// Whether `name` is present (and not taken yet).
    pub fn has(&self, name: &str) -> bool {
        self.fields.contains_key(name)
    }

    /// An optional string field; `null` is refused like any other non-string.
    pub fn take_string(&mut self, name: &str) -> Result<Option<String>, RestError> {
        match self.fields.remove(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(invalid_field(name, "must be a string").into()),
        }
    }

    /// A required string field.
    pub fn require_string(&mut self, name: &str) -> Result<String, RestError> {
        self.take_string(name)?.ok_or_else(|| invalid_field(name, "is required").into())
    }

    /// Refuses every field not taken, naming each.
    pub fn finish(self) -> Result<(), RestError> {
        if self.fields.is_empty() {
            return Ok(());
        }
        let violations = self.fields.into_iter().map(|(name, _)| (name, "unknown field".to_owned())).collect();
        Err(invalid_fields(violations).into())
    }
}

/// A query string's parameters, read one by one like [`JsonObject`]; unknown
/// parameters are ignored, as is usual for query strings.
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

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::parse(parts.uri.query()))
    }
}

/// The `{id}` path parameter, which must be a UUID.
#[derive(Debug)]
pub struct PathId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = RestError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| RestError::from(invalid_field("id", e.body_text())))?;
        match uuid::Uuid::try_parse(&id) {
            Ok(uuid) => Ok(Self(uuid.to_string())),
            Err(_) => Err(invalid_field("id", "must be a UUID").into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(error: RestError) -> String {
        let details = tonic_types::StatusExt::get_error_details(&error.status);
        let bad = details.bad_request().expect("a BadRequest detail");
        bad.field_violations[0].field.clone()
    }

    #[test]
    fn a_wrongly_typed_field_is_named() {
        let mut body = JsonObject::parse(br#"{"title": 7}"#).expect("an object");
        assert_eq!(field_of(body.take_string("title").expect_err("a number is not a string")), "title");
    }

    #[test]
    fn unknown_fields_are_named() {
        let mut body = JsonObject::parse(br#"{"title": "a", "colour": "red"}"#).expect("an object");
        body.take_string("title").expect("title is a string");
        assert_eq!(field_of(body.finish().expect_err("colour is unknown")), "colour");
    }

    #[test]
    fn malformed_json_and_non_objects_blame_the_body() {
        assert_eq!(field_of(JsonObject::parse(b"{nope").expect_err("malformed")), "body");
        assert_eq!(field_of(JsonObject::parse(b"[1]").expect_err("not an object")), "body");
    }

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
