//! The REST handlers, one per `google.api.http` binding, and [`BINDINGS`],
//! the registry that ties each handler to the binding it serves.
//!
//! Every handler reads its request with [`crate::rest::extract`], calls a
//! backend over its pooled channel with the caller's forwarded headers, and
//! renders the reply with [`crate::rest::json`]. Backend errors are sent
//! unchanged as google.rpc.Status JSON.

use axum::{
    Extension, Json,
    extract::State,
    response::{IntoResponse, Response},
    routing::{MethodFilter, MethodRouter, on},
};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use serde_json::{Value, json};
use taskgate_common::status::invalid_field;
use taskgate_proto::{
    auth::v1::{
        ChangePasswordRequest, DisableUserRequest, EnableUserRequest, GetJwksRequest, GetMeRequest,
        ListSessionsRequest, LoginRequest, LogoutAllRequest, LogoutRequest, RefreshRequest, RegisterRequest,
        RevokeSessionRequest, TokenPair, User, auth_service_client::AuthServiceClient,
    },
    service_names::{AUTH, TASK},
    task::v1::{
        CreateTaskRequest, DeleteTaskRequest, GetTaskRequest, ListTasksRequest, Task, TaskStatus, UpdateTaskRequest,
        task_service_client::TaskServiceClient,
    },
};
use tonic::Status;

use crate::{
    rest::{
        cookies::CookiePolicy,
        error::RestError,
        extract::{JsonBody, PathId, QueryParams, grpc_request},
        json,
    },
    upstream::Upstream,
    watch::WatchSlots,
};

/// The backends the handlers call: clones of the gateway's pooled clients
/// (a clone shares the channel, so it is cheap).
#[derive(Clone)]
pub struct Backends {
    /// The auth service, over its channel balanced over every replica.
    pub auth: AuthServiceClient<Upstream>,
    /// The auth service over a second channel, for the calls that hash a
    /// password (Register, Login, ChangePassword).
    pub auth_hashing: AuthServiceClient<Upstream>,
    /// The task service, over its channel balanced over every replica.
    pub task: TaskServiceClient<Upstream>,
    /// This replica's open-stream bound, shared with the gRPC proxy.
    pub watch: WatchSlots,
}

/// What a handler returns: a response, or a google.rpc.Status to send as JSON.
type Reply = Result<Response, RestError>;

/// A handler's route for one HTTP method.
type MakeRoute = fn(MethodFilter) -> MethodRouter<Backends>;

/// A handler and the `google.api.http` binding it implements.
pub struct Binding {
    /// The full gRPC service name of the RPC.
    pub service: &'static str,
    /// The RPC name.
    pub method: &'static str,
    /// The HTTP method, upper case.
    pub verb: &'static str,
    /// The path the handler expects, in axum's syntax; its variables must be
    /// the binding's with nested field names shortened (`{task.id}` is `{id}`).
    pub path: &'static str,
    /// Builds the handler's route for the binding's method.
    pub route: MakeRoute,
}

/// Every REST handler. The router serves exactly the bindings in
/// `taskgate_proto::HTTP_RULES` that have an entry here; the tests check that
/// the two lists agree both ways.
pub const BINDINGS: &[Binding] = &[
    Binding {
        service: AUTH,
        method: "Register",
        verb: "POST",
        path: "/api/v1/auth/register",
        route: |f| on(f, register),
    },
    Binding { service: AUTH, method: "Login", verb: "POST", path: "/api/v1/auth/login", route: |f| on(f, login) },
    Binding { service: AUTH, method: "Refresh", verb: "POST", path: "/api/v1/auth/refresh", route: |f| on(f, refresh) },
    Binding { service: AUTH, method: "Logout", verb: "POST", path: "/api/v1/auth/logout", route: |f| on(f, logout) },
    Binding {
        service: AUTH,
        method: "LogoutAll",
        verb: "POST",
        path: "/api/v1/auth/logout-all",
        route: |f| on(f, logout_all),
    },
    Binding { service: AUTH, method: "GetMe", verb: "GET", path: "/api/v1/users/me", route: |f| on(f, get_me) },
    Binding {
        service: AUTH,
        method: "ListSessions",
        verb: "GET",
        path: "/api/v1/auth/sessions",
        route: |f| on(f, list_sessions),
    },
    Binding {
        service: AUTH,
        method: "RevokeSession",
        verb: "DELETE",
        path: "/api/v1/auth/sessions/{id}",
        route: |f| on(f, revoke_session),
    },
    Binding {
        service: AUTH,
        method: "GetJwks",
        verb: "GET",
        path: "/.well-known/jwks.json",
        route: |f| on(f, get_jwks),
    },
    Binding {
        service: AUTH,
        method: "DisableUser",
        verb: "POST",
        path: "/api/v1/admin/users/{id}/disable",
        route: |f| on(f, disable_user),
    },
    Binding {
        service: AUTH,
        method: "ChangePassword",
        verb: "POST",
        path: "/api/v1/auth/change-password",
        route: |f| on(f, change_password),
    },
    Binding {
        service: AUTH,
        method: "EnableUser",
        verb: "POST",
        path: "/api/v1/admin/users/{id}/enable",
        route: |f| on(f, enable_user),
    },
    Binding { service: TASK, method: "CreateTask", verb: "POST", path: "/api/v1/tasks", route: |f| on(f, create_task) },
    Binding { service: TASK, method: "GetTask", verb: "GET", path: "/api/v1/tasks/{id}", route: |f| on(f, get_task) },
    Binding { service: TASK, method: "ListTasks", verb: "GET", path: "/api/v1/tasks", route: |f| on(f, list_tasks) },
    Binding {
        service: TASK,
        method: "UpdateTask",
        verb: "PUT",
        path: "/api/v1/tasks/{id}",
        route: |f| on(f, replace_task),
    },
    Binding {
        service: TASK,
        method: "UpdateTask",
        verb: "PATCH",
        path: "/api/v1/tasks/{id}",
        route: |f| on(f, patch_task),
    },
    Binding {
        service: TASK,
        method: "DeleteTask",
        verb: "DELETE",
        path: "/api/v1/tasks/{id}",
        route: |f| on(f, delete_task),
    },
    Binding {
        service: TASK,
        method: "WatchTasks",
        verb: "GET",
        path: "/api/v1/tasks:watch",
        route: |f| on(f, crate::rest::watch::watch_tasks),
    },
];

/// A binding's path template in axum's syntax: `{task.id}` becomes `{id}`
/// (the last segment of a nested field path names the variable).
pub fn axum_path(template: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else { break };
        let variable = &rest[open + 1..open + close];
        out.push('{');
        out.push_str(variable.rsplit('.').next().unwrap_or(variable));
        out.push('}');
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

/// The axum method filter for an upper-case HTTP verb.
pub fn method_filter(verb: &str) -> Option<MethodFilter> {
    match verb {
        "GET" => Some(MethodFilter::GET),
        "POST" => Some(MethodFilter::POST),
        "PUT" => Some(MethodFilter::PUT),
        "PATCH" => Some(MethodFilter::PATCH),
        "DELETE" => Some(MethodFilter::DELETE),
        _ => None,
    }
}

/// The handler for `rule`, if there is one.
pub fn binding_for(rule: &taskgate_proto::HttpRule) -> Option<&'static Binding> {
    BINDINGS.iter().find(|b| b.service == rule.service && b.method == rule.method && b.verb == rule.verb)
}

/// 404 for a path no binding serves, in the JSON error shape.
pub async fn not_found(method: Method, uri: Uri) -> RestError {
    Status::not_found(format!("no route for {method} {}", uri.path())).into()
}

/// 405 for a known path with another method, in the JSON error shape
/// (axum adds the `allow` header).
pub async fn method_not_allowed(method: Method, uri: Uri) -> RestError {
    RestError::with_http(
        StatusCode::METHOD_NOT_ALLOWED,
        Status::unimplemented(format!("method {method} is not allowed on {}", uri.path())),
    )
}

/// A JSON response.
fn reply(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

/// A field the backend must always fill, or INTERNAL if it did not.
fn required<T>(field: Option<T>, name: &str) -> Result<T, RestError> {
    field.ok_or_else(|| Status::internal(format!("backend response has no {name}")).into())
}

/// How session cookies are named, set and CSRF-checked (a request extension
/// [`crate::rest::router`] adds).
type CookieMode = Extension<CookiePolicy>;

/// A token pair response, with the session cookies when asked for. Tokens
/// are never cached (RFC 6749 section 5.1).
fn tokens_reply(tokens: &TokenPair, with_cookies: bool, mode: CookieMode) -> Response {
    let mut response = reply(StatusCode::OK, json::token_pair(tokens));
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if with_cookies {
        mode.set_session(headers, tokens);
    }
    response
}

/// A 204 that also deletes the session cookies.
fn cleared_reply(mode: CookieMode) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    mode.clear_session(response.headers_mut());
    response
}

/// A user response.
fn user_reply(status: StatusCode, user: Option<User>) -> Reply {
    Ok(reply(status, json::user(&required(user, "user")?)))
}

/// `POST /api/v1/auth/register` → 201 and the user.
async fn register(State(b): State<Backends>, headers: HeaderMap, body: JsonBody) -> Reply {
    let mut body = body.required()?;
    let request = RegisterRequest {
        username: body.take_string("username")?,
        email: body.take_string("email")?,
        phone: body.take_string("phone")?,
        password: body.require_string("password")?,
    };
    body.finish()?;
    let response = b.auth_hashing.clone().register(grpc_request(&headers, request)).await?.into_inner();
    user_reply(StatusCode::CREATED, response.user)
}

/// `POST /api/v1/auth/login[?cookies=true]` → 200 and a token pair.
async fn login(
    State(b): State<Backends>,
    mode: CookieMode,
    headers: HeaderMap,
    query: QueryParams,
    body: JsonBody,
) -> Reply {
    let with_cookies = query.flag("cookies")?;
    let mut body = body.required()?;
    let login = body.take_string("login")?;
    let username = body.take_string("username")?;
    if login.is_none() && username.is_none() {
        return Err(invalid_field("login", "is required (a username, email address or phone number)").into());
    }
    let password = body.require_string("password")?;
    body.finish()?;
    let request = LoginRequest { login: login.unwrap_or_default(), password, username: username.unwrap_or_default() };
    let response = b.auth_hashing.clone().login(grpc_request(&headers, request)).await?.into_inner();
    Ok(tokens_reply(&required(response.tokens, "tokens")?, with_cookies, mode))
}

/// `POST /api/v1/auth/refresh[?cookies=true]` → 200 and the next token pair.
/// With `cookies=true` the refresh token may come from the `tg_refresh` cookie.
async fn refresh(
    State(b): State<Backends>,
    mode: CookieMode,
    headers: HeaderMap,
    query: QueryParams,
    body: JsonBody,
) -> Reply {
    let with_cookies = query.flag("cookies")?;
    let mut body = body.or_empty();
    let from_body = body.take_string("refresh_token")?;
    body.finish()?;
    let refresh_token = match from_body {
        Some(token) => token,
        None if with_cookies => {
            let token = mode.refresh_token(&headers).map(str::to_owned);
            let token = token.ok_or_else(|| RestError::from(invalid_field("refresh_token", "is required")))?;
            // The cookie is sent by the browser on its own, so a refresh
            // through it must prove it comes from our page: the CSRF token
            // of the cookie's own session.
            if !mode.csrf_ok_for_token(&headers, &token) {
                return Err(Status::permission_denied("a cookie refresh needs a matching x-csrf-token").into());
            }
            token
        }
        None => return Err(invalid_field("refresh_token", "is required").into()),
    };
    let request = RefreshRequest { refresh_token };
    let response = b.auth.clone().refresh(grpc_request(&headers, request)).await?.into_inner();
    Ok(tokens_reply(&required(response.tokens, "tokens")?, with_cookies, mode))
}

/// `POST /api/v1/auth/logout` → 204. Ends the session named by the body's
/// refresh token, else by the `tg_refresh` cookie, else by the Bearer token;
/// the session cookies are deleted whatever the outcome, so a browser whose
/// session already ended is still logged out.
async fn logout(State(b): State<Backends>, mode: CookieMode, headers: HeaderMap, body: JsonBody) -> Reply {
    let mut body = body.or_empty();
    let from_body = body.take_string("refresh_token")?;
    body.finish()?;
    let refresh_token = match from_body {
        Some(token) => token,
        None => match mode.refresh_token(&headers) {
            // Like a cookie refresh, a logout through the cookie is a write the
            // browser would send for any page: it needs the session's CSRF token.
            Some(token) if !mode.csrf_ok_for_token(&headers, token) => {
                return Err(Status::permission_denied("a cookie logout needs a matching x-csrf-token").into());
            }
            Some(token) => token.to_owned(),
            None => String::new(),
        },
    };
    let request = LogoutRequest { refresh_token };
    match b.auth.clone().logout(grpc_request(&headers, request)).await {
        Ok(_) => Ok(cleared_reply(mode)),
        Err(status) => {
            let mut response = RestError::from(status).into_response();
            mode.clear_session(response.headers_mut());
            Ok(response)
        }
    }
}

/// `POST /api/v1/auth/logout-all` → 204, deleting the session cookies.
async fn logout_all(State(b): State<Backends>, mode: CookieMode, headers: HeaderMap, body: JsonBody) -> Reply {
    body.or_empty().finish()?;
    b.auth.clone().logout_all(grpc_request(&headers, LogoutAllRequest {})).await?;
    Ok(cleared_reply(mode))
}

/// `GET /api/v1/users/me` → 200 and the caller.
async fn get_me(State(b): State<Backends>, headers: HeaderMap) -> Reply {
    let response = b.auth.clone().get_me(grpc_request(&headers, GetMeRequest {})).await?.into_inner();
    user_reply(StatusCode::OK, response.user)
}

/// `GET /api/v1/auth/sessions` → 200 and `{"sessions": [...]}`.
async fn list_sessions(State(b): State<Backends>, headers: HeaderMap) -> Reply {
    let response = b.auth.clone().list_sessions(grpc_request(&headers, ListSessionsRequest {})).await?.into_inner();
    let sessions: Vec<Value> = response.sessions.iter().map(json::session).collect();
    Ok(reply(StatusCode::OK, json!({ "sessions": sessions })))
}

/// `DELETE /api/v1/auth/sessions/{id}` → 204.
async fn revoke_session(State(b): State<Backends>, headers: HeaderMap, PathId(id): PathId) -> Reply {
    b.auth.clone().revoke_session(grpc_request(&headers, RevokeSessionRequest { id })).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /.well-known/jwks.json` → 200 and the JSON Web Key Set.
async fn get_jwks(State(b): State<Backends>, headers: HeaderMap) -> Reply {
    let response = b.auth.clone().get_jwks(grpc_request(&headers, GetJwksRequest {})).await?.into_inner();
    let keys: Vec<Value> = response.keys.iter().map(json::jwk).collect();
    let mut response = reply(StatusCode::OK, json!({ "keys": keys }));
    // Verifiers may cache the set briefly; a new key is published well before
    // it signs anything.
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    Ok(response)
}

/// `POST /api/v1/admin/users/{id}/disable` → 200 and the disabled user.
async fn disable_user(State(b): State<Backends>, headers: HeaderMap, PathId(id): PathId, body: JsonBody) -> Reply {
    body.or_empty().finish()?;
    let response = b.auth.clone().disable_user(grpc_request(&headers, DisableUserRequest { id })).await?.into_inner();
    user_reply(StatusCode::OK, response.user)
}

/// `POST /api/v1/auth/change-password[?cookies=true]` → 200 and the token
/// pair of the caller's new session (every earlier session ended).
async fn change_password(
    State(b): State<Backends>,
    mode: CookieMode,
    headers: HeaderMap,
    query: QueryParams,
    body: JsonBody,
) -> Reply {
    let with_cookies = query.flag("cookies")?;
    let mut body = body.required()?;
    let current_password = body.require_string("current_password")?;
    let new_password = body.require_string("new_password")?;
    body.finish()?;
    let request = ChangePasswordRequest { current_password, new_password };
    let response = b.auth_hashing.clone().change_password(grpc_request(&headers, request)).await?.into_inner();
    Ok(tokens_reply(&required(response.tokens, "tokens")?, with_cookies, mode))
}

/// `POST /api/v1/admin/users/{id}/enable` → 200 and the enabled user.
async fn enable_user(State(b): State<Backends>, headers: HeaderMap, PathId(id): PathId, body: JsonBody) -> Reply {
    body.or_empty().finish()?;
    let response = b.auth.clone().enable_user(grpc_request(&headers, EnableUserRequest { id })).await?.into_inner();
    user_reply(StatusCode::OK, response.user)
}

/// A task response with its `ETag` header (the etag, quoted, as RFC 9110
/// writes entity tags).
fn task_reply_with_etag(status: StatusCode, task: Option<Task>) -> Reply {
    let task = required(task, "task")?;
    let mut response = reply(status, json::task(&task));
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", task.etag)) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    Ok(response)
}

/// A header's text, if present and readable.
fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// A conditional write's etag: `If-Match` (RFC 9110), or else the `etag`
/// body field. `If-Match: *` only asks that the task exist, which every
/// write does anyway.
fn if_match(headers: &HeaderMap, from_body: String) -> Result<String, RestError> {
    match header_text(headers, header::IF_MATCH) {
        None | Some("*") => Ok(from_body),
        Some(text) if text.contains(',') => Err(invalid_field("If-Match", "must be a single etag (or *)").into()),
        Some(text) => Ok(text.to_owned()),
    }
}

/// ABORTED from a conditional write is 412 Precondition Failed over REST
/// (RFC 9110 section 13.1.1), not the 409 of the gRPC table.
fn precondition(status: Status) -> RestError {
    if status.code() == tonic::Code::Aborted {
        RestError::with_http(StatusCode::PRECONDITION_FAILED, status)
    } else {
        status.into()
    }
}

/// `POST /api/v1/tasks` → 201 and the task, with its URL in `location`. An
/// `Idempotency-Key` header is the request id (AIP-155): a retry returns the
/// first call's task instead of creating another.
async fn create_task(State(b): State<Backends>, headers: HeaderMap, body: JsonBody) -> Reply {
    let (task, _) = json::task_body(body.required()?, String::new(), true)?;
    let request_id = header_text(&headers, header::HeaderName::from_static("idempotency-key")).unwrap_or_default();
    let request = CreateTaskRequest { task: Some(task), request_id: request_id.to_owned() };
    let response = b.task.clone().create_task(grpc_request(&headers, request)).await?;
    let task = required(response.into_inner().task, "task")?;
    let location = HeaderValue::from_str(&format!("/api/v1/tasks/{}", task.id));
    let mut response = task_reply_with_etag(StatusCode::CREATED, Some(task))?;
    if let Ok(location) = location {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `GET /api/v1/tasks/{id}` → 200 and the task with its `ETag`, or 304 with
/// no body when `If-None-Match` names the current etag.
async fn get_task(State(b): State<Backends>, headers: HeaderMap, PathId(id): PathId) -> Reply {
    let response = b.task.clone().get_task(grpc_request(&headers, GetTaskRequest { id })).await?.into_inner();
    let task = required(response.task, "task")?;
    if let Some(wanted) = header_text(&headers, header::IF_NONE_MATCH) {
        let current = task.etag.as_str();
        let matches = wanted == "*"
            || wanted
                .split(',')
                .map(str::trim)
                .any(|tag| tag.strip_prefix("W/").unwrap_or(tag).trim_matches('"') == current);
        if matches {
            let mut response = StatusCode::NOT_MODIFIED.into_response();
            if let Ok(etag) = HeaderValue::from_str(&format!("\"{current}\"")) {
                response.headers_mut().insert(header::ETAG, etag);
            }
            return Ok(response);
        }
    }
    task_reply_with_etag(StatusCode::OK, Some(task))
}

/// `GET /api/v1/tasks?page_size=&page_token=&status=` → 200 and a page, with
/// the list `version` to watch from.
async fn list_tasks(State(b): State<Backends>, headers: HeaderMap, query: QueryParams) -> Reply {
    // An empty value is refused like any other non-number: the document
    // says what each parameter is, and the gateway holds clients to it.
    let page_size = match query.get("page_size") {
        None => 0,
        Some(text) => match text.parse::<i32>() {
            Ok(n) if n >= 0 => n,
            _ => return Err(invalid_field("page_size", "must be a whole number, 0 or more").into()),
        },
    };
    let status = match query.get("status") {
        None => TaskStatus::Unspecified,
        Some(name) => json::parse_status("status", name)?,
    };
    let page_token = query.get("page_token").unwrap_or_default().to_owned();
    let request = ListTasksRequest { page_size, page_token, status: status as i32 };
    let response = b.task.clone().list_tasks(grpc_request(&headers, request)).await?.into_inner();
    let tasks: Vec<Value> = response.tasks.iter().map(json::task).collect();
    Ok(reply(
        StatusCode::OK,
        json!({
            "tasks": tasks,
            "next_page_token": response.next_page_token,
            "version": response.version.to_string(),
        }),
    ))
}

/// `PUT /api/v1/tasks/{id}` → 200: a full replace (an empty update mask, so
/// fields not given take their defaults). With `If-Match` or an `etag`
/// field, 412 if the task changed since.
async fn replace_task(State(b): State<Backends>, headers: HeaderMap, PathId(id): PathId, body: JsonBody) -> Reply {
    let (mut task, _) = json::task_body(body.required()?, id, true)?;
    task.etag = if_match(&headers, std::mem::take(&mut task.etag))?;
    let request = UpdateTaskRequest { task: Some(task), update_mask: None };
    let response = b.task.clone().update_task(grpc_request(&headers, request)).await.map_err(precondition)?;
    task_reply_with_etag(StatusCode::OK, response.into_inner().task)
}

/// `PATCH /api/v1/tasks/{id}` → 200: changes exactly the fields in the body.
/// An empty object changes nothing and returns the task as it is (an empty
/// mask would mean "replace everything" to the task service). With
/// `If-Match` or an `etag` field, 412 if the task changed since.
async fn patch_task(State(b): State<Backends>, headers: HeaderMap, PathId(id): PathId, body: JsonBody) -> Reply {
    let (mut task, mask) = json::task_body(body.required()?, id, false)?;
    task.etag = if_match(&headers, std::mem::take(&mut task.etag))?;
    if mask.paths.is_empty() {
        let wanted = task.etag.clone();
        let request = GetTaskRequest { id: task.id };
        let response = b.task.clone().get_task(grpc_request(&headers, request)).await?.into_inner();
        let current = required(response.task, "task")?;
        if !wanted.is_empty() && wanted.trim_start_matches("W/").trim_matches('"') != current.etag {
            return Err(precondition(Status::aborted("the task changed since its etag was read")));
        }
        return task_reply_with_etag(StatusCode::OK, Some(current));
    }
    let request = UpdateTaskRequest { task: Some(task), update_mask: Some(mask) };
    let response = b.task.clone().update_task(grpc_request(&headers, request)).await.map_err(precondition)?;
    task_reply_with_etag(StatusCode::OK, response.into_inner().task)
}

/// `DELETE /api/v1/tasks/{id}` → 204; with `If-Match`, 412 if the task
/// changed since.
async fn delete_task(State(b): State<Backends>, headers: HeaderMap, PathId(id): PathId) -> Reply {
    let etag = if_match(&headers, String::new())?;
    b.task.clone().delete_task(grpc_request(&headers, DeleteTaskRequest { id, etag })).await.map_err(precondition)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use taskgate_proto::HTTP_RULES;

    use super::*;

    #[test]
    fn nested_path_variables_use_their_last_segment() {
        assert_eq!(axum_path("/api/v1/tasks/{task.id}"), "/api/v1/tasks/{id}");
        assert_eq!(axum_path("/api/v1/admin/users/{id}/disable"), "/api/v1/admin/users/{id}/disable");
        assert_eq!(axum_path("/api/v1/tasks"), "/api/v1/tasks");
    }

    #[test]
    fn every_annotated_rule_has_a_handler_and_every_handler_a_rule() {
        let rules: BTreeSet<(&str, &str, &str, String)> =
            HTTP_RULES.iter().map(|r| (r.service.as_str(), r.method.as_str(), r.verb, axum_path(&r.path))).collect();
        let handlers: BTreeSet<(&str, &str, &str, String)> =
            BINDINGS.iter().map(|b| (b.service, b.method, b.verb, b.path.to_owned())).collect();
        let unhandled: Vec<_> = rules.difference(&handlers).collect();
        let unannotated: Vec<_> = handlers.difference(&rules).collect();
        assert!(unhandled.is_empty(), "annotated rules without a handler: {unhandled:?}");
        assert!(unannotated.is_empty(), "handlers without an annotation: {unannotated:?}");
        assert_eq!(BINDINGS.len(), HTTP_RULES.len(), "a rule is bound twice");
    }

    #[test]
    fn every_verb_in_the_contract_has_a_method_filter() {
        for rule in HTTP_RULES.iter() {
            assert!(method_filter(rule.verb).is_some(), "no method filter for {}", rule.verb);
        }
    }
}
