//! Calls that report as they go: [`PredictionStream`] (a call's output
//! fields as they are written, then its [`Prediction`]) and [`Job`] (an
//! evaluation or an optimization: its progress, then its result). Both
//! rest on one core, [`Reporting`]: the events a request sends before its
//! reply, then the reply.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};

use dspex_bridge::RequestEvent;
use dspex_protocol::Value;
use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::program::Prediction;

/// A request's events as they arrive, then its result.
struct Reporting<T> {
    events: mpsc::UnboundedReceiver<RequestEvent>,
    call: Option<BoxFuture<'static, Result<T>>>,
    done: Option<Result<T>>,
}

/// What [`Reporting`] yields.
enum Step<T> {
    Event(RequestEvent),
    Done(Result<T>),
}

impl<T> Reporting<T> {
    fn new(
        events: mpsc::UnboundedReceiver<RequestEvent>,
        call: BoxFuture<'static, Result<T>>,
    ) -> Self {
        Self {
            events,
            call: Some(call),
            done: None,
        }
    }

    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Option<Step<T>>> {
        if let Some(call) = &mut self.call
            && let Poll::Ready(result) = call.as_mut().poll(cx)
        {
            self.call = None;
            self.done = Some(result);
        }
        // Events sent before the reply are in the channel before the reply
        // reaches the call: once it is done, draining without waiting gets
        // them all.
        let next = if self.call.is_some() {
            match self.events.poll_recv(cx) {
                Poll::Ready(next) => next,
                Poll::Pending => return Poll::Pending,
            }
        } else {
            self.events.try_recv().ok()
        };
        match next {
            Some(event) => Poll::Ready(Some(Step::Event(event))),
            None if self.call.is_some() => {
                // Every sender is gone, yet the call runs on: wait for it.
                match self.call.as_mut().map(|call| call.as_mut().poll(cx)) {
                    Some(Poll::Ready(result)) => {
                        self.call = None;
                        Poll::Ready(Some(Step::Done(result)))
                    }
                    _ => Poll::Pending,
                }
            }
            None => Poll::Ready(self.done.take().map(Step::Done)),
        }
    }
}

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
pub struct PredictionStream(Reporting<Prediction>);

impl std::fmt::Debug for PredictionStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PredictionStream")
            .field("running", &self.0.call.is_some())
            .finish_non_exhaustive()
    }
}

impl PredictionStream {
    pub(crate) fn new(
        events: mpsc::UnboundedReceiver<RequestEvent>,
        call: BoxFuture<'static, Result<Prediction>>,
    ) -> Self {
        Self(Reporting::new(events, call))
    }
}

fn chunk(event: &RequestEvent) -> Option<Chunk> {
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
        loop {
            return match self.0.poll_step(cx) {
                Poll::Ready(Some(Step::Event(event))) => match chunk(&event) {
                    Some(chunk) => Poll::Ready(Some(Ok(StreamEvent::Chunk(chunk)))),
                    None => continue,
                },
                Poll::Ready(Some(Step::Done(result))) => {
                    Poll::Ready(Some(result.map(StreamEvent::Prediction)))
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

/// How far a [`Job`] has come, as its worker reports it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Steps done (examples scored, trials run).
    pub done: Option<u64>,
    /// Steps in all, when known.
    pub total: Option<u64>,
    /// The score so far: an evaluation's running score, an optimization's
    /// best (DSPy's percentage or the metric's scale, as DSPy reports it).
    pub score: Option<f64>,
    /// What the job is doing, in words.
    pub message: Option<String>,
}

impl Progress {
    fn from_event(event: &RequestEvent) -> Option<Self> {
        if event.event != "progress" {
            return None;
        }
        let data = &event.data;
        Some(Self {
            done: data.get("done").and_then(Value::as_u64),
            total: data.get("total").and_then(Value::as_u64),
            score: data
                .get("best_score")
                .or_else(|| data.get("score"))
                .and_then(Value::as_f64),
            message: data
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }
}

/// What a [`Job`] yields.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEvent<T> {
    /// How far it has come.
    Progress(Progress),
    /// Its result: always the last item of a job that succeeded.
    Done(T),
}

/// A long call — an evaluation ([`crate::Dspex::evaluate`]) or an
/// optimization ([`crate::Dspex::optimize`]) — that reports its progress.
///
/// Poll it as a [`Stream`] of [`JobEvent`]s, or `.await` it for the result
/// alone. [`Job::canceller`] ends it from elsewhere (the job then ends with
/// [`Error::Cancelled`]); dropping it ends it too. Either way the worker is
/// told at once (Protocol 2 `cancel`) and nothing is stored.
#[must_use = "a job does nothing unless polled or awaited, and dropping it cancels it"]
pub struct Job<T> {
    inner: Reporting<T>,
    cancel: CancellationToken,
}

impl<T> std::fmt::Debug for Job<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("running", &self.inner.call.is_some())
            .field("cancelled", &self.cancel.is_cancelled())
            .finish_non_exhaustive()
    }
}

/// Cancels a [`Job`] from anywhere. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Canceller(CancellationToken);

impl Canceller {
    /// Cancels the job (nothing happens if it has ended).
    pub fn cancel(&self) {
        self.0.cancel();
    }
}

impl<T: Send + 'static> Job<T> {
    pub(crate) fn new(
        events: mpsc::UnboundedReceiver<RequestEvent>,
        call: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Self {
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        let call = async move {
            tokio::select! {
                result = call => result,
                () = token.cancelled() => Err(Error::Cancelled),
            }
        };
        Self {
            inner: Reporting::new(events, call.boxed()),
            cancel,
        }
    }

    /// What cancels this job from elsewhere.
    pub fn canceller(&self) -> Canceller {
        Canceller(self.cancel.clone())
    }
}

impl<T: Unpin> Stream for Job<T> {
    type Item = Result<JobEvent<T>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            return match self.inner.poll_step(cx) {
                Poll::Ready(Some(Step::Event(event))) => match Progress::from_event(&event) {
                    Some(progress) => Poll::Ready(Some(Ok(JobEvent::Progress(progress)))),
                    None => continue,
                },
                Poll::Ready(Some(Step::Done(result))) => {
                    Poll::Ready(Some(result.map(JobEvent::Done)))
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

impl<T: Send + Unpin + 'static> IntoFuture for Job<T> {
    type Output = Result<T>;
    type IntoFuture = BoxFuture<'static, Result<T>>;

    /// The job's result, its progress ignored.
    ///
    /// Cancel safety: dropping the future cancels the job.
    fn into_future(mut self) -> Self::IntoFuture {
        async move {
            while let Some(event) = self.next().await {
                if let JobEvent::Done(result) = event? {
                    return Ok(result);
                }
            }
            Err(Error::Protocol {
                message: "the job ended without a result".into(),
            })
        }
        .boxed()
    }
}
