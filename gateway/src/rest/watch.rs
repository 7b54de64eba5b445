//! Server-streaming RPCs as Server-Sent Events (`text/event-stream`).
//!
//! Each message is one event: its `data` is the message's REST JSON, its
//! `event` the value of the field the RPC's `sse_event_field` names, and its
//! `id` the `sse_id_field` (so a browser's `EventSource` resumes with
//! `Last-Event-ID` after a reconnect, missing nothing). Events named
//! `sse_comment_event` (keep-alives) are sent as SSE comments. A stream that
//! ends with an error sends one `error` event carrying the google.rpc.Status
//! JSON and closes; an error before the stream starts is an ordinary JSON
//! error. WatchTasks is the contract's one such RPC.

use axum::response::{
    IntoResponse, Response,
    sse::{Event, Sse},
};
use futures::{Stream, StreamExt as _, stream};
use http::{HeaderValue, header};
use prost_reflect::DynamicMessage;
use serde_json::Value;
use taskgate_proto::api::v1::Rest;
use tokio::sync::OwnedSemaphorePermit;
use tonic::Status;

use crate::{
    rest::{error::json_body, json},
    watch::Held,
};

/// The response streaming `messages` as Server-Sent Events, holding
/// `permit` (this replica's open-stream bound) until the stream ends.
pub fn sse<S>(rest: &Rest, messages: S, permit: OwnedSemaphorePermit) -> Response
where
    S: Stream<Item = Result<DynamicMessage, Status>> + Send + Unpin + 'static,
{
    let naming = Naming {
        event: rest.sse_event_field.clone(),
        id: rest.sse_id_field.clone(),
        comment: rest.sse_comment_event.clone(),
    };
    let mut response = Sse::new(events(naming, Held::new(messages, permit))).into_response();
    let out = response.headers_mut();
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Proxies such as nginx must not hold events back to fill a buffer.
    out.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// Which fields name an event, and which events are comments.
struct Naming {
    /// The field whose JSON value is the event name.
    event: String,
    /// The field whose JSON value is the event id.
    id: String,
    /// The event name sent as a comment.
    comment: String,
}

/// The messages as SSE events, ending after the first error.
fn events<S>(naming: Naming, messages: S) -> impl Stream<Item = Result<Event, std::convert::Infallible>> + Send
where
    S: Stream<Item = Result<DynamicMessage, Status>> + Send + Unpin + 'static,
{
    stream::unfold(Some((naming, messages)), |state| async move {
        let (naming, mut messages) = state?;
        let event = match messages.next().await?.and_then(|message| event(&naming, &message)) {
            Ok(event) => event,
            Err(status) => {
                let error = Event::default().event("error").data(json_body(&status).to_string());
                return Some((Ok(error), None));
            }
        };
        Some((Ok(event), Some((naming, messages))))
    })
}

/// One message as an SSE event (or comment); INTERNAL when it has no JSON form.
fn event(naming: &Naming, message: &DynamicMessage) -> Result<Event, Status> {
    let data = json::render(message)?;
    let text = |field: &str| match &data[field] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let (name, id) = (text(&naming.event), text(&naming.id));
    if !naming.comment.is_empty() && name == naming.comment {
        return Ok(Event::default().comment(format!("{name} {id}")));
    }
    let mut event = Event::default().data(data.to_string());
    if !name.is_empty() {
        event = event.event(name);
    }
    if !id.is_empty() {
        event = event.id(id);
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use prost_reflect::ReflectMessage as _;
    use taskgate_proto::task::v1::{Task, TaskEventType, WatchTasksResponse};

    use super::*;

    fn dynamic(event: &WatchTasksResponse) -> DynamicMessage {
        DynamicMessage::decode(event.descriptor(), event.encode_to_vec().as_slice()).expect("decodes")
    }

    fn naming() -> Naming {
        Naming { event: "type".into(), id: "version".into(), comment: "heartbeat".into() }
    }

    #[tokio::test]
    async fn events_carry_their_name_and_id_and_an_error_ends_the_stream() {
        let created = WatchTasksResponse {
            r#type: TaskEventType::Created as i32,
            task: Some(Task { id: "t".into(), title: "x".into(), ..Default::default() }),
            version: 42,
        };
        let source =
            stream::iter(vec![Ok(dynamic(&created)), Err(Status::unauthenticated("session has been revoked"))]);
        let events: Vec<_> = events(naming(), source.boxed()).collect().await;
        assert_eq!(events.len(), 2);
        let text = format!("{:?}", event(&naming(), &dynamic(&created)).expect("a JSON form"));
        assert!(text.contains("created") && text.contains("42"), "{text}");
        let beat = WatchTasksResponse { r#type: TaskEventType::Heartbeat as i32, task: None, version: 7 };
        let text = format!("{:?}", event(&naming(), &dynamic(&beat)).expect("a JSON form"));
        assert!(text.contains(": heartbeat 7"), "a comment: {text}");
    }
}
