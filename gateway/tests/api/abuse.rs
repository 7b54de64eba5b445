//! The public port against hostile traffic: each attack from the issue
//! "the public port holds against hostile traffic", performed against the
//! real stack, with the bound it must meet.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use fred::{prelude::*, types::CustomCommand};
use futures::future::join_all;
use rand::Rng as _;
use reqwest::StatusCode;
use taskgate_proto::{
    auth::v1::{
        GetMeRequest, ListSessionsRequest, LoginRequest, LogoutRequest, RefreshRequest,
        auth_service_client::AuthServiceClient,
    },
    task::v1::{CreateTaskRequest, ListTasksRequest, Task, task_service_client::TaskServiceClient},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use crate::helpers::{PASSWORD, StackOptions, TestStack, bearer, spawn_lone_gateway, spawn_stack_with, username};

/// A fixed bound on the size of `/metrics`, whatever clients send.
const METRICS_LIMIT: usize = 64 * 1024;

fn random_hex(len: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..len).map(|_| char::from(b"0123456789abcdef"[rng.gen_range(0..16)])).collect()
}

/// The sample lines (series) of a `/metrics` text.
fn series(text: &str) -> usize {
    text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).count()
}

/// `count` random paths, a quarter each: like reflection, like a health
/// method, like a TaskService method, and under the REST prefix.
fn random_paths(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| match i % 4 {
            0 => format!("/grpc.reflection.{}", random_hex(200)),
            1 => format!("/grpc.health.v1.Health/{}", random_hex(200)),
            2 => format!("/taskgate.task.v1.TaskService/{}", random_hex(200)),
            _ => format!("/api/v1/{}", random_hex(200)),
        })
        .collect()
}

/// Sends every path of `paths` (gRPC for the first three kinds, REST for
/// the fourth) over one HTTP/2 connection, 200 at a time.
async fn send_all(http: &reqwest::Client, base: &str, paths: &[String]) {
    for chunk in paths.chunks(200) {
        join_all(chunk.iter().enumerate().map(|(i, path)| {
            let call = http.post(format!("{base}{path}"));
            let call = if i % 4 == 3 { call } else { call.header("content-type", "application/grpc") };
            async move { call.send().await.map(|r| r.status()) }
        }))
        .await;
    }
}

#[tokio::test]
async fn ten_thousand_random_paths_add_no_label_sets() {
    let gateway = spawn_lone_gateway(|s| s.rate_limit_per_minute = 1_000_000).await;
    let http = reqwest::Client::builder().http2_prior_knowledge().build().expect("h2 client");
    let base = format!("http://{}", gateway.addr);
    let scrape = || async {
        reqwest::get(format!("http://{}/metrics", gateway.admin))
            .await
            .expect("scrape")
            .text()
            .await
            .expect("metrics text")
    };
    // A few of each kind first: they make the `unknown`/`other` series.
    send_all(&http, &base, &random_paths(8)).await;
    let before = scrape().await;

    let paths = random_paths(10_000);
    send_all(&http, &base, &paths).await;
    let metrics = scrape().await;
    assert_eq!(series(&metrics), series(&before), "series were added:\n{metrics}");
    assert!(metrics.len() < METRICS_LIMIT, "/metrics grew to {} bytes", metrics.len());
    assert!(metrics.contains("route=\"other\""), "unknown REST paths are counted as `other`");
    assert!(metrics.contains("grpc_method=\"unknown\""), "unknown gRPC methods are counted as `unknown`");
    assert!(!paths.iter().take(8).any(|p| metrics.contains(&p[p.len() - 40..])), "no client path is a label");
    // The public port does not serve /metrics at all.
    let public = reqwest::get(format!("{base}/metrics")).await.expect("GET /metrics on the public port");
    assert_eq!(public.status(), StatusCode::NOT_FOUND);
}

/// Reads until the server closes `stream` or `within` passes; true if closed.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0_u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn idle_and_slow_connections_are_closed_while_healthz_keeps_answering() {
    const HEADER_TIMEOUT: Duration = Duration::from_secs(4);
    const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
    let gateway = spawn_lone_gateway(|s| {
        s.header_timeout_ms = HEADER_TIMEOUT.as_millis() as u64;
        s.idle_timeout_ms = IDLE_TIMEOUT.as_millis() as u64;
    })
    .await;
    let addr = gateway.addr;
    let started = Instant::now();

    // 2,000 connections that never send a byte, opened in batches the accept queue can take.
    let mut silent: Vec<TcpStream> = Vec::with_capacity(2_000);
    for _ in 0..20 {
        let batch = join_all((0..100).map(|_| TcpStream::connect(addr))).await;
        silent.extend(batch.into_iter().map(|c| c.expect("connect")));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One that sends a request head one byte at a time, forever.
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n").await.expect("write");
    let trickle = tokio::spawn(async move {
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if slow.write_all(b"x").await.is_err() {
                return (slow, true);
            }
        }
        (slow, false)
    });
    // One HTTP/1.1 keep-alive connection and one HTTP/2 connection, idle after their first exchange.
    let mut keep_alive = TcpStream::connect(addr).await.expect("connect");
    keep_alive.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("write");
    let mut h2 = TcpStream::connect(addr).await.expect("connect");
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.expect("preface");

    // While all of them are held, the gateway still answers.
    assert!(started.elapsed() < HEADER_TIMEOUT, "opening the connections took too long to test anything");
    let health = reqwest::Client::new()
        .get(format!("http://{addr}/healthz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .expect("/healthz answers while 2,000 idle connections are held");
    assert_eq!(health.status(), StatusCode::OK);

    // Then every one of them is closed within its timeout (plus a margin).
    let margin = Duration::from_secs(3);
    let closed = join_all(silent.iter_mut().map(|c| closed_within(c, HEADER_TIMEOUT + margin))).await;
    assert_eq!(closed.iter().filter(|c| **c).count(), 2_000, "silent connections are closed");
    assert!(started.elapsed() < HEADER_TIMEOUT + margin + Duration::from_secs(2));
    assert!(closed_within(&mut keep_alive, IDLE_TIMEOUT + margin).await, "an idle keep-alive connection is closed");
    assert!(closed_within(&mut h2, IDLE_TIMEOUT + margin).await, "an idle HTTP/2 connection is closed");
    let (mut slow, write_failed) = trickle.await.expect("trickle task");
    assert!(write_failed || closed_within(&mut slow, margin).await, "a slowloris request head is cut off");
}

#[tokio::test]
async fn a_logged_out_token_is_refused_while_redis_answers_errors() {
    let mut redis = taskgate_test_support::PrivateRedis::start();
    let stack = spawn_stack_with(StackOptions { redis_url: Some(redis.url()), ..Default::default() }).await;
    let alice = stack.user().await;
    let list = |token: String| {
        let client = stack.task_a.clone();
        async move { client.clone().list_tasks(bearer(ListTasksRequest::default(), &token)).await.map(|_| ()) }
    };
    list(alice.access().to_owned()).await.expect("a live token works");
    stack
        .auth_a
        .clone()
        .logout(bearer(LogoutRequest { refresh_token: String::new() }, alice.access()))
        .await
        .expect("logout");
    let admin = crate::helpers::redis_client(&redis.url()).await;
    let command = |name: &'static str, args: &'static [&'static str]| {
        let admin = admin.clone();
        async move {
            let _: Value = admin
                .custom(CustomCommand::new_static(name, None, false), args.to_vec())
                .await
                .unwrap_or_else(|e| panic!("{name} {args:?}: {e}"));
        }
    };

    // Busy: another client's script runs past the busy threshold, so Redis answers BUSY.
    command("CONFIG", &["SET", "busy-reply-threshold", "100"]).await;
    let url = redis.url();
    let host_port = url.trim_start_matches("redis://").split('/').next().unwrap_or_default().to_owned();
    let mut hog = TcpStream::connect(host_port).await.expect("connect to redis");
    hog.write_all(b"*3\r\n$4\r\nEVAL\r\n$17\r\nwhile true do end\r\n$1\r\n0\r\n").await.expect("a busy script");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = list(alice.access().to_owned()).await.expect_err("refused while Redis answers BUSY");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    command("SCRIPT", &["KILL"]).await;
    // The killed script's client gets its error reply once Redis is free again.
    let mut reply = [0_u8; 256];
    let _ = tokio::time::timeout(Duration::from_secs(5), hog.read(&mut reply)).await;
    drop(hog);

    // Paused: the script times out.
    command("CLIENT", &["PAUSE", "3000", "ALL"]).await;
    let status = list(alice.access().to_owned()).await.expect_err("refused while Redis times out");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    command("CLIENT", &["UNPAUSE"]).await;
    let _ = admin.quit().await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Only a refused connection fails open (documented): a live token works on its signature.
    let bob = stack.user().await;
    redis.stop();
    list(bob.access().to_owned()).await.expect("accepted on its signature while Redis is unreachable");
}

#[tokio::test]
async fn a_hundred_addresses_of_one_slash_64_share_one_budget() {
    let gateway = spawn_lone_gateway(|s| {
        s.rate_limit_per_minute = 20;
        s.trusted_proxies = vec!["127.0.0.1".parse().expect("ip")];
    })
    .await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/openapi.json", gateway.addr);
    let call = |forwarded: String| {
        let call = http.get(&url).header("x-forwarded-for", forwarded).send();
        async move { call.await.expect("GET /openapi.json").status() }
    };
    let mut allowed = 0;
    for i in 0..100 {
        if call(format!("2001:db8:1:2::{:x}", i + 1)).await == StatusCode::OK {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 20, "100 addresses of one /64 share one budget of 20");
    assert_eq!(call("2001:db8:1:3::1".into()).await, StatusCode::OK, "the next /64 has its own budget");

    // IPv4: a port or the IPv4-mapped form is the same address.
    let mut allowed = 0;
    for form in ["198.51.100.7", "198.51.100.7:4711", "::ffff:198.51.100.7", "[::ffff:198.51.100.7]:80"] {
        for _ in 0..10 {
            if call(form.to_owned()).await == StatusCode::OK {
                allowed += 1;
            }
        }
    }
    assert_eq!(allowed, 20, "every spelling of one IPv4 address shares its budget");
}

#[tokio::test]
async fn twenty_free_accounts_from_one_address_are_held_to_the_per_address_ceiling() {
    let stack = spawn_stack_with(StackOptions {
        rate_limit_per_minute: 1000,
        gateway: |s| s.rate_limit_per_address_per_minute = 30,
        ..Default::default()
    })
    .await;
    let users = join_all((0..20).map(|_| stack.user())).await;
    let mut allowed = 0;
    for round in 0..5 {
        let calls = users.iter().map(|u| {
            let client = stack.auth_a.clone();
            let token = u.access().to_owned();
            async move { client.clone().get_me(bearer(GetMeRequest {}, &token)).await }
        });
        for result in join_all(calls).await {
            match result {
                Ok(_) => allowed += 1,
                Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "round {round}: {status:?}"),
            }
        }
    }
    // A few more may refill during the run (30 per minute is one per 2 s).
    assert!((30..=33).contains(&allowed), "{allowed} of 100 signed-in calls from one address were accepted");
}

#[tokio::test]
async fn refresh_is_charged_to_the_refresh_tokens_user() {
    let stack = spawn_stack_with(StackOptions { rate_limit_per_minute: 5, ..Default::default() }).await;
    let alice = stack.user().await;
    // Alice spends her own budget...
    for _ in 0..5 {
        let _ = stack.task_a.clone().list_tasks(bearer(ListTasksRequest::default(), alice.access())).await;
    }
    // ...and her refresh is refused on her account, not on her address's.
    let refresh = stack
        .auth_a
        .clone()
        .refresh(RefreshRequest { refresh_token: alice.tokens.refresh_token.clone() })
        .await
        .expect_err("her budget is spent");
    assert_eq!(refresh.code(), Code::ResourceExhausted);
}

/// A channel to `addr` over TLS trusting the test CA, presenting the
/// certificate of `client` (`None`: no client certificate).
fn tls_channel(stack: &TestStack, addr: SocketAddr, client: Option<&str>) -> Channel {
    let bundle = &stack.certs.as_ref().expect("an mTLS stack").bundle;
    let ca = Certificate::from_pem(std::fs::read(&bundle.ca_file).expect("ca.pem"));
    let mut tls = ClientTlsConfig::new().ca_certificate(ca).domain_name("localhost");
    if let Some(name) = client {
        let settings = bundle.settings(name);
        let cert = std::fs::read(settings.mtls_cert_file.expect("cert")).expect("cert file");
        let key = std::fs::read(settings.mtls_key_file.expect("key")).expect("key file");
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("url")
        .tls_config(tls)
        .expect("tls config")
        .timeout(Duration::from_secs(5))
        .connect_lazy()
}

/// Logs `name` in at the auth service over `channel`, claiming `x-client-ip: 203.0.113.9`.
async fn login_claiming_an_address(channel: Channel, name: &str) -> Result<String, tonic::Status> {
    let mut request =
        tonic::Request::new(LoginRequest { login: name.to_owned(), password: PASSWORD.into(), ..Default::default() });
    request.metadata_mut().insert("x-client-ip", "203.0.113.9".parse().expect("ascii"));
    let pair = AuthServiceClient::new(channel).login(request).await?.into_inner().tokens.expect("tokens");
    Ok(pair.access_token)
}

#[tokio::test]
async fn a_direct_call_to_a_backend_without_the_gateways_certificate_is_refused() {
    let stack = spawn_stack_with(StackOptions { mtls: true, ..Default::default() }).await;
    let alice = stack.user().await;

    // Plain HTTP/2, or TLS without a client certificate: no call gets through.
    TaskServiceClient::new(crate::helpers::lazy_channel(stack.task_addr))
        .list_tasks(bearer(ListTasksRequest::default(), alice.access()))
        .await
        .expect_err("plaintext to the task service is refused");
    login_claiming_an_address(tls_channel(&stack, stack.auth_addr, None), &alice.username)
        .await
        .expect_err("TLS without a client certificate is refused");

    // Another service's certificate gets a call through, but cannot choose the client address.
    let token = login_claiming_an_address(tls_channel(&stack, stack.auth_addr, Some("task")), &alice.username)
        .await
        .expect("an internal peer may call");
    // The gateway's certificate is believed.
    let from_gateway =
        login_claiming_an_address(tls_channel(&stack, stack.auth_addr, Some("gateway")), &alice.username)
            .await
            .expect("the gateway may call");
    let sessions = stack
        .auth_a
        .clone()
        .list_sessions(bearer(ListSessionsRequest::default(), &token))
        .await
        .expect("list sessions through the gateway")
        .into_inner()
        .sessions;
    let session_of = |access: &str| {
        let sid = jwt_claim(access, "sid");
        sessions
            .iter()
            .find(|s| s.id == sid)
            .map(|s| s.ip_address.clone().unwrap_or_default())
            .expect("the session is listed")
    };
    assert_ne!(session_of(&token), "203.0.113.9", "x-client-ip from a non-gateway peer is ignored");
    assert_eq!(session_of(&from_gateway), "203.0.113.9", "x-client-ip from the gateway is believed");
    // And the whole path through the gateway works over mutual TLS.
    stack.task_a.clone().list_tasks(bearer(ListTasksRequest::default(), alice.access())).await.expect("via gateway");
}

#[tokio::test]
async fn over_mutual_tls_the_gateway_balances_over_a_replica_list_and_a_dns_name() {
    // The auth service named `localhost` (its certificate must be valid for that name), the two
    // task replicas in one list (each checked against its address): every channel of the fleet,
    // the gateway's hashing channel and the task service's JWKS channel included, over mTLS.
    let stack =
        spawn_stack_with(StackOptions { mtls: true, task_replicas: 2, balanced: true, ..Default::default() }).await;
    let alice = stack.user().await;
    for i in 0..6 {
        let task = Task { title: format!("balanced {i}"), ..Default::default() };
        stack
            .task_a
            .clone()
            .create_task(bearer(CreateTaskRequest { task: Some(task), ..Default::default() }, alice.access()))
            .await
            .expect("a write through the balanced channel");
        let listed = stack
            .task_b
            .clone()
            .list_tasks(bearer(ListTasksRequest::default(), alice.access()))
            .await
            .expect("a read through the balanced channel")
            .into_inner()
            .tasks;
        assert_eq!(listed.len(), i + 1, "every write is seen, whichever replica served it");
    }
    stack.auth_a.clone().get_me(bearer(GetMeRequest {}, alice.access())).await.expect("GetMe over mutual TLS");
}

/// A claim of a JWT, unverified.
fn jwt_claim(token: &str, name: &str) -> String {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).expect("base64url");
    let claims: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    claims[name].as_str().expect("a string claim").to_owned()
}

/// The `kid` of a JWT.
fn jwt_kid(token: &str) -> String {
    use base64::Engine as _;
    let header = token.split('.').next().expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).expect("base64url");
    let header: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    header["kid"].as_str().expect("kid").to_owned()
}

#[tokio::test]
async fn a_revoked_keys_tokens_are_refused_by_every_verifier_within_the_refetch_interval() {
    const REFRESH: u64 = 1;
    let stack = spawn_stack_with(StackOptions { key_refresh_seconds: REFRESH, ..Default::default() }).await;
    let alice = stack.user().await;
    let list = |client: TaskServiceClient<Channel>, token: String| async move {
        client.clone().list_tasks(bearer(ListTasksRequest::default(), &token)).await.map(|_| ())
    };
    for client in [stack.task_a.clone(), stack.task_b.clone(), stack.task_direct()] {
        list(client, alice.access().to_owned()).await.expect("before the withdrawal");
    }

    let kid = jwt_kid(alice.access());
    let replacement = auth_service::revoke_key(&stack.auth_settings, &kid).await.expect("revoke-key");
    assert!(replacement.is_some(), "the signing key was withdrawn, so a new one signs");

    // Within the refresh interval (plus a fetch and a margin) every verifier refuses it.
    tokio::time::sleep(Duration::from_secs(REFRESH * 3)).await;
    for (name, client) in [("A", stack.task_a.clone()), ("B", stack.task_b.clone()), ("task", stack.task_direct())] {
        let status = list(client, alice.access().to_owned()).await.expect_err(name);
        assert_eq!(status.code(), Code::Unauthenticated, "{name}: {status:?}");
    }
    let refreshed = stack
        .auth_a
        .clone()
        .refresh(RefreshRequest { refresh_token: alice.tokens.refresh_token.clone() })
        .await
        .expect_err("the session it signed has ended");
    assert_eq!(refreshed.code(), Code::Unauthenticated, "{refreshed:?}");

    // A new login is signed by the replacement and works everywhere.
    let fresh = taskgate_test_support::login(&stack.auth_a, &alice.username).await;
    assert_eq!(Some(jwt_kid(&fresh.access_token)), replacement);
    list(stack.task_b.clone(), fresh.access_token).await.expect("a token of the new key");
}

#[tokio::test]
async fn a_planted_cookie_pair_from_another_session_fails_the_csrf_check() {
    let stack = spawn_stack_with(StackOptions::default()).await;
    let victim = stack.user().await;
    let attacker = stack.user().await;
    let victim_jar = stack.cookie_login(&victim.username).await;
    let (access, refresh, csrf) = (
        victim_jar["__Host-tg_access"].clone(),
        victim_jar["__Secure-tg_refresh"].clone(),
        victim_jar["__Host-tg_csrf"].clone(),
    );
    let attacker_csrf = stack.cookie_login(&attacker.username).await["__Host-tg_csrf"].clone();
    let create = |jar: String, csrf: String| {
        let call = stack
            .http
            .post(stack.url_a("/api/v1/tasks"))
            .header("cookie", jar)
            .header("x-csrf-token", csrf)
            .json(&serde_json::json!({"title": "planted"}))
            .send();
        async move { call.await.expect("create").status() }
    };

    // The attacker's own, valid, CSRF pair does not fit the victim's session.
    let planted = format!("__Host-tg_access={access}; __Host-tg_csrf={attacker_csrf}");
    assert_eq!(create(planted, attacker_csrf.clone()).await, StatusCode::FORBIDDEN);
    // Unprefixed cookies (which a sibling subdomain could plant) are not read at all.
    let unprefixed = format!("tg_access={access}; tg_csrf={csrf}");
    assert_eq!(create(unprefixed, csrf.clone()).await, StatusCode::UNAUTHORIZED);
    // The victim's own page, with its session's token, may write.
    assert_eq!(
        create(format!("__Host-tg_access={access}; __Host-tg_csrf={csrf}"), csrf.clone()).await,
        StatusCode::CREATED
    );

    // Logout through the refresh cookie is a cookie-authenticated write too.
    let logout = |csrf: String| {
        let call = stack
            .http
            .post(stack.url_a("/api/v1/auth/logout"))
            .header("cookie", format!("__Secure-tg_refresh={refresh}"))
            .header("x-csrf-token", csrf)
            .send();
        async move { call.await.expect("logout").status() }
    };
    assert_eq!(logout(attacker_csrf).await, StatusCode::FORBIDDEN);
    assert_eq!(logout(csrf).await, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn past_the_in_flight_limit_requests_are_shed_with_retry_after() {
    let gateway = spawn_lone_gateway(|s| s.max_in_flight = 1).await;
    // A request whose body never comes holds the one slot...
    let mut holder = TcpStream::connect(gateway.addr).await.expect("connect");
    holder
        .write_all(b"POST /api/v1/auth/login HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...so the next one is shed at once, in its protocol, with Retry-After.
    let response = reqwest::Client::new()
        .post(format!("http://{}/api/v1/auth/login", gateway.addr))
        .json(&serde_json::json!({"login": username(), "password": PASSWORD}))
        .send()
        .await
        .expect("a response");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: serde_json::Value = response.json().await.expect("the JSON error shape");
    assert_eq!(body["code"], 8, "RESOURCE_EXHAUSTED: {body}");
    let grpc = TaskServiceClient::new(crate::helpers::lazy_channel(gateway.addr))
        .list_tasks(ListTasksRequest::default())
        .await
        .expect_err("shed");
    assert_eq!(grpc.code(), Code::ResourceExhausted, "{grpc:?}");
    // /healthz is never shed.
    let health = reqwest::get(format!("http://{}/healthz", gateway.addr)).await.expect("healthz");
    assert_eq!(health.status(), StatusCode::OK);
    drop(holder);
}
