//! REST/JSON routes, transcoded to the backends' gRPC APIs as declared by the
//! `google.api.http` annotations in `proto/`.
//!
//! The router is built from the bindings of a descriptor pool (the
//! contract's, or a test's own): a route exists exactly when an annotation
//! declares it, and one generic handler ([`transcode`]) serves them all.
//! Every failure, including a path or method that does not exist and a body
//! that is not valid JSON, is answered in the one JSON error shape.
//!
//! # Layout
//! - [`transcode`]: bindings compiled from the descriptors, and the handler.
//! - [`json`]: the JSON form of messages (proto3 JSON with REST-friendly rules).
//! - [`error`]: the one JSON error shape (google.rpc.Status) and the
//!   gRPC-to-HTTP status table.
//! - `extract`: reading bodies and query strings, with JSON rejections.
//! - `/openapi.json`: the OpenAPI 3.1 document `taskgate_openapi` generates
//!   from the same descriptors.
//! - `docs`: Swagger UI at `/docs`, vendored and embedded.
//! - [`watch`]: server-streaming RPCs as Server-Sent Events.

mod docs;
pub mod error;
mod extract;
pub mod json;
pub mod transcode;
pub mod watch;

use std::sync::{Arc, LazyLock};

use axum::response::{IntoResponse as _, Response};
use axum::{
    Router,
    extract::Request,
    routing::{MethodFilter, get, on},
};
use http::{Method, StatusCode, Uri, header};
use taskgate_proto::HttpRule;
use tonic::Status;

use crate::{
    cookies::CookiePolicy,
    rest::{
        error::RestError,
        transcode::{Binding, Shared},
    },
    upstream::Backends,
    watch::WatchSlots,
};

/// The REST routes of taskgate's contract, forwarding to `backends`.
///
/// Authentication and rate limiting are layers the caller wraps around this
/// router; by the time a handler runs, any token (header or cookie) has been
/// verified and normalised into an `authorization: Bearer` header.
///
/// The router has its own fallbacks (JSON 404 for unknown paths, JSON 405 for
/// a known path with another method), so callers should `merge` it last or
/// `fallback_service` to it rather than add fallbacks of their own.
///
/// Session cookies (`?cookies=true`) are named, set and CSRF-checked as
/// `cookies` says (the same policy the authentication layer reads them with).
///
/// `watch` bounds the streams this replica serves, together with the gRPC
/// proxy's.
pub fn router(backends: Backends, cookies: CookiePolicy, watch: WatchSlots) -> Router {
    router_for(taskgate_proto::HTTP_RULES.iter().cloned(), backends, cookies, watch)
        .route("/openapi.json", get(openapi))
        .route("/docs", get(docs::index))
        .route("/docs/", get(|| async { axum::response::Redirect::permanent("/docs") }))
        .route("/docs/{file}", get(docs::asset))
        // Must follow every `route`: it only applies to routes already added.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
}

/// The REST routes of `rules` (the bindings of any descriptor pool, see
/// `taskgate_proto::http_rules`), without the document, docs or fallbacks.
/// A binding the transcoder cannot serve is logged and left out (a test
/// makes this unreachable for the contract).
pub fn router_for(
    rules: impl IntoIterator<Item = HttpRule>,
    backends: Backends,
    cookies: CookiePolicy,
    watch: WatchSlots,
) -> Router {
    // Shared behind one Arc: every request clones a pointer, not the table of upstreams.
    let shared = Arc::new(Shared { backends, cookies, watch });
    let mut router = Router::new();
    for rule in rules {
        let (method, verb) = (rule.method.clone(), rule.verb);
        let (Some(filter), Ok(binding)) = (method_filter(verb), Binding::new(rule)) else {
            tracing::error!(method, verb, "a REST binding the transcoder cannot serve");
            continue;
        };
        let binding = Arc::new(binding);
        let path = binding.axum_path.clone();
        let shared = shared.clone();
        router = router.route(
            &path,
            on(filter, move |request: Request| transcode::handle(binding.clone(), shared.clone(), request)),
        );
    }
    router
}

/// The axum method filter for an upper-case HTTP verb.
fn method_filter(verb: &str) -> Option<MethodFilter> {
    match verb {
        "GET" => Some(MethodFilter::GET),
        "POST" => Some(MethodFilter::POST),
        "PUT" => Some(MethodFilter::PUT),
        "PATCH" => Some(MethodFilter::PATCH),
        "DELETE" => Some(MethodFilter::DELETE),
        _ => None,
    }
}

/// `GET /openapi.json`: the contract's document, serialised once.
async fn openapi() -> Response {
    static SERVED: LazyLock<Vec<u8>> =
        LazyLock::new(|| serde_json::to_vec_pretty(taskgate_openapi::document()).unwrap_or_default());
    let headers = [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-cache")];
    (headers, SERVED.as_slice()).into_response()
}

/// 404 for a path no binding serves, in the JSON error shape.
async fn not_found(method: Method, uri: Uri) -> RestError {
    Status::not_found(format!("no route for {method} {}", uri.path())).into()
}

/// 405 for a known path with another method, in the JSON error shape
/// (axum adds the `allow` header).
async fn method_not_allowed(method: Method, uri: Uri) -> RestError {
    RestError::with_http(
        StatusCode::METHOD_NOT_ALLOWED,
        Status::unimplemented(format!("method {method} is not allowed on {}", uri.path())),
    )
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http::{Request, StatusCode, header};
    use serde_json::Value;
    use taskgate_proto::{
        HTTP_RULES,
        service_names::{AUTH, TASK},
    };
    use taskgate_test_support::openapi::check_response;
    use tower::ServiceExt as _;

    use super::*;
    use crate::upstream::Upstream;
    use taskgate_proto::contract::route_path;

    /// A router whose backends are at an address nothing listens on, so any
    /// request that reaches a backend fails with UNAVAILABLE.
    fn dead_router() -> Router {
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9")
            .connect_timeout(std::time::Duration::from_millis(200))
            .connect_lazy();
        let channel = taskgate_common::balance::BalancedChannel::from(channel);
        let backends = Backends::new()
            .with(AUTH, Upstream::new("auth", channel.clone()))
            .with(TASK, Upstream::new("task", channel));
        router(backends, CookiePolicy::new(true, None), WatchSlots::new(10))
    }

    /// Sends one request; returns the status, headers and body (as JSON when
    /// it is JSON, else `Value::Null`).
    async fn send(request: Request<Body>) -> (StatusCode, http::HeaderMap, Value) {
        let response = dead_router().oneshot(request).await.expect("the router is infallible");
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.expect("reading the body");
        (parts.status, parts.headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    fn request(method: &str, uri: &str, body: &str) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_owned()))
            .expect("a valid request")
    }

    fn violated_field(body: &Value) -> &str {
        body["details"][0]["field_violations"][0]["field"].as_str().unwrap_or_default()
    }

    #[tokio::test]
    async fn every_annotated_route_is_served() {
        let id = "6f1d0b5e-8c1a-4a53-9d7e-2b8e0d8c1a11";
        for rule in HTTP_RULES.iter() {
            let path = route_path(&rule.path).replace("{id}", id);
            let body = match rule.method.as_str() {
                "CreateTask" | "UpdateTask" => r#"{"title": "t"}"#,
                "Register" => r#"{"username": "alice", "password": "correct horse"}"#,
                "Login" => r#"{"login": "alice", "password": "correct horse"}"#,
                "Refresh" => r#"{"refresh_token": "x"}"#,
                "ChangePassword" => r#"{"current_password": "a", "new_password": "correct horse"}"#,
                _ => "",
            };
            let (status, _, json) = send(request(rule.verb, &path, body)).await;
            // Reaching the (dead) backend proves the route and its handler exist.
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{} {path}: {json}", rule.verb);
            assert_eq!(json["code"], 14, "{} {path}", rule.verb);
        }
    }

    #[tokio::test]
    async fn an_unknown_path_is_a_json_404() {
        let (status, _, body) = send(request("GET", "/api/v1/nope", "")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["code"], 5);
    }

    #[tokio::test]
    async fn a_wrong_method_is_a_json_405_with_allow() {
        let (status, headers, body) = send(request("DELETE", "/api/v1/tasks", "")).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body["code"], 12);
        let allow = headers.get(header::ALLOW).and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert!(allow.contains("GET") && allow.contains("POST"), "allow: {allow}");
    }

    #[tokio::test]
    async fn malformed_json_is_a_400_naming_the_body() {
        let (status, _, body) = send(request("POST", "/api/v1/tasks", "{\"title\": ")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["code"], 3);
        assert_eq!(violated_field(&body), "body");
    }

    #[tokio::test]
    async fn bad_fields_are_400s_naming_the_field() {
        let cases = [
            ("POST", "/api/v1/tasks", r#"{"title": 5}"#, "title"),
            ("POST", "/api/v1/tasks", r#"{"title": "t", "status": "blocked"}"#, "status"),
            ("POST", "/api/v1/tasks", r#"{"title": "t", "owner": "me"}"#, "owner"),
            ("POST", "/api/v1/tasks", r#"{"description": "no title"}"#, "title"),
            ("POST", "/api/v1/auth/register", r#"{"username": "a"}"#, "password"),
            ("POST", "/api/v1/auth/refresh", "", "refresh_token"),
            ("GET", "/api/v1/tasks?page_size=ten", "", "page_size"),
            ("GET", "/api/v1/tasks?page_size=-1", "", "page_size"),
            ("GET", "/api/v1/tasks?status=blocked", "", "status"),
            ("GET", "/api/v1/tasks/not-a-uuid", "", "id"),
            ("POST", "/api/v1/auth/login?cookies=maybe", r#"{"login": "a", "password": "p"}"#, "cookies"),
            ("POST", "/api/v1/auth/login?cookies=1", r#"{"login": "a", "password": "p"}"#, "cookies"),
            ("GET", "/api/v1/tasks?page_size=", "", "page_size"),
            ("GET", "/api/v1/tasks?page_size=1.5", "", "page_size"),
            ("GET", "/api/v1/tasks?page_size=2147483648", "", "page_size"),
            ("GET", "/api/v1/tasks?status=", "", "status"),
            ("POST", "/api/v1/auth/logout-all", "null", "body"),
            ("POST", "/api/v1/auth/logout", r#"{"refresh_token": 1}"#, "refresh_token"),
            ("PATCH", "/api/v1/tasks/6f1d0b5e-8c1a-4a53-9d7e-2b8e0d8c1a11", "", "body"),
        ];
        for (method, uri, body, field) in cases {
            let (status, _, json) = send(request(method, uri, body)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {uri} {body}: {json}");
            assert_eq!(json["code"], 3, "{method} {uri}");
            assert_eq!(violated_field(&json), field, "{method} {uri} {body}");
        }
    }

    #[tokio::test]
    async fn a_body_that_is_not_json_is_a_415() {
        let request = Request::builder()
            .method("POST")
            .uri("/api/v1/tasks")
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from("title=x"))
            .expect("a valid request");
        let (status, _, body) = send(request).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(violated_field(&body), "content-type");
    }

    #[tokio::test]
    async fn the_document_and_the_docs_page_are_served() {
        let (status, headers, body) = send(request("GET", "/openapi.json", "")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()), Some("application/json"));
        assert_eq!(body["openapi"], "3.1.0");

        let response = dead_router().oneshot(request("GET", "/docs", "")).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
        for file in ["swagger-ui.css", "swagger-ui-bundle.js", "swagger-initializer.js"] {
            let response = dead_router().oneshot(request("GET", &format!("/docs/{file}"), "")).await.expect("ok");
            assert_eq!(response.status(), StatusCode::OK, "{file}");
        }
        let (status, headers, _) = send(request("GET", "/docs/", "")).await;
        assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
        assert_eq!(headers.get(header::LOCATION).and_then(|v| v.to_str().ok()), Some("/docs"));
        let (status, _, body) = send(request("GET", "/docs/secrets.txt", "")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["code"], 5);
    }

    #[tokio::test]
    async fn errors_match_the_documented_error_schema() {
        let doc = taskgate_openapi::document();
        let (status, _, body) = send(request("POST", "/api/v1/tasks", r#"{"title": 1}"#)).await;
        check_response(doc, "POST", "/api/v1/tasks", status.as_u16(), Some(&body)).expect("documented 400");
        let (status, _, body) = send(request("GET", "/api/v1/users/me", "")).await;
        check_response(doc, "GET", "/api/v1/users/me", status.as_u16(), Some(&body)).expect("documented 503");
    }

    #[tokio::test]
    async fn logout_clears_the_cookies_even_when_the_backend_fails() {
        let (status, headers, _) = send(request("POST", "/api/v1/auth/logout", "")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let cleared = headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter(|v| v.as_bytes().windows(9).any(|w| w == b"Max-Age=0"))
            .count();
        assert_eq!(cleared, 3);
    }
}
