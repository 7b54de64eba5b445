//! The served OpenAPI document against reality: every route is called on a
//! real stack, and each response's status and body must be what the document
//! says, including the error responses.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use taskgate_proto::HTTP_RULES;
use taskgate_test_support::openapi::{check, check_response};

use crate::{
    helpers::{PASSWORD, spawn_stack},
    rest::{Api, Reply},
};

/// Checks `reply` for `verb template` against `doc`, with a readable failure.
fn conforms(doc: &Value, verb: &Method, template: &str, reply: &Reply) {
    let body = (!reply.body.is_null()).then_some(&reply.body);
    if let Err(e) = check_response(doc, verb.as_str(), template, reply.status.as_u16(), body) {
        panic!("{e}");
    }
}

#[tokio::test]
async fn the_served_document_lists_exactly_the_annotated_routes() {
    let stack = spawn_stack().await;
    let api = Api::new(&stack);
    let doc = api.call(Method::GET, "/openapi.json").send().await.body;
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented: Vec<String> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object().expect("a path item").keys().map(move |verb| format!("{} {path}", verb.to_uppercase()))
        })
        .collect();
    let mut annotated: Vec<String> =
        HTTP_RULES.iter().map(|r| format!("{} {}", r.verb, r.path.replace("{task.id}", "{id}"))).collect();
    documented.sort();
    annotated.sort();
    assert_eq!(documented, annotated);
}

#[tokio::test]
async fn every_route_answers_what_the_document_promises() {
    let stack = spawn_stack().await;
    let api = Api::new(&stack);
    let doc = api.call(Method::GET, "/openapi.json").send().await.body;
    let mut checked = 0;
    let mut check = |verb: Method, template: &str, reply: &Reply| {
        conforms(&doc, &verb, template, reply);
        checked += 1;
    };

    // Accounts and sessions.
    let (username, _) = api.register().await;
    let reply = api
        .call(Method::POST, "/api/v1/auth/register")
        .json(&json!({"username": format!("x{username}"), "password": PASSWORD}))
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    check(Method::POST, "/api/v1/auth/register", &reply);
    let reply = api
        .call(Method::POST, "/api/v1/auth/register")
        .json(&json!({"username": username, "password": PASSWORD}))
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    check(Method::POST, "/api/v1/auth/register", &reply);

    let reply = api
        .call(Method::POST, "/api/v1/auth/login?cookies=true")
        .json(&json!({"login": username, "password": PASSWORD}))
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    check(Method::POST, "/api/v1/auth/login", &reply);
    let access = reply.body["access_token"].as_str().expect("a token").to_owned();
    let refresh = reply.body["refresh_token"].as_str().expect("a token").to_owned();
    let reply = api
        .call(Method::POST, "/api/v1/auth/login")
        .json(&json!({"login": username, "password": "wrong password!"}))
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    check(Method::POST, "/api/v1/auth/login", &reply);

    let reply = api.call(Method::POST, "/api/v1/auth/refresh").json(&json!({"refresh_token": refresh})).send().await;
    assert_eq!(reply.status, StatusCode::OK);
    check(Method::POST, "/api/v1/auth/refresh", &reply);
    let refresh = reply.body["refresh_token"].as_str().expect("a token").to_owned();
    let access = reply.body["access_token"].as_str().map(str::to_owned).unwrap_or(access);

    let reply = api.call(Method::GET, "/api/v1/users/me").bearer(&access).send().await;
    assert_eq!(reply.status, StatusCode::OK);
    check(Method::GET, "/api/v1/users/me", &reply);
    let reply = api.call(Method::GET, "/api/v1/users/me").send().await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    check(Method::GET, "/api/v1/users/me", &reply);

    let reply = api.call(Method::GET, "/api/v1/auth/sessions").bearer(&access).send().await;
    assert_eq!(reply.status, StatusCode::OK);
    check(Method::GET, "/api/v1/auth/sessions", &reply);
    let session_id = reply.body["sessions"][0]["id"].as_str().expect("a session").to_owned();

    let reply = api.call(Method::GET, "/.well-known/jwks.json").send().await;
    assert_eq!(reply.status, StatusCode::OK);
    check(Method::GET, "/.well-known/jwks.json", &reply);

    let reply = api
        .call(Method::POST, &format!("/api/v1/admin/users/{}/disable", uuid::Uuid::new_v4()))
        .bearer(&access)
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    check(Method::POST, "/api/v1/admin/users/{id}/disable", &reply);

    // Tasks.
    let reply = api.call(Method::POST, "/api/v1/tasks").bearer(&access).json(&json!({"title": "t"})).send().await;
    assert_eq!(reply.status, StatusCode::CREATED);
    check(Method::POST, "/api/v1/tasks", &reply);
    let task_path = format!("/api/v1/tasks/{}", reply.body["id"].as_str().expect("an id"));
    let reply = api.call(Method::POST, "/api/v1/tasks").bearer(&access).json(&json!({"title": 1})).send().await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    check(Method::POST, "/api/v1/tasks", &reply);

    let reply = api.call(Method::GET, &task_path).bearer(&access).send().await;
    assert_eq!(reply.status, StatusCode::OK);
    check(Method::GET, "/api/v1/tasks/{id}", &reply);
    let reply = api.call(Method::GET, &format!("/api/v1/tasks/{}", uuid::Uuid::new_v4())).bearer(&access).send().await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    check(Method::GET, "/api/v1/tasks/{id}", &reply);

    let reply = api.call(Method::GET, "/api/v1/tasks?page_size=1").bearer(&access).send().await;
    assert_eq!(reply.status, StatusCode::OK);
    check(Method::GET, "/api/v1/tasks", &reply);

    let reply = api.call(Method::PUT, &task_path).bearer(&access).json(&json!({"title": "u"})).send().await;
    assert_eq!(reply.status, StatusCode::OK);
    check(Method::PUT, "/api/v1/tasks/{id}", &reply);
    let reply = api.call(Method::PATCH, &task_path).bearer(&access).json(&json!({"status": "done"})).send().await;
    assert_eq!(reply.status, StatusCode::OK);
    check(Method::PATCH, "/api/v1/tasks/{id}", &reply);
    let reply = api.call(Method::DELETE, &task_path).bearer(&access).send().await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    check(Method::DELETE, "/api/v1/tasks/{id}", &reply);
    // The event stream itself never ends; its refusals are documented JSON.
    let reply = api.call(Method::GET, "/api/v1/tasks:watch?since=soon").bearer(&access).send().await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    check(Method::GET, "/api/v1/tasks:watch", &reply);

    // Ending sessions last.
    let reply = api.call(Method::DELETE, &format!("/api/v1/auth/sessions/{session_id}")).bearer(&access).send().await;
    check(Method::DELETE, "/api/v1/auth/sessions/{id}", &reply);
    let reply = api.call(Method::POST, "/api/v1/auth/logout").json(&json!({"refresh_token": refresh})).send().await;
    check(Method::POST, "/api/v1/auth/logout", &reply);
    let (_, other_access, _) = api.user().await;
    let reply = api.call(Method::POST, "/api/v1/auth/logout-all").bearer(&other_access).send().await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    check(Method::POST, "/api/v1/auth/logout-all", &reply);

    assert!(checked >= HTTP_RULES.len(), "every route checked at least once");
}

/// The request body schema of `verb path` in `doc`, with its `$ref` followed.
fn body_schema(doc: &Value, verb: &str, path: &str) -> Value {
    let schema = &doc["paths"][path][verb]["requestBody"]["content"]["application/json"]["schema"];
    match schema["$ref"].as_str() {
        Some(reference) => doc.pointer(reference.trim_start_matches('#')).cloned().unwrap_or(Value::Null),
        None => schema.clone(),
    }
}

#[test]
fn request_schemas_accept_what_the_contract_rules_accept() {
    use taskgate_common::validate::violations;
    use taskgate_proto::{
        auth::v1::RegisterRequest,
        task::v1::{CreateTaskRequest, Task},
    };

    // The document's constraints are the contract's buf.validate rules, which
    // the services check before anything else: a value the document accepts
    // is one the rules accept, and back. (The services' domain types then
    // trim and normalise; the document does not try to say that.)
    let doc = taskgate_openapi::document();
    let register = body_schema(doc, "post", "/api/v1/auth/register");
    let documented = |body: Value| check(doc, &register, &body).is_ok();
    let valid = |request: RegisterRequest| violations(&request).expect("the rules evaluate").is_empty();
    let long = "a".repeat(64);
    let too_long = "a".repeat(65);
    for s in ["alice", " bob ", "x.y_z-1", "ab", &long, &too_long, "al ice", "\u{3000}carol", "élan", ""] {
        let request = RegisterRequest { username: Some(s.into()), password: PASSWORD.into(), ..Default::default() };
        assert_eq!(documented(json!({"username": s, "password": PASSWORD})), valid(request), "username {s:?}");
    }
    for s in [
        "+14155550100",
        "+1 (415) 555-0100",
        "+1\u{a0}415.555.0100",
        "+0123456789",
        "+1234567",
        "+12345678",
        "+123456789012345",
        "+1234567890123456",
        "14155550100",
        "\t+14155550100",
        "+1415555010a",
    ] {
        let request = RegisterRequest { phone: Some(s.into()), password: PASSWORD.into(), ..Default::default() };
        assert_eq!(documented(json!({"phone": s, "password": PASSWORD})), valid(request), "phone {s:?}");
    }
    // A byte limit is documented as the same number of characters: an upper
    // bound, exact for ASCII.
    let (fits, over, wide) = ("a".repeat(254), "a".repeat(255), "é".repeat(200));
    for s in ["a@example.com", &fits, &over, &wide] {
        let request = RegisterRequest { email: Some(s.into()), password: PASSWORD.into(), ..Default::default() };
        let (documented, valid) = (documented(json!({"email": s, "password": PASSWORD})), valid(request));
        assert!(documented || !valid, "email {s:?} is valid but not documented so");
        assert!(!s.is_ascii() || documented == valid, "email {s:?}");
    }

    let create = body_schema(doc, "post", "/api/v1/tasks");
    let (full, over) = ("é".repeat(200), "é".repeat(201));
    for s in ["t", "  t  ", "", &full, &over] {
        let request =
            CreateTaskRequest { task: Some(Task { title: s.into(), ..Default::default() }), request_id: String::new() };
        let valid = violations(&request).expect("the rules evaluate").is_empty();
        assert_eq!(check(doc, &create, &json!({"title": s})).is_ok(), valid, "title {s:?}");
    }
}

#[tokio::test]
async fn a_rate_limited_rest_call_is_the_documented_429() {
    let stack = crate::helpers::spawn_stack_with(crate::helpers::StackOptions {
        rate_limit_per_minute: 5,
        ..Default::default()
    })
    .await;
    let api = Api::new(&stack);
    let doc = api.call(Method::GET, "/openapi.json").send().await.body;
    let user = stack.user().await;
    let mut limited = None;
    for _ in 0..20 {
        let reply = api.call(Method::GET, "/api/v1/tasks").bearer(user.access()).send().await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(reply);
            break;
        }
    }
    let reply = limited.expect("the limit is reached within 20 calls");
    conforms(&doc, &Method::GET, "/api/v1/tasks", &reply);
    assert_eq!(reply.body["code"], 8);
    let retry_after = reply.headers.get("retry-after").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(retry_after.parse::<u64>().is_ok(), "Retry-After is whole seconds: {retry_after:?}");
}
