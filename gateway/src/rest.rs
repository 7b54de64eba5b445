//! REST/JSON routes, transcoded to the backends' gRPC APIs as declared by the
//! `google.api.http` annotations in `proto/`.
//!
//! The router is built from `taskgate_proto::HTTP_RULES`: a route exists
//! exactly when an annotation declares it and `routes` has its handler.
//! Every failure, including a path or method that does not exist and a body
//! that is not valid JSON, is answered in the one JSON error shape.
//!
//! # Layout
//! - [`error`]: the one JSON error shape (google.rpc.Status) and the
//!   gRPC-to-HTTP status table.
//! - `routes`: the handlers and the registry tying them to the annotations.
//! - `extract`: reading bodies, queries and path ids, with JSON rejections.
//! - `json`: the JSON forms of users, tokens, sessions, keys and tasks.
//! - [`cookies`]: the browser session cookies (`?cookies=true`) and CSRF tokens.
//! - [`openapi`]: the OpenAPI 3.1 document at `/openapi.json`.
//! - `docs`: Swagger UI at `/docs`, vendored and embedded.
//! - [`watch`]: WatchTasks as Server-Sent Events.

pub mod cookies;
mod docs;
pub mod error;
mod extract;
mod json;
pub mod openapi;
pub(crate) mod routes;
pub mod watch;

use axum::{Router, routing::get};
use taskgate_proto::{
    HTTP_RULES, auth::v1::auth_service_client::AuthServiceClient, task::v1::task_service_client::TaskServiceClient,
};

use crate::{
    rest::routes::{Backends, axum_path, binding_for, method_filter},
    upstream::Upstream,
    watch::WatchSlots,
};

/// The REST routes, forwarding to `auth` and `task` over their balanced channels.
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
/// `watch` bounds the WatchTasks streams this replica serves, together with
/// the gRPC proxy's.
pub fn router(
    auth: AuthServiceClient<Upstream>,
    task: TaskServiceClient<Upstream>,
    cookies: cookies::CookiePolicy,
    watch: WatchSlots,
) -> Router {
    router_with_hashing_client(auth.clone(), auth, task, cookies, watch)
}

/// [`router`], with Register, Login and ChangePassword (the calls that hash
/// a password) sent over `auth_hashing`, a connection of their own, so a
/// flood of them never queues cheap auth calls behind it on one HTTP/2
/// connection.
pub fn router_with_hashing_client(
    auth: AuthServiceClient<Upstream>,
    auth_hashing: AuthServiceClient<Upstream>,
    task: TaskServiceClient<Upstream>,
    cookies: cookies::CookiePolicy,
    watch: WatchSlots,
) -> Router {
    let mut router = Router::new();
    for rule in HTTP_RULES.iter() {
        let (Some(binding), Some(filter)) = (binding_for(rule), method_filter(rule.verb)) else {
            // The tests make this unreachable; a contract change without a
            // handler must not stop the gateway serving everything else.
            tracing::error!(service = rule.service, method = rule.method, verb = rule.verb, "no REST handler");
            continue;
        };
        let path = axum_path(&rule.path);
        if path != binding.path {
            // The handler's extractors expect its own path variables.
            tracing::error!(path, expected = binding.path, method = rule.method, "REST handler path differs");
            continue;
        }
        router = router.route(&path, (binding.route)(filter));
    }
    router
        .route("/openapi.json", get(openapi::serve))
        .route("/docs", get(docs::index))
        .route("/docs/", get(|| async { axum::response::Redirect::permanent("/docs") }))
        .route("/docs/{file}", get(docs::asset))
        // Must follow every `route`: it only applies to routes already added.
        .method_not_allowed_fallback(routes::method_not_allowed)
        .fallback(routes::not_found)
        .with_state(Backends { auth, auth_hashing, task, watch })
        .layer(axum::Extension(cookies))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http::{Request, StatusCode, header};
    use serde_json::Value;
    use taskgate_test_support::openapi::check_response;
    use tower::ServiceExt as _;

    use super::*;

    /// A router whose backends are at an address nothing listens on, so any
    /// request that reaches a backend fails with UNAVAILABLE.
    fn dead_router() -> Router {
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9")
            .connect_timeout(std::time::Duration::from_millis(200))
            .connect_lazy();
        let channel = taskgate_common::balance::BalancedChannel::from(channel);
        router(
            AuthServiceClient::new(Upstream::new("auth", channel.clone())),
            TaskServiceClient::new(Upstream::new("task", channel)),
            cookies::CookiePolicy::new(true, None),
            WatchSlots::new(10),
        )
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
            let path = axum_path(&rule.path).replace("{id}", id);
            let body = match rule.method.as_str() {
                "CreateTask" | "UpdateTask" => r#"{"title": "t"}"#,
                "Register" => r#"{"username": "alice", "password": "correct horse"}"#,
                "Login" => r#"{"login": "alice", "password": "correct horse"}"#,
                "Refresh" => r#"{"refresh_token": "x"}"#,
                "ChangePassword" => r#"{"current_password": "a", "new_password": "b"}"#,
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
            ("POST", "/api/v1/auth/login", r#"{"password": "p"}"#, "login"),
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
        let doc = openapi::document();
        let (status, _, body) = send(request("POST", "/api/v1/tasks", r#"{"title": 1}"#)).await;
        check_response(&doc, "POST", "/api/v1/tasks", status.as_u16(), Some(&body)).expect("documented 400");
        let (status, _, body) = send(request("GET", "/api/v1/users/me", "")).await;
        check_response(&doc, "GET", "/api/v1/users/me", status.as_u16(), Some(&body)).expect("documented 503");
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
