//! `GET /openapi.json`: the OpenAPI 3.1 description of the REST surface.
//!
//! Paths come from `taskgate_proto::HTTP_RULES`, so the document lists
//! exactly the annotated bindings (a test checks this); each operation's
//! request, responses and parameters are described here, next to the
//! schemas of `rest::json`. Every operation documents its error
//! responses (the google.rpc.Status JSON of [`crate::rest::error`]) and a
//! `default` for anything unexpected. Each operation's `security` is its
//! RPC's `taskgate.api.v1.policy` option, and the lengths in the schemas are
//! the `buf.validate` rules of the contract (`taskgate_proto::*::rules`).
//!
//! Tests hold real responses to the document with the `jsonschema` crate
//! (`taskgate_test_support::openapi`).
//!
//! A copy is committed as `gateway/static/openapi.json` for tools that want
//! the document without a running gateway; a test fails when it is stale
//! (`TASKGATE_BLESS=1 cargo test -p gateway --lib openapi` rewrites it).
//! CI should also run `python3 -m openapi_spec_validator
//! gateway/static/openapi.json`; the tests do not, to keep `cargo test` free
//! of Python.

use std::sync::LazyLock;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, header};
use serde_json::{Map, Value, json};
use taskgate_proto::{HTTP_RULES, HttpRule, auth::v1::rules as auth_rules, task::v1::rules as task_rules};

use crate::{policy::Access, rest::transcode::axum_path};

/// What the document says about one operation, beyond its path and verb.
struct Operation {
    /// The `operationId`.
    id: &'static str,
    /// The tag it is listed under.
    tag: &'static str,
    /// A one-line summary.
    summary: &'static str,
    /// Names of its parameters in `components/parameters`.
    params: &'static [&'static str],
    /// The request body's schema name, and whether a body is required.
    body: Option<(&'static str, bool)>,
    /// The success status.
    success: u16,
    /// The success body's schema name; `None` for 204.
    response: Option<&'static str>,
    /// Documented error statuses (see [`error_response`]).
    errors: &'static [u16],
    /// Whether the success response may set or clear session cookies.
    cookies: bool,
}

/// The characters Rust's `str::trim` removes (Unicode White_Space), for
/// patterns: the backends trim before they validate. (`\s` differs between
/// regex engines, so it is spelled out.)
const WS: &str = r"\t\n\u000b\u000c\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";

/// A string with something other than white space in it.
fn not_blank() -> String {
    format!("[^{WS}]")
}

/// What the auth service accepts as a username (it trims first), or blank.
fn username_pattern() -> String {
    let (min, max) = (auth_rules::REGISTER_REQUEST_USERNAME_MIN_LEN, auth_rules::REGISTER_REQUEST_USERNAME_MAX_LEN);
    format!("^[{WS}]*([A-Za-z0-9._-]{{{min},{max}}})?[{WS}]*$")
}

/// A subset of what the auth service accepts as an email address (ASCII
/// only and at most 236 characters; it also takes internationalised
/// domains and longer addresses), or blank.
fn email_pattern() -> String {
    let label = "[A-Za-z0-9]([A-Za-z0-9-]{0,40}[A-Za-z0-9])?";
    format!("^[{WS}]*([!#-?A-Z^-~]{{1,64}}@({label}\\.){{1,3}}{label})?[{WS}]*$")
}

/// What the auth service accepts as a phone number (it drops ` .-()` and
/// no-break spaces, then wants `+` and 8-15 digits, the first not 0), or blank.
fn phone_pattern() -> String {
    let sep = r"[ .()\u00a0-]*";
    format!("^([{WS}]*|{sep}\\+{sep}[1-9]({sep}[0-9]){{7,14}}{sep})$")
}

/// A task title: 1-200 characters after trimming, no NUL.
fn title_pattern() -> String {
    // The first and last characters are matched on their own.
    let inner = task_rules::TASK_TITLE_MAX_LEN - 2;
    format!("^[{WS}]*[^{WS}\\u0000]([^\\u0000]{{0,{inner}}}[^{WS}\\u0000])?[{WS}]*$")
}

/// Free text without NUL.
const NO_NUL_PATTERN: &str = r"^[^\u0000]*$";

/// Errors every operation can answer: bad input, rate limit, backend down.
const COMMON: [u16; 3] = [400, 429, 503];

/// The description of the operation bound by `(service method, verb)`.
fn operation(method: &str, verb: &str) -> Option<Operation> {
    let op = match (method, verb) {
        ("Register", _) => Operation {
            id: "register",
            tag: "auth",
            summary: "Create a user with at least one of username, email or phone",
            params: &[],
            body: Some(("RegisterRequest", true)),
            success: 201,
            response: Some("User"),
            errors: &[401, 409, 413, 415],
            cookies: false,
        },
        ("Login", _) => Operation {
            id: "login",
            tag: "auth",
            summary: "Check a login name and password and start a session",
            params: &["Cookies"],
            body: Some(("LoginRequest", true)),
            success: 200,
            response: Some("TokenPair"),
            errors: &[401, 403, 413, 415],
            cookies: true,
        },
        ("Refresh", _) => Operation {
            id: "refresh",
            tag: "auth",
            summary: "Exchange a refresh token for a new token pair",
            params: &["Cookies"],
            body: Some(("RefreshRequest", true)),
            success: 200,
            response: Some("TokenPair"),
            errors: &[401, 403, 413, 415],
            cookies: true,
        },
        ("Logout", _) => Operation {
            id: "logout",
            tag: "auth",
            summary: "End the session named by a refresh token, the tg_refresh cookie or the Bearer token",
            params: &[],
            body: Some(("LogoutRequest", false)),
            success: 204,
            response: None,
            errors: &[401, 403, 413, 415],
            cookies: true,
        },
        ("LogoutAll", _) => Operation {
            id: "logoutAll",
            tag: "auth",
            summary: "End every session of the caller",
            params: &[],
            body: Some(("Empty", false)),
            success: 204,
            response: None,
            errors: &[401, 403, 413, 415],
            cookies: true,
        },
        ("GetMe", _) => Operation {
            id: "getMe",
            tag: "users",
            summary: "The caller's user",
            params: &[],
            body: None,
            success: 200,
            response: Some("User"),
            errors: &[401, 403, 404],
            cookies: false,
        },
        ("ListSessions", _) => Operation {
            id: "listSessions",
            tag: "auth",
            summary: "The caller's live sessions, newest first",
            params: &[],
            body: None,
            success: 200,
            response: Some("SessionList"),
            errors: &[401, 403],
            cookies: false,
        },
        ("RevokeSession", _) => Operation {
            id: "revokeSession",
            tag: "auth",
            summary: "End one of the caller's sessions",
            params: &["SessionId"],
            body: None,
            success: 204,
            response: None,
            errors: &[401, 403, 404],
            cookies: false,
        },
        ("GetJwks", _) => Operation {
            id: "getJwks",
            tag: "keys",
            summary: "The public keys that verify access and refresh tokens (JSON Web Key Set)",
            params: &[],
            body: None,
            success: 200,
            response: Some("JwkSet"),
            errors: &[],
            cookies: false,
        },
        ("DisableUser", _) => Operation {
            id: "disableUser",
            tag: "admin",
            summary: "Disable a user and end all of their sessions (admin only)",
            params: &["UserId"],
            body: Some(("Empty", false)),
            success: 200,
            response: Some("User"),
            errors: &[401, 403, 404, 413, 415],
            cookies: false,
        },
        ("ChangePassword", _) => Operation {
            id: "changePassword",
            tag: "auth",
            summary: "Change the caller's password: every session ends and the caller gets a new pair",
            params: &["Cookies"],
            body: Some(("ChangePasswordRequest", true)),
            success: 200,
            response: Some("TokenPair"),
            errors: &[401, 403, 413, 415],
            cookies: true,
        },
        ("EnableUser", _) => Operation {
            id: "enableUser",
            tag: "admin",
            summary: "Re-enable a disabled user (admin only)",
            params: &["UserId"],
            body: Some(("Empty", false)),
            success: 200,
            response: Some("User"),
            errors: &[401, 403, 404, 413, 415],
            cookies: false,
        },
        ("CreateTask", _) => Operation {
            id: "createTask",
            tag: "tasks",
            summary: "Create a task owned by the caller",
            params: &["IdempotencyKey"],
            body: Some(("TaskInput", true)),
            success: 201,
            response: Some("Task"),
            errors: &[401, 403, 413, 415],
            cookies: false,
        },
        ("GetTask", _) => Operation {
            id: "getTask",
            tag: "tasks",
            summary: "One of the caller's tasks",
            params: &["TaskId", "IfNoneMatch"],
            body: None,
            success: 200,
            response: Some("Task"),
            errors: &[401, 403, 404],
            cookies: false,
        },
        ("ListTasks", _) => Operation {
            id: "listTasks",
            tag: "tasks",
            summary: "The caller's tasks, newest first, one page at a time",
            params: &["PageSize", "PageToken", "StatusFilter"],
            body: None,
            success: 200,
            response: Some("TaskList"),
            errors: &[401, 403],
            cookies: false,
        },
        ("UpdateTask", "PUT") => Operation {
            id: "replaceTask",
            tag: "tasks",
            summary: "Replace a task: fields not given take their defaults",
            params: &["TaskId", "IfMatch"],
            body: Some(("TaskReplace", true)),
            success: 200,
            response: Some("Task"),
            errors: &[401, 403, 404, 412, 413, 415],
            cookies: false,
        },
        ("UpdateTask", "PATCH") => Operation {
            id: "updateTask",
            tag: "tasks",
            summary: "Change exactly the fields given",
            params: &["TaskId", "IfMatch"],
            body: Some(("TaskPatch", true)),
            success: 200,
            response: Some("Task"),
            errors: &[401, 403, 404, 412, 413, 415],
            cookies: false,
        },
        ("DeleteTask", _) => Operation {
            id: "deleteTask",
            tag: "tasks",
            summary: "Delete one of the caller's tasks",
            params: &["TaskId", "IfMatch"],
            body: None,
            success: 204,
            response: None,
            errors: &[401, 403, 404, 412],
            cookies: false,
        },
        ("WatchTasks", _) => Operation {
            id: "watchTasks",
            tag: "tasks",
            summary: "The caller's task events as Server-Sent Events, replayed from a version and then live",
            params: &["Since", "LastEventId"],
            body: None,
            success: 200,
            response: Some(EVENT_STREAM),
            errors: &[401, 403],
            cookies: false,
        },
        _ => return None,
    };
    Some(op)
}

/// The success "schema" of the Server-Sent Events route: its body is a
/// `text/event-stream` of `WatchEvent` JSON payloads, not one JSON value.
const EVENT_STREAM: &str = "text/event-stream";

/// A `$ref` to a schema.
fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// The reason phrase and meaning of a documented error status.
fn error_response(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => {
            ("BadRequest", "Invalid input (INVALID_ARGUMENT, FAILED_PRECONDITION); a BadRequest detail names the field")
        }
        401 => ("Unauthenticated", "Missing, invalid or expired credentials (UNAUTHENTICATED)"),
        403 => ("PermissionDenied", "Not allowed, a disabled account, or a missing CSRF token (PERMISSION_DENIED)"),
        404 => ("NotFound", "No such resource, or it belongs to someone else (NOT_FOUND)"),
        409 => ("AlreadyExists", "The username, email or phone is taken (ALREADY_EXISTS)"),
        412 => ("PreconditionFailed", "The task changed since the given etag was read (ABORTED)"),
        413 => ("PayloadTooLarge", "The body is larger than 256 KiB"),
        415 => ("UnsupportedMediaType", "A body that is not application/json"),
        429 => ("TooManyRequests", "Rate limited (RESOURCE_EXHAUSTED); a RetryInfo detail says when to retry"),
        503 => ("Unavailable", "A backend is unavailable (UNAVAILABLE)"),
        _ => ("Error", "Any other failure, as a google.rpc.Status"),
    }
}

/// The OpenAPI operation object for `rule`.
fn operation_object(rule: &HttpRule, op: &Operation) -> Value {
    let mut responses = Map::new();
    let success = match op.response {
        Some(EVENT_STREAM) => json!({
            "description": "A Server-Sent Events stream. Each event's `event` is `created`, `updated` or \
                `deleted`, its `id` the list version after it (send it back as `Last-Event-ID` or `since` \
                to resume), its `data` a WatchEvent; heartbeats are comments. The stream ends with an \
                `error` event carrying a Status: FAILED_PRECONDITION with the ErrorInfo reason \
                `LIST_AGAIN` (list again, then watch from the new version), UNAUTHENTICATED when the \
                session is revoked or the token expires, RESOURCE_EXHAUSTED when the reader fell behind.",
            "content": { "text/event-stream": { "schema": { "type": "string" } } },
        }),
        Some(schema) => {
            let mut response = json!({
                "description": op.summary,
                "content": { "application/json": { "schema": schema_ref(schema) } },
            });
            let mut headers = Map::new();
            if op.cookies {
                headers.insert("Set-Cookie".into(), json!({ "$ref": "#/components/headers/SetCookie" }));
            }
            if op.id == "createTask" {
                headers.insert(
                    "Location".into(),
                    json!({ "description": "The new task's URL", "schema": { "type": "string" } }),
                );
            }
            if schema == "Task" {
                headers.insert("ETag".into(), json!({ "$ref": "#/components/headers/ETag" }));
            }
            if !headers.is_empty() {
                response["headers"] = Value::Object(headers);
            }
            response
        }
        None if op.cookies => json!({
            "description": "Done; the session cookies are deleted",
            "headers": { "Set-Cookie": { "$ref": "#/components/headers/SetCookie" } },
        }),
        None => json!({ "description": "Done" }),
    };
    responses.insert(op.success.to_string(), success);
    if op.id == "getTask" {
        responses.insert(
            "304".into(),
            json!({
                "description": "If-None-Match names the current etag: the task has not changed",
                "headers": { "ETag": { "$ref": "#/components/headers/ETag" } },
            }),
        );
    }
    let mut errors: Vec<u16> = COMMON.iter().chain(op.errors).copied().collect();
    errors.sort_unstable();
    errors.dedup();
    for status in errors {
        let (name, _) = error_response(status);
        responses.insert(status.to_string(), json!({ "$ref": format!("#/components/responses/{name}") }));
    }
    responses.insert("default".into(), json!({ "$ref": "#/components/responses/Error" }));

    let mut object = json!({
        "operationId": op.id,
        "summary": op.summary,
        "tags": [op.tag],
        "description": format!("Transcoded to `{}/{}`.", rule.service, rule.method),
        "responses": responses,
    });
    if !op.params.is_empty() {
        let params: Vec<Value> =
            op.params.iter().map(|p| json!({ "$ref": format!("#/components/parameters/{p}") })).collect();
        object["parameters"] = Value::Array(params);
    }
    if let Some((schema, required)) = op.body {
        object["requestBody"] = json!({
            "required": required,
            "content": { "application/json": { "schema": schema_ref(schema) } },
        });
    }
    // Who may call it is the RPC's policy option in the contract; a required
    // token is the document's default `security`.
    match rpc_access(rule) {
        Access::Public => object["security"] = json!([]),
        Access::TokenOptional => object["security"] = json!([{}, { "bearerAuth": [] }, { "cookieAuth": [] }]),
        Access::TokenRequired | Access::Unspecified => {}
    }
    object
}

/// The `access` of the policy option of the RPC `rule` binds.
fn rpc_access(rule: &HttpRule) -> Access {
    taskgate_proto::DESCRIPTOR_POOL
        .get_service_by_name(&rule.service)
        .and_then(|s| s.methods().find(|m| m.name() == rule.method))
        .map_or(Access::TokenRequired, |m| taskgate_proto::policy(&m).access())
}

/// The reusable schemas.
fn schemas() -> Value {
    let uuid = json!({ "type": "string", "format": "uuid" });
    let time = json!({ "type": "string", "format": "date-time" });
    let nullable_string = json!({ "type": ["string", "null"] });
    // No minLength/maxLength on the title: the task service counts it after
    // trimming, which only a pattern can say.
    let title = json!({
        "type": "string",
        "description": format!("1-{} characters after trimming surrounding spaces; no NUL", task_rules::TASK_TITLE_MAX_LEN),
        "pattern": title_pattern(),
    });
    let description = json!({ "type": "string", "maxLength": task_rules::TASK_DESCRIPTION_MAX_LEN, "description": "No NUL", "pattern": NO_NUL_PATTERN });
    let status = schema_ref("TaskStatus");
    let etag = json!({
        "type": "string",
        "pattern": "^(W/)?\"?[1-9][0-9]{0,17}\"?$",
        "description": "The etag the task must still have (as returned in the task or its ETag header)",
    });
    json!({
        "Status": {
            "type": "object",
            "description": "google.rpc.Status: a gRPC code, a message and typed details",
            "required": ["code", "message", "details"],
            "properties": {
                "code": { "type": "integer", "format": "int32", "description": "The google.rpc.Code" },
                "message": { "type": "string" },
                "details": { "type": "array", "items": schema_ref("StatusDetail") },
            },
            "additionalProperties": false,
        },
        "StatusDetail": {
            "type": "object",
            "description": "A google.rpc error detail such as BadRequest (`field_violations`) or RetryInfo (`retry_delay`)",
            "required": ["@type"],
            "properties": {
                "@type": { "type": "string" },
                "field_violations": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["field", "description"],
                        "properties": { "field": { "type": "string" }, "description": { "type": "string" } },
                    },
                },
                "retry_delay": { "type": "string", "description": "A duration such as `1.5s`" },
            },
        },
        "User": {
            "type": "object",
            "required": ["id", "username", "email", "phone", "created_at"],
            "properties": {
                "id": uuid,
                "username": nullable_string,
                "email": nullable_string,
                "phone": nullable_string,
                "created_at": time,
            },
            "additionalProperties": false,
        },
        "TokenPair": {
            "type": "object",
            "required": ["access_token", "refresh_token", "token_type", "expires_in", "refresh_expires_in"],
            "properties": {
                "access_token": { "type": "string", "description": "Send as `authorization: Bearer ...`" },
                "refresh_token": { "type": "string", "description": "Single use; exchange at /api/v1/auth/refresh" },
                "token_type": { "type": "string", "enum": ["Bearer"] },
                "expires_in": { "type": "integer", "format": "int64", "description": "Seconds until the access token expires" },
                "refresh_expires_in": { "type": "integer", "format": "int64", "description": "Seconds until the refresh token expires" },
            },
            "additionalProperties": false,
        },
        "Session": {
            "type": "object",
            "required": ["id", "created_at", "last_refreshed_at", "expires_at", "user_agent", "ip_address", "current"],
            "properties": {
                "id": uuid,
                "created_at": time,
                "last_refreshed_at": { "type": ["string", "null"], "format": "date-time" },
                "expires_at": time,
                "user_agent": nullable_string,
                "ip_address": nullable_string,
                "current": { "type": "boolean", "description": "True for the session of the calling token" },
            },
            "additionalProperties": false,
        },
        "SessionList": {
            "type": "object",
            "required": ["sessions"],
            "properties": { "sessions": { "type": "array", "items": schema_ref("Session") } },
            "additionalProperties": false,
        },
        "Jwk": {
            "type": "object",
            "required": ["kty", "crv", "x", "kid", "alg", "use"],
            "properties": {
                "kty": { "type": "string" },
                "crv": { "type": "string" },
                "x": { "type": "string" },
                "kid": { "type": "string" },
                "alg": { "type": "string" },
                "use": { "type": "string" },
            },
            "additionalProperties": false,
        },
        "JwkSet": {
            "type": "object",
            "required": ["keys"],
            "properties": { "keys": { "type": "array", "items": schema_ref("Jwk") } },
            "additionalProperties": false,
        },
        "TaskStatus": { "type": "string", "enum": ["todo", "in_progress", "done"] },
        "Task": {
            "type": "object",
            "required": ["id", "title", "description", "status", "created_at", "updated_at", "etag"],
            "properties": {
                "id": uuid,
                "title": { "type": "string" },
                "description": { "type": "string" },
                "status": status,
                "created_at": time,
                "updated_at": time,
                "etag": {
                    "type": "string",
                    "description": "Changes on every write (AIP-154); send it as If-Match (or the etag field) to make a write conditional",
                },
            },
            "additionalProperties": false,
        },
        "WatchEvent": {
            "type": "object",
            "description": "The data of one Server-Sent Event of /api/v1/tasks:watch",
            "required": ["type", "task", "version"],
            "properties": {
                "type": { "type": "string", "enum": ["created", "updated", "deleted"] },
                "task": { "description": "The task after the change; only its id for deleted", "type": "object" },
                "version": { "type": "string", "description": "The list version after the event (an int64)" },
            },
            "additionalProperties": false,
        },
        "TaskList": {
            "type": "object",
            "required": ["tasks", "next_page_token", "version"],
            "properties": {
                "tasks": { "type": "array", "items": schema_ref("Task") },
                "next_page_token": { "type": "string", "description": "Pass as page_token for the next page; empty on the last" },
                "version": {
                    "type": "string",
                    "description": "The list version this answer reflects (an int64; \"0\" when unknown): watch from it with since",
                },
            },
            "additionalProperties": false,
        },
        "RegisterRequest": {
            "type": "object",
            "description": "At least one of username, email and phone must be given (not blank). The patterns \
                describe what the auth service accepts; blank means not given.",
            "required": ["password"],
            "properties": {
                "username": {
                    "type": "string",
                    "description": "3-64 ASCII letters, digits and `._-`",
                    "pattern": username_pattern(),
                },
                "email": {
                    "type": "string",
                    "description": "An email address, stored lowercased",
                    "pattern": email_pattern(),
                },
                "phone": {
                    "type": "string",
                    "description": "`+` and 8-15 digits (E.164); spaces, dots, dashes and parentheses are ignored",
                    "pattern": phone_pattern(),
                },
                "password": {
                    "type": "string",
                    "minLength": auth_rules::REGISTER_REQUEST_PASSWORD_MIN_LEN,
                    "maxLength": auth_rules::REGISTER_REQUEST_PASSWORD_MAX_LEN,
                    "description": format!(
                        "{}-{} characters, not one of the most common passwords",
                        auth_rules::REGISTER_REQUEST_PASSWORD_MIN_LEN,
                        auth_rules::REGISTER_REQUEST_PASSWORD_MAX_LEN
                    ),
                },
            },
            "anyOf": [
                { "required": ["username"], "properties": { "username": { "pattern": not_blank() } } },
                { "required": ["email"], "properties": { "email": { "pattern": not_blank() } } },
                { "required": ["phone"], "properties": { "phone": { "pattern": not_blank() } } },
            ],
            "additionalProperties": false,
        },
        "ChangePasswordRequest": {
            "type": "object",
            "required": ["current_password", "new_password"],
            "properties": {
                "current_password": { "type": "string", "description": "The caller's current password" },
                "new_password": {
                    "type": "string",
                    "minLength": auth_rules::CHANGE_PASSWORD_REQUEST_NEW_PASSWORD_MIN_LEN,
                    "maxLength": auth_rules::CHANGE_PASSWORD_REQUEST_NEW_PASSWORD_MAX_LEN,
                    "description": format!(
                        "{}-{} characters, not a common password and not easy to guess",
                        auth_rules::CHANGE_PASSWORD_REQUEST_NEW_PASSWORD_MIN_LEN,
                        auth_rules::CHANGE_PASSWORD_REQUEST_NEW_PASSWORD_MAX_LEN
                    ),
                },
            },
            "additionalProperties": false,
        },
        "LoginRequest": {
            "type": "object",
            "description": "`login` (or, when `login` is blank, `username`) must not be blank",
            "required": ["password"],
            "properties": {
                "login": { "type": "string", "description": "A username, email address or phone number" },
                "username": { "type": "string", "description": "Accepted in place of `login`" },
                "password": { "type": "string" },
            },
            "anyOf": [
                { "required": ["login"], "properties": { "login": { "pattern": not_blank() } } },
                { "required": ["username"], "properties": { "username": { "pattern": not_blank() } } },
            ],
            "additionalProperties": false,
        },
        "RefreshRequest": {
            "type": "object",
            "description": "With `cookies=true` the body may be left out: the tg_refresh cookie is used, and the \
                x-csrf-token header must equal the tg_csrf cookie",
            "required": ["refresh_token"],
            "properties": { "refresh_token": { "type": "string", "pattern": not_blank() } },
            "additionalProperties": false,
        },
        "LogoutRequest": {
            "type": "object",
            "properties": { "refresh_token": { "type": "string" } },
            "description": "Without a refresh token, the tg_refresh cookie's or else the Bearer token's session ends",
            "additionalProperties": false,
        },
        "Empty": { "type": "object", "additionalProperties": false },
        "TaskInput": {
            "type": "object",
            "required": ["title"],
            "properties": { "title": title, "description": description, "status": status },
            "additionalProperties": false,
        },
        "TaskPatch": {
            "type": "object",
            "description": "Only the fields present change; with etag, only if the task still has it",
            "properties": { "title": title, "description": description, "status": status, "etag": etag },
            "additionalProperties": false,
        },
        "TaskReplace": {
            "type": "object",
            "description": "The whole task; with etag, only if the task still has it",
            "required": ["title"],
            "properties": { "title": title, "description": description, "status": status, "etag": etag },
            "additionalProperties": false,
        },
    })
}

/// The reusable parameters.
fn parameters() -> Value {
    let id = |what: &str| {
        json!({
            "name": "id", "in": "path", "required": true,
            "description": format!("The {what} id"),
            "schema": { "type": "string", "format": "uuid" },
        })
    };
    json!({
        "TaskId": id("task"),
        "SessionId": id("session"),
        "UserId": id("user"),
        "Cookies": {
            "name": "cookies", "in": "query", "required": false,
            "description": "Also set the tg_access, tg_refresh and tg_csrf cookies (for browsers)",
            "schema": { "type": "boolean", "default": false },
        },
        "PageSize": {
            "name": "page_size", "in": "query", "required": false,
            "description": "Most tasks to return; 0 or absent means 50, more than 500 means 500",
            "schema": { "type": "integer", "format": "int32", "minimum": 0, "maximum": 2_147_483_647 },
        },
        "PageToken": {
            "name": "page_token", "in": "query", "required": false,
            "description": "The next_page_token of the previous page",
            "schema": { "type": "string" },
        },
        "IfMatch": {
            "name": "If-Match", "in": "header", "required": false,
            "description": "The task's etag: the write happens only if the task still has it (412 otherwise)",
            "schema": { "type": "string" },
        },
        "IfNoneMatch": {
            "name": "If-None-Match", "in": "header", "required": false,
            "description": "The etag the client has: 304 without a body if the task still has it",
            "schema": { "type": "string" },
        },
        "IdempotencyKey": {
            "name": "Idempotency-Key", "in": "header", "required": false,
            "description": format!("The create's request id (AIP-155), 1-{} visible ASCII characters: a retry with the \
                same key and body returns the first call's task; the same key with another body is a 400. \
                Remembered per user for 24 hours.", task_rules::CREATE_TASK_REQUEST_REQUEST_ID_MAX_LEN),
            "schema": {
                "type": "string",
                "minLength": 1,
                "maxLength": task_rules::CREATE_TASK_REQUEST_REQUEST_ID_MAX_LEN,
                "pattern": "^[!-~]+$",
            },
        },
        "Since": {
            "name": "since", "in": "query", "required": false,
            "description": "Replay the events after this list version (from a list's version or an event id) first",
            "schema": { "type": "integer", "format": "int64", "minimum": 0 },
        },
        "LastEventId": {
            "name": "Last-Event-ID", "in": "header", "required": false,
            "description": "Sent by EventSource when it reconnects; works like since and wins over it",
            "schema": { "type": "integer", "format": "int64", "minimum": 0 },
        },
        "StatusFilter": {
            "name": "status", "in": "query", "required": false,
            "description": "Only tasks with this status",
            "schema": schema_ref("TaskStatus"),
        },
    })
}

/// The reusable error responses.
fn responses() -> Value {
    let mut out = Map::new();
    for status in [400, 401, 403, 404, 409, 412, 413, 415, 429, 503, 0] {
        let (name, description) = error_response(status);
        let mut response = json!({
            "description": description,
            "content": { "application/json": { "schema": schema_ref("Status") } },
        });
        if status == 429 || status == 503 {
            response["headers"] = json!({
                "Retry-After": { "description": "Seconds to wait", "schema": { "type": "integer" } },
            });
        }
        out.insert(name.into(), response);
    }
    Value::Object(out)
}

/// The whole OpenAPI 3.1 document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for rule in HTTP_RULES.iter() {
        let Some(op) = operation(&rule.method, rule.verb) else { continue };
        let item = paths.entry(axum_path(&rule.path)).or_insert_with(|| json!({}));
        item[rule.verb.to_ascii_lowercase()] = operation_object(rule, &op);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "taskgate",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "taskgate's REST/JSON API: accounts, sessions and each user's tasks. \
                Every route is a transcoding of a gRPC method (`google.api.http`); errors are \
                google.rpc.Status JSON with the HTTP status of the gRPC code.",
            "license": { "name": "MIT OR Apache-2.0", "identifier": "MIT OR Apache-2.0" },
        },
        "servers": [{ "url": "/" }],
        "tags": [
            { "name": "auth", "description": "Registration, login, tokens and sessions" },
            { "name": "users", "description": "The caller's account" },
            { "name": "admin", "description": "Administration (admin role only)" },
            { "name": "tasks", "description": "The caller's tasks" },
            { "name": "keys", "description": "Token verification keys" },
        ],
        "security": [{ "bearerAuth": [] }, { "cookieAuth": [] }],
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "parameters": parameters(),
            "responses": responses(),
            "headers": {
                "ETag": {
                    "description": "The task's etag, quoted (RFC 9110)",
                    "schema": { "type": "string" },
                },
                "SetCookie": {
                    "description": "With cookies=true: tg_access, tg_refresh (HttpOnly) and tg_csrf; on logout, the same three with Max-Age=0",
                    "schema": { "type": "string" },
                },
            },
            "securitySchemes": {
                "bearerAuth": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" },
                "cookieAuth": {
                    "type": "apiKey", "in": "cookie", "name": "tg_access",
                    "description": "The cookie set by login?cookies=true; writes must also send an \
                        x-csrf-token header equal to the tg_csrf cookie",
                },
            },
        },
    })
}

/// The document, serialised once.
static DOCUMENT: LazyLock<Vec<u8>> = LazyLock::new(|| serde_json::to_vec_pretty(&document()).unwrap_or_default());

/// `GET /openapi.json`.
pub async fn serve() -> Response {
    let mut response = DOCUMENT.as_slice().into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Every `$ref` string in `value`.
    fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Object(fields) => {
                for (name, field) in fields {
                    match (name.as_str(), field) {
                        ("$ref", Value::String(r)) => out.push(r),
                        _ => refs(field, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| refs(i, out)),
            _ => {}
        }
    }

    #[test]
    fn the_documented_paths_and_methods_are_exactly_the_annotated_rules() {
        let doc = document();
        let documented: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .flat_map(|(path, item)| {
                item.as_object().expect("path item").keys().map(move |verb| (verb.to_ascii_uppercase(), path.clone()))
            })
            .collect();
        let annotated: BTreeSet<(String, String)> =
            HTTP_RULES.iter().map(|r| (r.verb.to_owned(), axum_path(&r.path))).collect();
        assert_eq!(documented, annotated);
    }

    #[test]
    fn every_rule_has_its_own_description() {
        for rule in HTTP_RULES.iter() {
            assert!(operation(&rule.method, rule.verb).is_some(), "no OpenAPI operation for {}", rule.method);
        }
        let ids: BTreeSet<&str> =
            HTTP_RULES.iter().filter_map(|r| operation(&r.method, r.verb)).map(|op| op.id).collect();
        assert_eq!(ids.len(), HTTP_RULES.len(), "operation ids must be unique");
    }

    #[test]
    fn every_reference_resolves() {
        let doc = document();
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(all.len() > 50);
        for reference in all {
            let pointer = reference.strip_prefix('#').expect("local ref");
            assert!(doc.pointer(pointer).is_some(), "dangling {reference}");
        }
    }

    #[test]
    fn it_is_openapi_3_1_with_the_security_schemes() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["components"]["securitySchemes"]["bearerAuth"]["scheme"], "bearer");
        assert_eq!(doc["components"]["securitySchemes"]["cookieAuth"]["in"], "cookie");
        assert_eq!(doc["paths"]["/api/v1/auth/register"]["post"]["security"], json!([]));
        let create = &doc["paths"]["/api/v1/tasks"]["post"]["responses"];
        assert!(create.get("201").is_some() && create.get("401").is_some() && create.get("429").is_some());
        assert!(doc["paths"]["/api/v1/tasks/{id}"]["delete"]["responses"].get("204").is_some());
        assert!(doc["paths"]["/api/v1/auth/register"]["post"]["responses"].get("409").is_some());
    }

    #[test]
    fn every_operation_documents_the_common_errors_and_a_default() {
        let doc = document();
        for item in doc["paths"].as_object().expect("paths").values() {
            for (verb, op) in item.as_object().expect("path item") {
                for status in ["400", "429", "503", "default"] {
                    assert!(op["responses"].get(status).is_some(), "{verb} {} lacks {status}", op["operationId"]);
                }
            }
        }
    }

    #[test]
    fn the_committed_copy_is_up_to_date() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/static/openapi.json");
        let mut current = serde_json::to_string_pretty(&document()).expect("serialisable");
        current.push('\n');
        if std::env::var_os("TASKGATE_BLESS").is_some() {
            std::fs::write(path, &current).expect("writing static/openapi.json");
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == current,
            "gateway/static/openapi.json is stale: run `TASKGATE_BLESS=1 cargo test -p gateway --lib openapi`"
        );
    }

    #[test]
    fn the_schemas_refuse_shape_mistakes() {
        use taskgate_test_support::openapi::{check, check_response};
        let doc = document();
        let user = schema_ref("User");
        let good = json!({"id": "6f1d0b5e-8c1a-4a53-9d7e-2b8e0d8c1a11", "username": "a", "email": null,
            "phone": null, "created_at": "2024-01-01T00:00:00Z"});
        check(&doc, &user, &good).expect("a valid user");
        let mut extra = good.clone();
        extra["owner"] = json!("x");
        assert!(check(&doc, &user, &extra).is_err());
        let mut missing = good.clone();
        missing.as_object_mut().expect("object").remove("phone");
        assert!(check(&doc, &user, &missing).is_err());
        let mut wrong = good.clone();
        wrong["created_at"] = json!("yesterday");
        assert!(check(&doc, &user, &wrong).is_err());
        let mut not_uuid = good;
        not_uuid["id"] = json!("42");
        assert!(check(&doc, &user, &not_uuid).is_err());
        let error = crate::rest::error::json_body(&taskgate_common::status::invalid_field("title", "empty"));
        check_response(&doc, "POST", "/api/v1/tasks", 400, Some(&error)).expect("the error shape is documented");
        check_response(&doc, "DELETE", "/api/v1/tasks/{id}", 204, None).expect("204 has no body");
    }
}
