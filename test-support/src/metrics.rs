//! Reading a service's `/metrics` in tests: scraping it, picking samples,
//! counting series, checking the exposition with `promtool`, and sending
//! thousands of calls to random paths to show they add no label set.

use std::{net::SocketAddr, process::Stdio, str::FromStr as _};

use http::uri::PathAndQuery;
use tokio::io::AsyncWriteExt as _;
use tonic::transport::Channel;

/// The text of `GET http://<admin>/metrics`.
pub async fn scrape(admin: SocketAddr) -> String {
    let response = reqwest::get(format!("http://{admin}/metrics")).await.expect("scraping /metrics");
    assert!(response.status().is_success(), "/metrics answered {}", response.status());
    response.text().await.expect("the /metrics text")
}

/// The value of the sample `name_and_labels` (a series exactly as written,
/// such as `grpc_server_started_total{grpc_type="unary",...}`), or 0 when
/// the series is absent.
pub fn value(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(name_and_labels))
        .filter_map(|rest| rest.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// How many series (sample lines) the exposition has.
pub fn series(text: &str) -> usize {
    text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).count()
}

/// Pipes `text` to `promtool check metrics` and fails on any complaint.
/// Without promtool the check is skipped, except in CI (`CI` set), where
/// promtool must be installed.
pub async fn promtool_check(text: &str) {
    let child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("promtool check skipped: promtool not found ({e})");
            return;
        }
        Err(e) => panic!("promtool is required in CI (Debian package `prometheus`): {e}"),
    };
    let mut stdin = child.stdin.take().expect("promtool's stdin");
    stdin.write_all(text.as_bytes()).await.expect("writing to promtool");
    drop(stdin);
    let output = child.wait_with_output().await.expect("running promtool");
    let complaints = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && complaints.trim().is_empty(), "promtool check metrics:\n{complaints}\n{text}");
}

/// `count` random gRPC method paths: a quarter each under a reflection-like
/// name, the health service, `service` (a fully qualified name the server
/// serves), and nowhere in particular.
pub fn random_grpc_paths(service: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            let noise = format!("{:032x}", rand_u128());
            match i % 4 {
                0 => format!("/grpc.reflection.{noise}/{noise}"),
                1 => format!("/grpc.health.v1.Health/{noise}"),
                2 => format!("/{service}/{noise}"),
                _ => format!("/{noise}"),
            }
        })
        .collect()
}

/// A random number, without a dependency on `rand` (uniqueness is all that matters).
fn rand_u128() -> u128 {
    uuid::Uuid::new_v4().as_u128()
}

/// A channel (one HTTP/2 connection) to the plaintext gRPC server at `addr`.
pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}")).expect("a valid url").connect().await.expect("connecting")
}

/// Calls every path of `paths` as a unary gRPC method with an empty message,
/// over the one HTTP/2 connection of `channel`, 64 at a time; the answers
/// (UNIMPLEMENTED, as a rule) are ignored.
pub async fn call_paths(channel: Channel, paths: &[String]) {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("the channel is ready");
    for chunk in paths.chunks(64) {
        let calls = chunk.iter().map(|path| {
            let mut grpc = grpc.clone();
            let path = PathAndQuery::from_str(path).expect("a valid path");
            async move {
                // A clone of the channel must be ready before its own call.
                if grpc.ready().await.is_err() {
                    return;
                }
                let codec = tonic_prost::ProstCodec::<(), ()>::default();
                let _ = grpc.unary(tonic::Request::new(()), path, codec).await;
            }
        });
        futures::future::join_all(calls).await;
    }
}

/// Asserts each `(series, value)` of `expected` in the exposition `text`,
/// then checks the whole exposition with [`promtool_check`].
pub async fn assert_samples(text: &str, expected: &[(String, f64)]) {
    for (sample, value_expected) in expected {
        assert_eq!(value(text, sample), *value_expected, "{sample}\n{text}");
    }
    promtool_check(text).await;
}

/// Sends 10,000 calls to random paths (a quarter of them under `service`)
/// to the gRPC server at `addr` and asserts that its `/metrics` on `admin`
/// gains no series: every unknown method counts under `unknown`, and no
/// client-chosen name becomes a label.
pub async fn assert_random_paths_add_no_series(addr: SocketAddr, admin: SocketAddr, service: &str) {
    let channel = channel(addr).await;
    // A few of each kind first: they make the `unknown` series.
    call_paths(channel.clone(), &random_grpc_paths(service, 8)).await;
    let before = scrape(admin).await;
    let started = std::time::Instant::now();
    let paths = random_grpc_paths(service, 10_000);
    call_paths(channel, &paths).await;
    let took = started.elapsed();
    let after = scrape(admin).await;
    assert_eq!(series(&after), series(&before), "series were added:\n{after}");
    let unknown = "grpc_server_handled_total{grpc_type=\"unary\",grpc_service=\"unknown\",grpc_method=\"unknown\",grpc_code=\"Unimplemented\"}";
    assert_eq!(value(&after, unknown), 10_008.0, "{after}");
    assert!(!paths.iter().take(8).any(|p| after.contains(&p[p.len() - 20..])), "no client path is a label");
    eprintln!("10,000 unknown calls took {took:?}; /metrics is {} bytes", after.len());
}
