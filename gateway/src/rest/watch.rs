//! `GET /api/v1/tasks:watch`: WatchTasks as Server-Sent Events.
//!
//! Each task event is one SSE event whose `event` is `created`, `updated` or
//! `deleted`, whose `id` is the list version after it (so a browser's
//! `EventSource` resumes with `Last-Event-ID` after a reconnect, missing
//! nothing), and whose `data` is `{"type", "task", "version"}`. Heartbeats are
//! SSE comments. A stream that ends with an error sends one `error` event
//! carrying the google.rpc.Status JSON (e.g. `FAILED_PRECONDITION` with the
//! `LIST_AGAIN` reason: list again and watch from the new version) and
//! closes. An error before the stream starts is an ordinary JSON error.

use axum::{
    extract::State,
    response::{
        IntoResponse, Response,
        sse::{Event, Sse},
    },
};
use futures::{Stream, StreamExt as _, stream};
use http::{HeaderMap, HeaderValue, header};
use taskgate_common::status::invalid_field;
use taskgate_proto::task::v1::{TaskEventType, WatchTasksRequest, WatchTasksResponse};
use tonic::Status;

use crate::{
    rest::{
        error::{RestError, json_body},
        extract::{QueryParams, grpc_request},
        json,
        routes::Backends,
    },
    watch::Held,
};

/// `GET /api/v1/tasks:watch[?since=]` with optional `Last-Event-ID` → 200
/// `text/event-stream`.
pub async fn watch_tasks(
    State(b): State<Backends>,
    headers: HeaderMap,
    query: QueryParams,
) -> Result<Response, RestError> {
    let since = since(&headers, &query)?;
    let permit = b.watch.acquire()?;
    let response = b.task.clone().watch_tasks(grpc_request(&headers, WatchTasksRequest { since })).await?;
    let events = sse_events(Held::new(response.into_inner(), permit));
    let mut response = Sse::new(events).into_response();
    let out = response.headers_mut();
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Proxies such as nginx must not hold events back to fill a buffer.
    out.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Where to resume: `Last-Event-ID` (an `EventSource` reconnecting) wins over
/// `?since=`; neither means "from now".
fn since(headers: &HeaderMap, query: &QueryParams) -> Result<i64, RestError> {
    let (field, text) = match headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        Some(text) => ("Last-Event-ID", text),
        None => match query.get("since") {
            Some(text) => ("since", text),
            None => return Ok(0),
        },
    };
    match text.trim().parse::<i64>() {
        Ok(n) if n >= 0 => Ok(n),
        _ => Err(invalid_field(field, "must be a list version (a whole number, 0 or more)").into()),
    }
}

/// The backend's events as SSE events, ending after the first error.
fn sse_events<S>(events: S) -> impl Stream<Item = Result<Event, std::convert::Infallible>> + Send
where
    S: Stream<Item = Result<WatchTasksResponse, Status>> + Send + Unpin + 'static,
{
    stream::unfold(Some(events), |state| async move {
        let mut events = state?;
        let event = match events.next().await? {
            Ok(event) => event,
            Err(status) => {
                let error = Event::default().event("error").data(json_body(&status).to_string());
                return Some((Ok(error), None));
            }
        };
        Some((Ok(sse_event(&event)), Some(events)))
    })
}

/// One WatchTasks event as an SSE event.
fn sse_event(event: &WatchTasksResponse) -> Event {
    let kind = TaskEventType::try_from(event.r#type).unwrap_or(TaskEventType::Unspecified);
    if kind == TaskEventType::Heartbeat {
        return Event::default().comment(format!("heartbeat {}", event.version));
    }
    Event::default()
        .id(event.version.to_string())
        .event(json::event_name(kind))
        .data(json::watch_event(event).to_string())
}

#[cfg(test)]
mod tests {
    use taskgate_proto::task::v1::Task;

    use super::*;

    #[test]
    fn last_event_id_wins_over_the_query() {
        let mut headers = HeaderMap::new();
        assert_eq!(since(&headers, &QueryParams::parse(Some("since=5"))).expect("query"), 5);
        headers.insert("last-event-id", HeaderValue::from_static("9"));
        assert_eq!(since(&headers, &QueryParams::parse(Some("since=5"))).expect("header"), 9);
        headers.insert("last-event-id", HeaderValue::from_static("x"));
        assert!(since(&headers, &QueryParams::parse(None)).is_err());
        assert_eq!(since(&HeaderMap::new(), &QueryParams::parse(None)).expect("none"), 0);
    }

    #[tokio::test]
    async fn events_carry_their_version_as_id_and_an_error_ends_the_stream() {
        let created = WatchTasksResponse {
            r#type: TaskEventType::Created as i32,
            task: Some(Task { id: "t".into(), title: "x".into(), ..Default::default() }),
            version: 42,
        };
        let source = stream::iter(vec![Ok(created), Err(Status::unauthenticated("session has been revoked"))]);
        let events: Vec<_> = sse_events(source.boxed()).collect().await;
        assert_eq!(events.len(), 2);
    }
}
