//! The single JSON error shape of the REST surface: the JSON form of
//! google.rpc.Status, `{"code": <grpc code>, "message": "...", "details": [...]}`,
//! sent with the HTTP status of the usual gRPC-to-HTTP table; a 503 also
//! says when to retry in `Retry-After`.

use axum::{
    Json,
    response::{IntoResponse, Response},
};
use http::{HeaderValue, StatusCode, header::RETRY_AFTER};
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt as _;

/// The HTTP status for a gRPC code (google.rpc.Code mapping).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The JSON body for `status`, with its details (BadRequest, RetryInfo, ...)
/// in the `@type`-tagged form of the proto3 JSON mapping.
pub fn json_body(status: &tonic::Status) -> Value {
    let details = status.get_error_details();
    let mut out = Vec::new();
    if let Some(bad) = details.bad_request() {
        let violations: Vec<Value> =
            bad.field_violations.iter().map(|v| json!({"field": v.field, "description": v.description})).collect();
        out.push(json!({"@type": "type.googleapis.com/google.rpc.BadRequest", "field_violations": violations}));
    }
    if let Some(retry) = details.retry_info()
        && let Some(delay) = retry.retry_delay
    {
        out.push(json!({
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retry_delay": format!("{}s", delay.as_secs_f64()),
        }));
    }
    if let Some(info) = details.error_info() {
        out.push(json!({
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": info.reason,
            "domain": info.domain,
            "metadata": info.metadata,
        }));
    }
    json!({"code": status.code() as i32, "message": status.message(), "details": out})
}

/// The full REST error response for `status`. A 503 carries `Retry-After`:
/// the status's RetryInfo delay in whole seconds (rounded up), else 1.
pub fn json_error(status: &tonic::Status) -> Response {
    let http = http_status(status.code());
    let mut response = (http, Json(json_body(status))).into_response();
    if http == StatusCode::SERVICE_UNAVAILABLE {
        let delay = status.get_error_details().retry_info().and_then(|r| r.retry_delay);
        let seconds = delay.map_or(1, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1);
        response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// Why a REST request failed: a google.rpc.Status, sent by [`json_error`].
///
/// A few failures that happen before a request is understood at all (wrong
/// method, body too large, not JSON) have an HTTP status of their own that
/// the gRPC table cannot express; `http` overrides the table for those.
#[derive(Debug)]
pub struct RestError {
    /// The status whose JSON form is the response body.
    pub status: tonic::Status,
    /// The HTTP status, when not the one the gRPC table gives `status`.
    pub http: Option<StatusCode>,
}

impl RestError {
    /// A failure sent with `http` instead of the table's HTTP status.
    pub fn with_http(http: StatusCode, status: tonic::Status) -> Self {
        Self { status, http: Some(http) }
    }
}

impl From<tonic::Status> for RestError {
    fn from(status: tonic::Status) -> Self {
        Self { status, http: None }
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let mut response = json_error(&self.status);
        if let Some(http) = self.http {
            *response.status_mut() = http;
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_matches_the_contract() {
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(Code::PermissionDenied), StatusCode::FORBIDDEN);
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(http_status(Code::AlreadyExists), StatusCode::CONFLICT);
        assert_eq!(http_status(Code::ResourceExhausted), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(http_status(Code::Unavailable), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(http_status(Code::Internal), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn a_503_says_when_to_retry() {
        let retry_after = |status: &tonic::Status| {
            let response = json_error(status);
            response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_owned)
        };
        assert_eq!(retry_after(&tonic::Status::unavailable("down")).as_deref(), Some("1"));
        let with_info = tonic::Status::with_error_details(
            Code::Unavailable,
            "down",
            tonic_types::ErrorDetails::with_retry_info(Some(std::time::Duration::from_millis(2500))),
        );
        assert_eq!(retry_after(&with_info).as_deref(), Some("3"));
        assert_eq!(retry_after(&tonic::Status::internal("bug")), None);
    }

    #[test]
    fn field_errors_carry_a_bad_request_detail() {
        let status = taskgate_common::status::invalid_field("title", "must not be empty");
        let body = json_body(&status);
        assert_eq!(body["code"], 3);
        assert_eq!(body["details"][0]["@type"], "type.googleapis.com/google.rpc.BadRequest");
        assert_eq!(body["details"][0]["field_violations"][0]["field"], "title");
    }
}
