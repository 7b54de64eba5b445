//! The REST/JSON surface end to end: real auth and task services behind the
//! gateway, driven over HTTP with exact status codes and JSON shapes.

use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestStack, spawn_stack, username};

/// An HTTP client for one gateway, speaking JSON.
pub struct Api {
    /// `http://127.0.0.1:<port>` of the gateway.
    pub base: String,
    /// The client (no cookie store: tests handle cookies by hand).
    pub http: reqwest::Client,
}

/// A response, read completely.
pub struct Reply {
    /// The HTTP status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: header::HeaderMap,
    /// The body as JSON; `Value::Null` when empty or not JSON.
    pub body: Value,
}

impl Reply {
    /// The field named by the BadRequest detail, if any.
    pub fn violated_field(&self) -> &str {
        self.body["details"][0]["field_violations"][0]["field"].as_str().unwrap_or_default()
    }

    /// Every `set-cookie` header.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers.get_all(header::SET_COOKIE).iter().filter_map(|v| v.to_str().ok().map(str::to_owned)).collect()
    }

    /// The value a `set-cookie` header gives cookie `name`.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.set_cookies().iter().find_map(|c| {
            let (pair, _) = c.split_once(';').unwrap_or((c, ""));
            let (n, v) = pair.split_once('=')?;
            (n == name).then(|| v.to_owned())
        })
    }
}

/// A request in the making: method, path, optional JSON body and headers.
pub struct Call<'a> {
    /// The API it goes to.
    api: &'a Api,
    /// The request builder.
    builder: reqwest::RequestBuilder,
}

impl Call<'_> {
    /// Adds `authorization: Bearer <token>`.
    pub fn bearer(mut self, token: &str) -> Self {
        self.builder = self.builder.bearer_auth(token);
        self
    }

    /// Sends `body` as JSON.
    pub fn json(mut self, body: &Value) -> Self {
        self.builder = self.builder.json(body);
        self
    }

    /// Sends `text` as the body with `content_type`.
    pub fn raw(mut self, content_type: &str, text: &str) -> Self {
        self.builder = self.builder.header(header::CONTENT_TYPE, content_type).body(text.to_owned());
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.builder = self.builder.header(name, value);
        self
    }

    /// Sends and reads the reply.
    pub async fn send(self) -> Reply {
        let _ = self.api;
        let response = self.builder.send().await.expect("sending a request to the gateway");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("reading the body");
        Reply { status, headers, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null) }
    }
}

impl Api {
    /// A client for gateway A of `stack`.
    pub fn new(stack: &TestStack) -> Self {
        Self { base: stack.url_a(""), http: stack.http.clone() }
    }

    /// Starts a request.
    pub fn call(&self, method: Method, path: &str) -> Call<'_> {
        Call { api: self, builder: self.http.request(method, format!("{}{path}", self.base)) }
    }

    /// Registers a fresh username; returns (username, user JSON).
    pub async fn register(&self) -> (String, Value) {
        let username = username();
        let reply = self
            .call(Method::POST, "/api/v1/auth/register")
            .json(&json!({"username": username, "password": PASSWORD}))
            .send()
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "register: {}", reply.body);
        (username, reply.body)
    }

    /// Logs `login` in; returns the token pair JSON.
    pub async fn login(&self, login: &str) -> Value {
        let reply = self
            .call(Method::POST, "/api/v1/auth/login")
            .json(&json!({"login": login, "password": PASSWORD}))
            .send()
            .await;
        assert_eq!(reply.status, StatusCode::OK, "login: {}", reply.body);
        reply.body
    }

    /// `POST /api/v1/auth/login?cookies=true` for `login`; the reply, unchecked.
    pub async fn login_with_cookies(&self, login: &str) -> Reply {
        self.call(Method::POST, "/api/v1/auth/login?cookies=true")
            .json(&json!({"login": login, "password": PASSWORD}))
            .send()
            .await
    }

    /// A new user with a session: (user JSON, access token, refresh token).
    pub async fn user(&self) -> (Value, String, String) {
        let (username, user) = self.register().await;
        let tokens = self.login(&username).await;
        let access = tokens["access_token"].as_str().expect("an access token").to_owned();
        let refresh = tokens["refresh_token"].as_str().expect("a refresh token").to_owned();
        (user, access, refresh)
    }

    /// Creates a task for `token`; returns its JSON.
    pub async fn create_task(&self, token: &str, body: &Value) -> Value {
        let reply = self.call(Method::POST, "/api/v1/tasks").bearer(token).json(body).send().await;
        assert_eq!(reply.status, StatusCode::CREATED, "create task: {}", reply.body);
        reply.body
    }
}

/// Starts a stack and returns it with a client for its first gateway.
macro_rules! api {
    ($stack:ident, $api:ident) => {
        let $stack = spawn_stack().await;
        let $api = Api::new(&$stack);
    };
}

/// A UUID-shaped string.
fn is_uuid(value: &Value) -> bool {
    value.as_str().is_some_and(|s| uuid::Uuid::try_parse(s).is_ok())
}

/// An RFC 3339 time.
fn is_time(value: &Value) -> bool {
    value.as_str().is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok())
}

#[tokio::test]
async fn register_answers_201_with_the_user_and_null_for_missing_login_names() {
    api!(stack, api);
    let reply = api
        .call(Method::POST, "/api/v1/auth/register")
        .json(&json!({"email": "Someone@Example.com", "password": PASSWORD}))
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let user = reply.body.as_object().expect("a user object");
    let mut keys: Vec<&str> = user.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["created_at", "email", "id", "phone", "username"]);
    assert!(is_uuid(&reply.body["id"]));
    assert_eq!(reply.body["email"], "someone@example.com");
    assert_eq!(reply.body["username"], Value::Null);
    assert_eq!(reply.body["phone"], Value::Null);
    assert!(is_time(&reply.body["created_at"]));
}

#[tokio::test]
async fn registering_a_taken_username_is_a_409() {
    api!(stack, api);
    let (username, _) = api.register().await;
    let reply = api
        .call(Method::POST, "/api/v1/auth/register")
        .json(&json!({"username": username, "password": PASSWORD}))
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.body);
    assert_eq!(reply.body["code"], 6);
}

#[tokio::test]
async fn login_answers_a_bearer_token_pair_and_accepts_username_in_place_of_login() {
    api!(stack, api);
    let (username, _) = api.register().await;
    let reply = api
        .call(Method::POST, "/api/v1/auth/login")
        .json(&json!({"username": username, "password": PASSWORD}))
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["token_type"], "Bearer");
    assert!(reply.body["access_token"].as_str().is_some_and(|t| t.split('.').count() == 3));
    assert!(reply.body["refresh_token"].is_string());
    assert!(reply.body["expires_in"].as_i64().is_some_and(|s| s > 0));
    assert!(reply.body["refresh_expires_in"].as_i64().is_some_and(|s| s > 0));
    assert_eq!(reply.headers.get(header::CACHE_CONTROL).and_then(|v| v.to_str().ok()), Some("no-store"));
    assert!(reply.set_cookies().is_empty(), "no cookies unless asked for");
}

#[tokio::test]
async fn login_with_a_wrong_password_is_a_401() {
    api!(stack, api);
    let (username, _) = api.register().await;
    let reply = api
        .call(Method::POST, "/api/v1/auth/login")
        .json(&json!({"login": username, "password": "not the password"}))
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.body);
    assert_eq!(reply.body["code"], 16);
}

#[tokio::test]
async fn refresh_answers_a_new_pair_and_a_bad_refresh_token_is_a_401() {
    api!(stack, api);
    let (_, access, refresh) = api.user().await;
    let reply = api.call(Method::POST, "/api/v1/auth/refresh").json(&json!({"refresh_token": refresh})).send().await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["token_type"], "Bearer");
    assert_ne!(reply.body["refresh_token"], json!(refresh));
    // Reuse of the old token is the auth service's business (it allows a
    // short grace period for racing tabs); a token it never issued is not.
    let forged = api.call(Method::POST, "/api/v1/auth/refresh").json(&json!({"refresh_token": access})).send().await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED, "an access token is not a refresh token: {}", forged.body);
    let missing = api.call(Method::POST, "/api/v1/auth/refresh").json(&json!({})).send().await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST, "{}", missing.body);
    assert_eq!(missing.violated_field(), "refresh_token");
}

#[tokio::test]
async fn logout_with_a_refresh_token_answers_204_and_ends_the_session() {
    api!(stack, api);
    let (_, _, refresh) = api.user().await;
    let reply = api.call(Method::POST, "/api/v1/auth/logout").json(&json!({"refresh_token": refresh})).send().await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
    assert_eq!(reply.body, Value::Null);
    let refreshed =
        api.call(Method::POST, "/api/v1/auth/refresh").json(&json!({"refresh_token": refresh})).send().await;
    assert_eq!(refreshed.status, StatusCode::UNAUTHORIZED, "{}", refreshed.body);
}

#[tokio::test]
async fn logout_with_only_the_bearer_token_ends_its_session() {
    api!(stack, api);
    let (_, access, refresh) = api.user().await;
    let reply = api.call(Method::POST, "/api/v1/auth/logout").bearer(&access).send().await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
    let refreshed =
        api.call(Method::POST, "/api/v1/auth/refresh").json(&json!({"refresh_token": refresh})).send().await;
    assert_eq!(refreshed.status, StatusCode::UNAUTHORIZED, "{}", refreshed.body);
}

#[tokio::test]
async fn logout_all_answers_204_and_ends_every_session() {
    api!(stack, api);
    let (username, _) = api.register().await;
    let first = api.login(&username).await;
    let second = api.login(&username).await;
    let access = first["access_token"].as_str().expect("a token");
    let reply = api.call(Method::POST, "/api/v1/auth/logout-all").bearer(access).send().await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
    for tokens in [first, second] {
        let refreshed = api
            .call(Method::POST, "/api/v1/auth/refresh")
            .json(&json!({"refresh_token": tokens["refresh_token"]}))
            .send()
            .await;
        assert_eq!(refreshed.status, StatusCode::UNAUTHORIZED, "{}", refreshed.body);
    }
}

#[tokio::test]
async fn users_me_answers_the_caller_and_needs_a_token() {
    api!(stack, api);
    let (user, access, _) = api.user().await;
    let reply = api.call(Method::GET, "/api/v1/users/me").bearer(&access).send().await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body, user);
    let anonymous = api.call(Method::GET, "/api/v1/users/me").send().await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{}", anonymous.body);
    assert_eq!(anonymous.body["code"], 16);
}

#[tokio::test]
async fn sessions_are_listed_with_the_current_one_marked_and_can_be_revoked() {
    api!(stack, api);
    let (username, _) = api.register().await;
    let other = api.login(&username).await;
    let mine = api.login(&username).await;
    let access = mine["access_token"].as_str().expect("a token");
    let reply = api.call(Method::GET, "/api/v1/auth/sessions").bearer(access).send().await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let sessions = reply.body["sessions"].as_array().expect("a sessions array");
    assert_eq!(sessions.len(), 2);
    for session in sessions {
        assert!(is_uuid(&session["id"]) && is_time(&session["created_at"]) && is_time(&session["expires_at"]));
        assert!(session["last_refreshed_at"].is_null(), "never refreshed: {session}");
        assert!(session["user_agent"].is_string() || session["user_agent"].is_null());
        assert!(session["ip_address"].is_string() || session["ip_address"].is_null());
    }
    let current: Vec<&Value> = sessions.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1);
    let other_id = sessions.iter().find(|s| s["current"] == false).expect("the other session")["id"]
        .as_str()
        .expect("an id")
        .to_owned();

    let revoked = api.call(Method::DELETE, &format!("/api/v1/auth/sessions/{other_id}")).bearer(access).send().await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT, "{}", revoked.body);
    let refreshed = api
        .call(Method::POST, "/api/v1/auth/refresh")
        .json(&json!({"refresh_token": other["refresh_token"]}))
        .send()
        .await;
    assert_eq!(refreshed.status, StatusCode::UNAUTHORIZED, "{}", refreshed.body);
    let missing = api
        .call(Method::DELETE, &format!("/api/v1/auth/sessions/{}", uuid::Uuid::new_v4()))
        .bearer(access)
        .send()
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{}", missing.body);
}

#[tokio::test]
async fn jwks_lists_ed25519_signing_keys() {
    api!(stack, api);
    let reply = api.call(Method::GET, "/.well-known/jwks.json").send().await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let keys = reply.body["keys"].as_array().expect("a keys array");
    assert!(!keys.is_empty());
    for key in keys {
        assert_eq!(key["kty"], "OKP");
        assert_eq!(key["crv"], "Ed25519");
        assert_eq!(key["alg"], "EdDSA");
        assert_eq!(key["use"], "sig");
        assert!(key["kid"].is_string() && key["x"].is_string());
    }
}

#[tokio::test]
async fn disabling_a_user_is_for_admins_only() {
    api!(stack, api);
    let (_, access, _) = api.user().await;
    let (victim, _, _) = api.user().await;
    let path = format!("/api/v1/admin/users/{}/disable", victim["id"].as_str().expect("an id"));
    let reply = api.call(Method::POST, &path).bearer(&access).send().await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);
    assert_eq!(reply.body["code"], 7);
}

#[tokio::test]
async fn a_task_goes_through_create_get_put_patch_and_delete() {
    api!(stack, api);
    let (_, token, _) = api.user().await;

    let created = api
        .call(Method::POST, "/api/v1/tasks")
        .bearer(&token)
        .json(&json!({"title": "Write tests", "description": "all of them", "status": "in_progress"}))
        .send()
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let task = created.body.clone();
    let id = task["id"].as_str().expect("an id").to_owned();
    assert!(is_uuid(&task["id"]) && is_time(&task["created_at"]) && is_time(&task["updated_at"]));
    assert_eq!(task["title"], "Write tests");
    assert_eq!(task["description"], "all of them");
    assert_eq!(task["status"], "in_progress");
    let location = created.headers.get(header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert_eq!(location, format!("/api/v1/tasks/{id}"));
    let path = format!("/api/v1/tasks/{id}");

    let got = api.call(Method::GET, &path).bearer(&token).send().await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert_eq!(got.body, task);

    // PATCH changes exactly the fields sent.
    let patched = api.call(Method::PATCH, &path).bearer(&token).json(&json!({"status": "done"})).send().await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_eq!(patched.body["status"], "done");
    assert_eq!(patched.body["title"], "Write tests");
    assert_eq!(patched.body["description"], "all of them");

    // An empty PATCH changes nothing.
    let unchanged = api.call(Method::PATCH, &path).bearer(&token).json(&json!({})).send().await;
    assert_eq!(unchanged.status, StatusCode::OK, "{}", unchanged.body);
    assert_eq!(unchanged.body, patched.body);

    // PUT replaces: what is not sent takes its default.
    let replaced = api.call(Method::PUT, &path).bearer(&token).json(&json!({"title": "Rewritten"})).send().await;
    assert_eq!(replaced.status, StatusCode::OK, "{}", replaced.body);
    assert_eq!(replaced.body["title"], "Rewritten");
    assert_eq!(replaced.body["description"], "");
    assert_eq!(replaced.body["status"], "todo");
    assert_eq!(replaced.body["id"], task["id"]);
    assert_eq!(replaced.body["created_at"], task["created_at"]);

    let deleted = api.call(Method::DELETE, &path).bearer(&token).send().await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.body);
    assert_eq!(deleted.body, Value::Null);
    let gone = api.call(Method::GET, &path).bearer(&token).send().await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND, "{}", gone.body);
    assert_eq!(gone.body["code"], 5);
}

#[tokio::test]
async fn another_users_task_is_a_404_for_every_method() {
    api!(stack, api);
    let (_, owner, _) = api.user().await;
    let (_, intruder, _) = api.user().await;
    let task = api.create_task(&owner, &json!({"title": "mine"})).await;
    let path = format!("/api/v1/tasks/{}", task["id"].as_str().expect("an id"));
    for (method, body) in [
        (Method::GET, None),
        (Method::PUT, Some(json!({"title": "theirs"}))),
        (Method::PATCH, Some(json!({"title": "theirs"}))),
        (Method::DELETE, None),
    ] {
        let mut call = api.call(method.clone(), &path).bearer(&intruder);
        if let Some(body) = &body {
            call = call.json(body);
        }
        let reply = call.send().await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{method}: {}", reply.body);
    }
    let still = api.call(Method::GET, &path).bearer(&owner).send().await;
    assert_eq!(still.body["title"], "mine");
}

#[tokio::test]
async fn tasks_page_through_rest_with_tokens_and_a_status_filter() {
    api!(stack, api);
    let (_, token, _) = api.user().await;
    let mut created = Vec::new();
    for i in 0..5 {
        let status = if i % 2 == 0 { "todo" } else { "done" };
        created.push(api.create_task(&token, &json!({"title": format!("task {i}"), "status": status})).await);
    }

    let mut seen = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let reply = api
            .call(Method::GET, &format!("/api/v1/tasks?page_size=2&page_token={page_token}"))
            .bearer(&token)
            .send()
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        let tasks = reply.body["tasks"].as_array().expect("a tasks array");
        assert!(tasks.len() <= 2);
        seen.extend(tasks.iter().map(|t| t["id"].clone()));
        pages += 1;
        page_token = reply.body["next_page_token"].as_str().expect("a next_page_token").to_owned();
        if page_token.is_empty() {
            break;
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(seen.len(), 5, "every task once: {seen:?}");
    // Newest first.
    let newest_first: Vec<Value> = created.iter().rev().map(|t| t["id"].clone()).collect();
    assert_eq!(seen, newest_first);

    let done = api.call(Method::GET, "/api/v1/tasks?status=done").bearer(&token).send().await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    let statuses: Vec<&Value> = done.body["tasks"].as_array().expect("tasks").iter().map(|t| &t["status"]).collect();
    assert_eq!(statuses.len(), 2);
    assert!(statuses.iter().all(|s| **s == "done"));
}

#[tokio::test]
async fn bad_input_is_a_400_naming_the_field() {
    api!(stack, api);
    let (_, token, _) = api.user().await;
    let cases = [
        (Method::POST, "/api/v1/tasks", Some(r#"{"title": "#), "body"),
        (Method::POST, "/api/v1/tasks", Some(r#"{"title": 42}"#), "title"),
        (Method::POST, "/api/v1/tasks", Some(r#"{"title": "t", "status": "blocked"}"#), "status"),
        (Method::POST, "/api/v1/tasks", Some(r#"{"title": "t", "priority": 1}"#), "priority"),
        (Method::POST, "/api/v1/tasks", Some("[]"), "body"),
        (Method::GET, "/api/v1/tasks?page_size=lots", None, "page_size"),
        (Method::GET, "/api/v1/tasks?status=later", None, "status"),
        (Method::GET, "/api/v1/tasks/123", None, "id"),
        (Method::PATCH, "/api/v1/tasks/6f1d0b5e-8c1a-4a53-9d7e-2b8e0d8c1a11", Some(r#"{"title": null}"#), "title"),
    ];
    for (method, path, body, field) in cases {
        let mut call = api.call(method.clone(), path).bearer(&token);
        if let Some(body) = body {
            call = call.raw("application/json", body);
        }
        let reply = call.send().await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{method} {path} {body:?}: {}", reply.body);
        assert_eq!(reply.body["code"], 3, "{method} {path}");
        assert_eq!(reply.violated_field(), field, "{method} {path} {body:?}: {}", reply.body);
    }
    // A title the task service refuses comes back the same way.
    let blank = api.call(Method::POST, "/api/v1/tasks").bearer(&token).json(&json!({"title": "   "})).send().await;
    assert_eq!(blank.status, StatusCode::BAD_REQUEST, "{}", blank.body);
    assert_eq!(blank.violated_field(), "title");
    // Login takes `login` or its older name `username`; neither is the auth
    // service's 400 on `login` (the gateway cannot tell which was meant).
    let nameless =
        api.call(Method::POST, "/api/v1/auth/login").raw("application/json", r#"{"password": "p"}"#).send().await;
    assert_eq!(nameless.status, StatusCode::BAD_REQUEST, "{}", nameless.body);
    assert_eq!(nameless.body["code"], 3);
    assert_eq!(nameless.violated_field(), "login", "{}", nameless.body);
}

#[tokio::test]
async fn unknown_paths_are_json_404s_and_wrong_methods_json_405s() {
    api!(stack, api);
    let (_, token, _) = api.user().await;
    let missing = api.call(Method::GET, "/api/v1/nothing-here").bearer(&token).send().await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{}", missing.body);
    assert_eq!(missing.body["code"], 5);
    assert!(missing.body["message"].is_string());

    let wrong = api.call(Method::DELETE, "/api/v1/tasks").bearer(&token).send().await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED, "{}", wrong.body);
    assert_eq!(wrong.body["code"], 12);
    let allow = wrong.headers.get(header::ALLOW).and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(allow.contains("GET") && allow.contains("POST"), "allow: {allow}");
}

#[tokio::test]
async fn a_browser_session_lives_in_cookies_and_logout_clears_them() {
    api!(stack, api);
    let (username, _) = api.register().await;
    let login = api.login_with_cookies(&username).await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
    let cookies = login.set_cookies();
    assert_eq!(cookies.len(), 3, "{cookies:?}");
    let access = login.cookie("__Host-tg_access").expect("__Host-tg_access");
    let refresh = login.cookie("__Secure-tg_refresh").expect("__Secure-tg_refresh");
    let csrf = login.cookie("__Host-tg_csrf").expect("__Host-tg_csrf");
    assert_eq!(access, login.body["access_token"].as_str().expect("token"));
    let refresh_cookie = cookies.iter().find(|c| c.starts_with("__Secure-tg_refresh=")).expect("refresh cookie");
    assert!(refresh_cookie.contains("Path=/api/v1/auth") && refresh_cookie.contains("HttpOnly"));
    assert!(refresh_cookie.contains("SameSite=Strict"));
    assert!(cookies.iter().all(|c| c.contains("; Secure")), "COOKIE_SECURE defaults to on: {cookies:?}");
    let csrf_cookie = cookies.iter().find(|c| c.starts_with("__Host-tg_csrf=")).expect("csrf cookie");
    assert!(!csrf_cookie.contains("HttpOnly"), "JavaScript must be able to read __Host-tg_csrf");

    let jar = format!("__Host-tg_access={access}; __Host-tg_csrf={csrf}");
    let me = api.call(Method::GET, "/api/v1/users/me").header("cookie", &jar).send().await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    assert_eq!(me.body["username"], json!(username));

    // A cookie-authenticated write needs the CSRF header.
    let forged =
        api.call(Method::POST, "/api/v1/tasks").header("cookie", &jar).json(&json!({"title": "forged"})).send().await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN, "{}", forged.body);
    let real = api
        .call(Method::POST, "/api/v1/tasks")
        .header("cookie", &jar)
        .header("x-csrf-token", &csrf)
        .json(&json!({"title": "real"}))
        .send()
        .await;
    assert_eq!(real.status, StatusCode::CREATED, "{}", real.body);

    // Refresh reads the refresh cookie and sets new cookies.
    let refreshed = api
        .call(Method::POST, "/api/v1/auth/refresh?cookies=true")
        .header("cookie", &format!("__Secure-tg_refresh={refresh}; __Host-tg_csrf={csrf}"))
        .header("x-csrf-token", &csrf)
        .send()
        .await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.body);
    let new_refresh = refreshed.cookie("__Secure-tg_refresh").expect("a new __Secure-tg_refresh");
    assert_ne!(new_refresh, refresh);
    let new_csrf = refreshed.cookie("__Host-tg_csrf").expect("a new __Host-tg_csrf");

    let logout = api
        .call(Method::POST, "/api/v1/auth/logout")
        .header("cookie", &format!("__Secure-tg_refresh={new_refresh}; __Host-tg_csrf={new_csrf}"))
        .header("x-csrf-token", &new_csrf)
        .send()
        .await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT, "{}", logout.body);
    let cleared = logout.set_cookies();
    assert_eq!(cleared.len(), 3, "{cleared:?}");
    for name in ["__Host-tg_access=;", "__Secure-tg_refresh=;", "__Host-tg_csrf=;"] {
        let cookie = cleared.iter().find(|c| c.starts_with(name)).expect("a clearing cookie");
        assert!(cookie.contains("Max-Age=0"), "{cookie}");
    }
    let dead = api.call(Method::POST, "/api/v1/auth/refresh").json(&json!({"refresh_token": new_refresh})).send().await;
    assert_eq!(dead.status, StatusCode::UNAUTHORIZED, "{}", dead.body);
}

#[tokio::test]
async fn a_cookie_refresh_without_the_csrf_header_is_refused() {
    api!(stack, api);
    let (username, _) = api.register().await;
    let login = api.login_with_cookies(&username).await;
    let refresh = login.cookie("__Secure-tg_refresh").expect("__Secure-tg_refresh");
    let csrf = login.cookie("__Host-tg_csrf").expect("__Host-tg_csrf");
    let reply = api
        .call(Method::POST, "/api/v1/auth/refresh?cookies=true")
        .header("cookie", &format!("__Secure-tg_refresh={refresh}; __Host-tg_csrf={csrf}"))
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);
}

#[tokio::test]
async fn the_document_and_the_docs_page_are_public() {
    api!(stack, api);
    let doc = api.call(Method::GET, "/openapi.json").send().await;
    assert_eq!(doc.status, StatusCode::OK);
    assert_eq!(doc.body["openapi"], "3.1.0");
    let page = api.http.get(format!("{}/docs", api.base)).send().await.expect("GET /docs");
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.expect("html");
    assert!(html.contains("swagger-ui"));
    let bundle = api.http.get(format!("{}/docs/swagger-ui-bundle.js", api.base)).send().await.expect("bundle");
    assert_eq!(bundle.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_client_address_and_user_agent_reach_the_auth_service() {
    api!(stack, api);
    let (username, _) = api.register().await;
    let login = api
        .call(Method::POST, "/api/v1/auth/login")
        .header("user-agent", "taskgate-rest-tests/1.0")
        .json(&json!({"login": username, "password": PASSWORD}))
        .send()
        .await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
    let access = login.body["access_token"].as_str().expect("a token");
    let sessions = api.call(Method::GET, "/api/v1/auth/sessions").bearer(access).send().await;
    let session = &sessions.body["sessions"][0];
    // tonic's channel appends its own product token (`tonic/0.14`) to any
    // user-agent it forwards; the browser's part comes first.
    let user_agent = session["user_agent"].as_str().unwrap_or_default();
    assert!(user_agent.starts_with("taskgate-rest-tests/1.0"), "{session}");
    assert_eq!(session["ip_address"], "127.0.0.1", "{session}");
    assert_eq!(session["current"], true);
}

/// The auth service started with a bootstrap admin, behind the bare REST
/// router (no edge layers: the auth service checks every token itself); the
/// shared stack has no admin account.
async fn router_with_an_admin(admin: &str) -> (Api, tokio::sync::oneshot::Sender<()>) {
    taskgate_test_support::init_test_logging();
    let mut settings = auth_service::Settings::for_tests(
        taskgate_test_support::fresh_database().await,
        taskgate_test_support::redis_url(),
        taskgate_test_support::unique_prefix(),
    );
    settings.admin_username = Some(admin.to_owned());
    settings.admin_password = Some(PASSWORD.into());
    let auth = auth_service::Application::build(settings).await.expect("building the auth service");
    let auth_addr = auth.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(auth.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let channel = taskgate_common::balance::BalancedChannel::from(crate::helpers::lazy_channel(auth_addr));
    let backends = gateway::upstream::Backends::new()
        .with(taskgate_proto::service_names::AUTH, gateway::upstream::Upstream::new("auth", channel.clone()))
        .with(taskgate_proto::service_names::TASK, gateway::upstream::Upstream::new("task", channel));
    let router = gateway::rest::router(
        backends,
        gateway::cookies::CookiePolicy::new(true, None),
        gateway::watch::WatchSlots::new(10),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding the REST router");
    let addr = listener.local_addr().expect("a local address");
    tokio::spawn(async move { axum::serve(listener, router).await });
    (Api { base: format!("http://{addr}"), http: reqwest::Client::new() }, stop)
}

#[tokio::test]
async fn an_admin_disables_a_user_and_the_user_can_no_longer_log_in() {
    let admin_name = username();
    let (api, _stop) = router_with_an_admin(&admin_name).await;
    let admin = api.login(&admin_name).await;
    let admin_token = admin["access_token"].as_str().expect("an admin token");
    let (victim_name, victim) = api.register().await;
    let victim_tokens = api.login(&victim_name).await;

    let path = format!("/api/v1/admin/users/{}/disable", victim["id"].as_str().expect("an id"));
    let reply = api.call(Method::POST, &path).bearer(admin_token).send().await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body, victim, "the disabled user, in the user shape");

    let login = api
        .call(Method::POST, "/api/v1/auth/login")
        .json(&json!({"login": victim_name, "password": PASSWORD}))
        .send()
        .await;
    assert_eq!(login.status, StatusCode::UNAUTHORIZED, "{}", login.body);
    let refresh = api
        .call(Method::POST, "/api/v1/auth/refresh")
        .json(&json!({"refresh_token": victim_tokens["refresh_token"]}))
        .send()
        .await;
    assert_eq!(refresh.status, StatusCode::UNAUTHORIZED, "{}", refresh.body);

    let missing = api
        .call(Method::POST, &format!("/api/v1/admin/users/{}/disable", uuid::Uuid::new_v4()))
        .bearer(admin_token)
        .json(&json!({}))
        .send()
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{}", missing.body);
}

#[tokio::test]
async fn cookie_secure_false_drops_the_secure_attribute_for_plain_http_development() {
    let stack =
        crate::helpers::spawn_stack_with(crate::helpers::StackOptions { cookie_secure: false, ..Default::default() })
            .await;
    let api = Api::new(&stack);
    let (username, _) = api.register().await;
    let login = api.login_with_cookies(&username).await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
    let cookies = login.set_cookies();
    assert_eq!(cookies.len(), 3, "{cookies:?}");
    assert!(cookies.iter().all(|c| !c.contains("Secure") && c.contains("SameSite=Strict")), "{cookies:?}");
}

#[tokio::test]
async fn change_password_answers_a_new_pair_and_ends_every_other_session() {
    api!(stack, api);
    let (username, _) = api.register().await;
    let other = api.login(&username).await;
    let here = api.login(&username).await;
    let new_password = "a brand new passphrase 77";
    let reply = api
        .call(Method::POST, "/api/v1/auth/change-password")
        .bearer(here["access_token"].as_str().expect("token"))
        .json(&json!({"current_password": PASSWORD, "new_password": new_password}))
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.headers.get(header::CACHE_CONTROL).and_then(|v| v.to_str().ok()), Some("no-store"));
    let fresh = reply.body["access_token"].as_str().expect("a fresh access token").to_owned();
    let me = api.call(Method::GET, "/api/v1/users/me").bearer(&fresh).send().await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    for old in [&other, &here] {
        let me =
            api.call(Method::GET, "/api/v1/users/me").bearer(old["access_token"].as_str().expect("t")).send().await;
        assert_eq!(me.status, StatusCode::UNAUTHORIZED, "{}", me.body);
    }
    let weak = api
        .call(Method::POST, "/api/v1/auth/change-password")
        .bearer(&fresh)
        .json(&json!({"current_password": new_password, "new_password": "password123"}))
        .send()
        .await;
    assert_eq!(weak.status, StatusCode::BAD_REQUEST, "{}", weak.body);
    assert_eq!(weak.violated_field(), "new_password");
}

#[tokio::test]
async fn an_admin_enables_a_disabled_user_over_rest() {
    let admin_name = username();
    let (api, _stop) = router_with_an_admin(&admin_name).await;
    let admin = api.login(&admin_name).await;
    let admin_token = admin["access_token"].as_str().expect("an admin token");
    let (victim_name, victim) = api.register().await;
    let id = victim["id"].as_str().expect("an id");
    let disabled =
        api.call(Method::POST, &format!("/api/v1/admin/users/{id}/disable")).bearer(admin_token).send().await;
    assert_eq!(disabled.status, StatusCode::OK, "{}", disabled.body);
    let enabled = api.call(Method::POST, &format!("/api/v1/admin/users/{id}/enable")).bearer(admin_token).send().await;
    assert_eq!(enabled.status, StatusCode::OK, "{}", enabled.body);
    assert_eq!(enabled.body, victim, "the enabled user, in the user shape");
    api.login(&victim_name).await;
}
