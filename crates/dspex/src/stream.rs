//! [`PredictionStream`]: a call's output fields as they are written, then
//! its [`Prediction`].

use std::pin::Pin;
use std::task::{Context, Poll};

use dspex_bridge::RequestEvent;
use dspex_protocol::Value;
use futures::Stream;
use futures::future::BoxFuture;
use tokio::sync::mpsc;

use crate::error::Result;
use crate::program::Prediction;

/// A piece of an output field, as the LM wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The output field.
    pub field: String,
    /// The text added to it.
    pub text: String,
}

/// What a [`PredictionStream`] yields.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// A piece of an output field.
    Chunk(Chunk),
    /// The finished prediction: always the last item of a stream that
    /// succeeded.
    Prediction(Prediction),
}

/// The stream of [`crate::Dspex::execute_stream`]: the chunks of the
/// call's output fields as they arrive, then the [`Prediction`] (or the
/// call's error), then the end.
///
/// Dropping the stream before its end cancels the call: the worker is
/// told (Protocol 2 `cancel`) and frees itself at once.
#[must_use = "a stream does nothing unless polled, and dropping it cancels the call"]
pub struct PredictionStream {
    events: mpsc::UnboundedReceiver<RequestEvent>,
    call: Option<BoxFuture<'static, Result<Prediction>>>,
    done: Option<Result<Prediction>>,
}

impl std::fmt::Debug for PredictionStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PredictionStream")
            .field("running", &self.call.is_some())
            .finish_non_exhaustive()
    }
}

impl PredictionStream {
    pub(crate) fn new(
        events: mpsc::UnboundedReceiver<RequestEvent>,
        call: BoxFuture<'static, Result<Prediction>>,
    ) -> Self {
        Self {
            events,
            call: Some(call),
            done: None,
        }
    }
}

fn chunk(event: RequestEvent) -> Option<Chunk> {
    if event.event != "chunk" {
        return None;
    }
    let text = |key: &str| {
        event
            .data
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    Some(Chunk {
        field: text("field")?,
        text: text("text")?,
    })
}

impl Stream for PredictionStream {
    type Item = Result<StreamEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(call) = &mut this.call
            && let Poll::Ready(result) = call.as_mut().poll(cx)
        {
            this.call = None;
            this.done = Some(result);
        }
        loop {
            // Events sent before the reply are in the channel before the
            // reply reaches the call: once it is done, draining without
            // waiting gets them all.
            let next = if this.call.is_some() {
                match this.events.poll_recv(cx) {
                    Poll::Ready(next) => next,
                    Poll::Pending => return Poll::Pending,
                }
            } else {
                this.events.try_recv().ok()
            };
            match next.map(chunk) {
                Some(Some(chunk)) => return Poll::Ready(Some(Ok(StreamEvent::Chunk(chunk)))),
                Some(None) => {}
                None if this.call.is_some() => {
                    // Every sender is gone, yet the call runs on: wait for it.
                    return match this.call.as_mut().map(|call| call.as_mut().poll(cx)) {
                        Some(Poll::Ready(result)) => {
                            this.call = None;
                            Poll::Ready(Some(result.map(StreamEvent::Prediction)))
                        }
                        _ => Poll::Pending,
                    };
                }
                None => {
                    return Poll::Ready(this.done.take().map(|r| r.map(StreamEvent::Prediction)));
                }
            }
        }
    }
}
