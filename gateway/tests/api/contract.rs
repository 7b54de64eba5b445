//! A new RPC needs no gateway code: a contract that exists only in these
//! tests (`tests/proto/taskgate/test/v1/echo.proto`), compiled here, is
//! served over REST by the generic transcoder and over native gRPC by the
//! generic proxy, guarded by the same policy
//! and authentication middleware as the gateway's own contract according to
//! its `taskgate.api.v1.policy` option, held to its `buf.validate` and
//! `field_behavior` rules, and listed in the generated OpenAPI document with
//! them, its answers matching what the document says.

use std::{net::SocketAddr, sync::Arc};

use axum::middleware::from_fn_with_state;
use gateway::{
    auth::{self, EdgeAuth},
    cookies::CookiePolicy,
    metrics::Metrics,
    policy::{self, Routes},
    proxy::ServiceProxy,
    rest::{self, transcode::DynamicCodec},
    upstream::{Backends, Upstream},
    watch::WatchSlots,
};
use http::StatusCode;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, Value};
use serde_json::{Value as Json, json};
use taskgate_common::balance::BalancedChannel;
use taskgate_tokens::{GrpcKeySource, Verifier, VerifierConfig};

use taskgate_test_support::openapi::check_response;

use crate::helpers::{lazy_channel, spawn_stack};

/// The test contract, compiled from `tests/proto` and the repository's `proto/`.
fn test_contract() -> DescriptorPool {
    let here = env!("CARGO_MANIFEST_DIR");
    let mut compiler =
        protox::Compiler::new([format!("{here}/tests/proto"), format!("{here}/../proto")]).expect("include paths");
    compiler.include_imports(true).include_source_info(true);
    compiler.open_file("taskgate/test/v1/echo.proto").expect("the test contract compiles");
    compiler.descriptor_pool()
}

/// The EchoService backend: a gRPC server that knows the RPCs only by their
/// descriptors, like the gateway.
async fn spawn_echo(pool: &DescriptorPool) -> SocketAddr {
    let request = pool.get_message_by_name("taskgate.test.v1.EchoRequest").expect("EchoRequest");
    let response = pool.get_message_by_name("taskgate.test.v1.EchoResponse").expect("EchoResponse");
    let app = axum::Router::new().route(
        "/taskgate.test.v1.EchoService/{method}",
        axum::routing::post(move |call: axum::extract::Request| {
            let (request, response) = (request.clone(), response.clone());
            async move {
                let mut grpc = tonic::server::Grpc::new(DynamicCodec(request));
                grpc.unary(Echo(response), call).await.map(axum::body::Body::new)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding the echo backend");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Says the request back.
#[derive(Clone)]
struct Echo(MessageDescriptor);

impl tonic::server::UnaryService<DynamicMessage> for Echo {
    type Response = DynamicMessage;
    type Future = std::future::Ready<Result<tonic::Response<DynamicMessage>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<DynamicMessage>) -> Self::Future {
        let with_token = request.metadata().get("authorization").is_some();
        let said = request.into_inner();
        let mut reply = DynamicMessage::new(self.0.clone());
        for name in ["room", "text", "volume"] {
            if let Some(value) = said.get_field_by_name(name) {
                reply.set_field_by_name(name, value.into_owned());
            }
        }
        let length = said.get_field_by_name("text").and_then(|t| t.as_str().map(|s| s.chars().count())).unwrap_or(0);
        reply.set_field_by_name("length", Value::I64(i64::try_from(length).unwrap_or(i64::MAX)));
        reply.set_field_by_name("with_token", Value::Bool(with_token));
        std::future::ready(Ok(tonic::Response::new(reply)))
    }
}

/// The test contract's REST routes and its gRPC service behind the gateway's
/// own policy and authentication middleware, verifying tokens against
/// `auth_addr`.
async fn spawn_gateway(pool: &DescriptorPool, echo: SocketAddr, auth_addr: SocketAddr) -> String {
    let rules = taskgate_proto::http_rules(pool);
    let routes: &'static Routes = Box::leak(Box::new(Routes::new(pool, &rules)));
    let upstream = Upstream::new("echo", BalancedChannel::from(lazy_channel(echo)));
    let backends = Backends::new().with("taskgate.test.v1.EchoService", upstream);
    let cookies = CookiePolicy::new(true, None);
    let keys = Arc::new(GrpcKeySource::new(BalancedChannel::from(lazy_channel(auth_addr))));
    let verifier = Verifier::new(keys, VerifierConfig::new("taskgate", "taskgate"));
    let edge = Arc::new(EdgeAuth::new(verifier, Vec::new(), cookies.clone()));
    let service = pool.get_service_by_name("taskgate.test.v1.EchoService").expect("EchoService");
    let grpc = ServiceProxy::new(&service, &backends, Metrics::new(), WatchSlots::new(4)).expect("a backend");
    let app = rest::router_for(rules, backends, cookies, WatchSlots::new(4))
        .route_service("/taskgate.test.v1.EchoService/{*rest}", grpc)
        .layer(from_fn_with_state(edge, auth::authenticate))
        .layer(from_fn_with_state(routes, policy::classify));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding the gateway");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// Sends one request; returns the status and the JSON body (`Null` if none).
async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Json) {
    let response = request.send().await.expect("the gateway answers");
    let status = StatusCode::from_u16(response.status().as_u16()).expect("a status");
    (status, response.json().await.unwrap_or(Json::Null))
}

/// The field the first BadRequest violation names.
fn violated(body: &Json) -> &str {
    body["details"][0]["field_violations"][0]["field"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_new_rpc_is_served_documented_and_guarded_with_no_gateway_code() {
    let stack = spawn_stack().await;
    let user = stack.user().await;
    let pool = test_contract();
    let echo = spawn_echo(&pool).await;
    let base = spawn_gateway(&pool, echo, stack.auth_addr).await;
    let http = reqwest::Client::new();

    // Listed in the document generated from the same descriptors: its
    // operations, their security from the policy option, the constraints
    // from the validation rules and REQUIRED from the field behaviour.
    let doc = taskgate_openapi::generate(&pool);
    let echo = &doc["paths"]["/api/v1/echo/{room}"]["post"];
    assert_eq!(echo["operationId"], "echo", "{echo}");
    assert!(echo["summary"].as_str().is_some_and(|s| s.starts_with("Says `text` back")), "{echo}");
    assert!(echo.get("security").is_none(), "token required is the document's default: {echo}");
    assert_eq!(doc["paths"]["/api/v1/echo:ping"]["get"]["security"], json!([]), "public");
    let schema = &echo["requestBody"]["content"]["application/json"]["schema"];
    let input = match schema["$ref"].as_str().and_then(|r| r.strip_prefix('#')) {
        Some(pointer) => doc.pointer(pointer).unwrap_or_else(|| panic!("{schema} resolves")),
        None => schema,
    };
    assert_eq!(input["properties"]["text"]["maxLength"], 10, "{input}");
    assert_eq!(input["properties"]["text"]["minLength"], 1, "{input}");
    assert_eq!(input["required"], json!(["text"]), "{input}");
    assert!(input["properties"].get("room").is_none(), "the path carries room: {input}");

    // Public by its policy: no token needed; query parameters fill fields.
    let (status, body) = send(http.get(format!("{base}/api/v1/echo:ping?text=hi&volume=loud"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"room": "", "text": "hi", "volume": "loud", "with_token": false, "length": "2"}));
    check_response(&doc, "GET", "/api/v1/echo:ping", 200, Some(&body)).expect("as documented");

    // Token required by its policy: refused without one, before the backend.
    let say = |text: &str| json!({"text": text, "volume": "soft"});
    let (status, body) = send(http.post(format!("{base}/api/v1/echo/lobby")).json(&say("hello"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["code"], 16);
    let (status, _) =
        send(http.post(format!("{base}/api/v1/echo/lobby")).bearer_auth("not-a-token").json(&say("hello"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Allowed with one: the path variable, the body and the declared 201.
    let authed = |body: Json| http.post(format!("{base}/api/v1/echo/lobby")).bearer_auth(user.access()).json(&body);
    let (status, body) = send(authed(say("hello"))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body, json!({"room": "lobby", "text": "hello", "volume": "soft", "with_token": true, "length": "5"}));
    check_response(&doc, "POST", "/api/v1/echo/{room}", 201, Some(&body)).expect("as documented");

    // Its validation rules and required fields, from the test proto.
    for (request, field) in [
        (say("much too long"), "text"),
        (json!({"volume": "soft"}), "text"),
        (json!({"text": "hi", "volume": "deafening"}), "volume"),
        (json!({"text": "hi", "pitch": 3}), "pitch"),
    ] {
        let (status, body) = send(authed(request.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{request}: {body}");
        assert_eq!(violated(&body), field, "{request}: {body}");
        check_response(&doc, "POST", "/api/v1/echo/{room}", 400, Some(&body)).expect("as documented");
    }
}

#[tokio::test]
async fn a_new_rpc_is_forwarded_over_grpc_with_no_gateway_code() {
    let stack = spawn_stack().await;
    let user = stack.user().await;
    let pool = test_contract();
    let echo = spawn_echo(&pool).await;
    let base = spawn_gateway(&pool, echo, stack.auth_addr).await;
    let channel = tonic::transport::Endpoint::from_shared(base).expect("a URL").connect().await.expect("h2c");
    let (request, response) = (
        pool.get_message_by_name("taskgate.test.v1.EchoRequest").expect("EchoRequest"),
        pool.get_message_by_name("taskgate.test.v1.EchoResponse").expect("EchoResponse"),
    );
    let call = |method: &'static str, token: Option<String>| {
        let mut said = DynamicMessage::new(request.clone());
        said.set_field_by_name("text", Value::String("hello".into()));
        let mut call = tonic::Request::new(said);
        if let Some(token) = token {
            call.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
        }
        let (mut grpc, codec) = (tonic::client::Grpc::new(channel.clone()), DynamicCodec(response.clone()));
        async move {
            grpc.ready().await.expect("ready");
            let path = http::uri::PathAndQuery::from_static(method);
            grpc.unary(call, path, codec).await.map(tonic::Response::into_inner)
        }
    };
    let field = |reply: &DynamicMessage, name: &str| reply.get_field_by_name(name).map(|v| v.into_owned());

    // Public by its policy; the bytes reach the backend and come back unchanged.
    let reply = call("/taskgate.test.v1.EchoService/Ping", None).await.expect("Ping is public");
    assert_eq!(field(&reply, "text"), Some(Value::String("hello".into())));
    assert_eq!(field(&reply, "length"), Some(Value::I64(5)));
    assert_eq!(field(&reply, "with_token"), Some(Value::Bool(false)));
    // Token required by its policy.
    let refused = call("/taskgate.test.v1.EchoService/Echo", None).await.expect_err("no token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let refused = call("/taskgate.test.v1.EchoService/Echo", Some("not-a-token".into())).await.expect_err("bad token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let reply = call("/taskgate.test.v1.EchoService/Echo", Some(user.access().to_owned())).await.expect("with a token");
    assert_eq!(field(&reply, "with_token"), Some(Value::Bool(true)));
    // A method the descriptors do not declare is not forwarded.
    let unknown =
        call("/taskgate.test.v1.EchoService/Shout", Some(user.access().to_owned())).await.expect_err("unknown");
    assert_eq!(unknown.code(), tonic::Code::Unimplemented);
}
