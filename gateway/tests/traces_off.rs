//! Traces off, in a process of their own: with no OTLP endpoint, the
//! subscriber has no OpenTelemetry layer and nothing is exported, even for
//! a call that carries a client's `traceparent`.

#[allow(dead_code, unused_imports)]
#[path = "api/helpers.rs"]
mod helpers;

use std::time::Duration;

use taskgate_common::telemetry::{self, Export, LogFormat};
use taskgate_test_support::otlp::OtlpReceiver;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_nothing_is_exported() {
    let receiver = OtlpReceiver::start().await;
    let telemetry =
        telemetry::init_with(LogFormat::Json, Export { endpoint: None, service_name: "taskgate-tests".into() });
    assert!(!telemetry.exporting() && !telemetry::exporting());
    let stack = helpers::spawn_stack().await;
    let user = stack.user().await;
    let response = stack
        .http
        .get(stack.url_a("/api/v1/tasks"))
        .bearer_auth(user.access())
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .send()
        .await
        .expect("GET /api/v1/tasks");
    assert_eq!(response.status(), 200);
    let telemetry = tokio::task::spawn_blocking(move || {
        telemetry.flush();
        telemetry
    })
    .await
    .expect("flushing spans");
    // Nothing could arrive: wait a little in case something did anyway.
    let spans = receiver.wait_for(Duration::from_millis(500), |spans| !spans.is_empty()).await;
    assert!(spans.is_empty(), "spans were exported: {spans:?}");
    // Stopping the exporter blocks too.
    tokio::task::spawn_blocking(move || drop(telemetry)).await.expect("stopping the exporter");
}
