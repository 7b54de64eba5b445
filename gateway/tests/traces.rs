//! Traces, in a process of their own (one global subscriber exporting to an
//! in-process OTLP receiver): a REST call carrying a client's `traceparent`
//! is one trace through the gateway, the task service and its stores.

#[allow(dead_code, unused_imports)]
#[path = "api/helpers.rs"]
mod helpers;

use std::time::Duration;

use taskgate_common::telemetry::{self, Export, LogFormat};
use taskgate_test_support::otlp::{OtlpReceiver, Span};

/// The client's trace id and span id.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN_ID: &str = "00f067aa0ba902b7";

/// OTLP's `SPAN_KIND_SERVER` and `SPAN_KIND_CLIENT`.
const SERVER: i32 = 2;
const CLIENT: i32 = 3;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The one span named `name` of `kind` (any kind when `None`), in the client's trace.
fn find<'a>(spans: &'a [Span], name: &str, kind: Option<i32>) -> Option<&'a Span> {
    spans.iter().find(|s| s.name == name && kind.is_none_or(|k| s.kind == k) && hex(&s.trace_id) == TRACE_ID)
}

/// Whether `span` descends from `ancestor` through the parent links of `spans`.
fn descends_from(spans: &[Span], span: &Span, ancestor: &Span) -> bool {
    let mut parent = span.parent_span_id.clone();
    for _ in 0..16 {
        if parent == ancestor.span_id {
            return true;
        }
        match spans.iter().find(|s| s.span_id == parent) {
            Some(next) => parent = next.parent_span_id.clone(),
            None => return false,
        }
    }
    false
}

/// The store span of a ListTasks call: its cache read, or its query.
fn store_span<'a>(spans: &'a [Span], task_server: &Span) -> Option<&'a Span> {
    spans
        .iter()
        .filter(|s| s.name == "cache read" || s.name == "tasks list")
        .find(|s| hex(&s.trace_id) == TRACE_ID && descends_from(spans, s, task_server))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_call_with_a_traceparent_is_traced_through_the_gateway_the_task_service_and_its_store() {
    let receiver = OtlpReceiver::start().await;
    let export = Export { endpoint: Some(receiver.endpoint()), service_name: "taskgate-tests".into() };
    let telemetry = telemetry::init_with(LogFormat::Json, export);
    assert!(telemetry.exporting(), "this test binary installs the only subscriber");
    let stack = helpers::spawn_stack().await;
    let user = stack.user().await;

    let response = stack
        .http
        .get(stack.url_a("/api/v1/tasks"))
        .bearer_auth(user.access())
        .header("traceparent", format!("00-{TRACE_ID}-{CLIENT_SPAN_ID}-01"))
        .send()
        .await
        .expect("GET /api/v1/tasks");
    assert_eq!(response.status(), 200);

    // Sends what the batch processor holds (a blocking call).
    let telemetry = tokio::task::spawn_blocking(move || {
        telemetry.flush();
        telemetry
    })
    .await
    .expect("flushing spans");
    let task_method = "taskgate.task.v1.TaskService/ListTasks";
    let spans = receiver
        .wait_for(Duration::from_secs(10), |spans| {
            find(spans, "GET /api/v1/tasks", Some(SERVER)).is_some()
                && find(spans, task_method, Some(CLIENT)).is_some()
                && find(spans, task_method, Some(SERVER)).is_some_and(|server| store_span(spans, server).is_some())
        })
        .await;
    let names: Vec<(&str, i32, String)> = spans.iter().map(|s| (s.name.as_str(), s.kind, hex(&s.trace_id))).collect();

    let gateway =
        find(&spans, "GET /api/v1/tasks", Some(SERVER)).unwrap_or_else(|| panic!("no gateway span: {names:?}"));
    assert_eq!(hex(&gateway.parent_span_id), CLIENT_SPAN_ID, "the gateway's span is the client's child");
    let forwarded = find(&spans, task_method, Some(CLIENT)).unwrap_or_else(|| panic!("no client span: {names:?}"));
    assert_eq!(forwarded.parent_span_id, gateway.span_id, "the backend call is the gateway span's child");
    let task = find(&spans, task_method, Some(SERVER)).unwrap_or_else(|| panic!("no task service span: {names:?}"));
    assert_eq!(task.parent_span_id, forwarded.span_id, "the task service continues the gateway's traceparent");
    let store = store_span(&spans, task).unwrap_or_else(|| panic!("no cache or database span: {names:?}"));
    let system = store.attributes.iter().find(|kv| kv.key == "db.system").and_then(|kv| kv.value.clone());
    assert!(system.is_some(), "the store span names its system: {store:?}");
    // Stopping the exporter blocks too.
    tokio::task::spawn_blocking(move || drop(telemetry)).await.expect("stopping the exporter");
}
