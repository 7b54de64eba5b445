//! WatchTasks streams at the gateway: the per-replica bound on open streams,
//! shared by native gRPC, gRPC-web and the REST Server-Sent Events route.
//!
//! A stream is one request to the rest of the stack: it is authenticated and
//! counted once against the rate limit when it opens, however long it lives.
//! The per-user bound (`WATCH_MAX_STREAMS_PER_USER`) is the task service's,
//! fleet-wide; this one protects the gateway replica itself.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use futures::Stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

/// The open-stream slots of one gateway replica.
#[derive(Clone)]
pub struct WatchSlots {
    /// One permit per stream that may be open at once
    /// (`GATEWAY_MAX_WATCH_STREAMS`).
    permits: Arc<Semaphore>,
    /// The bound, for messages.
    limit: usize,
}

impl WatchSlots {
    /// Room for `limit` open streams.
    pub fn new(limit: usize) -> Self {
        WatchSlots { permits: Arc::new(Semaphore::new(limit)), limit }
    }

    /// A slot for one more stream, or RESOURCE_EXHAUSTED when all are taken.
    pub fn acquire(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!("this gateway already serves {} watch streams", self.limit))
        })
    }

    /// How many streams are open now.
    pub fn open(&self) -> usize {
        self.limit - self.permits.available_permits()
    }
}

/// A stream that holds its slot until it is dropped.
pub struct Held<S> {
    /// The stream.
    inner: S,
    /// Released when the stream is dropped (the client went away or it ended).
    _permit: OwnedSemaphorePermit,
}

impl<S> Held<S> {
    /// `inner`, holding `permit`.
    pub fn new(inner: S, permit: OwnedSemaphorePermit) -> Self {
        Held { inner, _permit: permit }
    }
}

impl<S: Stream + Unpin> Stream for Held<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_returned_when_a_stream_is_dropped() {
        let slots = WatchSlots::new(2);
        let a = slots.acquire().expect("first");
        let _b = slots.acquire().expect("second");
        assert_eq!(slots.acquire().expect_err("full").code(), tonic::Code::ResourceExhausted);
        drop(Held::new(futures::stream::empty::<()>(), a));
        assert_eq!(slots.open(), 1);
        assert!(slots.acquire().is_ok());
    }
}
