//! [`GuardLayer`]: the shape two layers share — let a call in or refuse it
//! at once, and hear how each admitted call ended. The shutdown
//! [`super::Gate`] counts calls in flight; the [`super::CircuitBreaker`]
//! records outcomes and hands out its half-open probe.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use crate::error::Error;

/// Decides admission to the service it guards.
pub trait Guard: Send + Sync + 'static {
    /// What an admitted call holds until it ends (dropped unreported when
    /// the call's future is dropped).
    type Ticket: Send + 'static;

    /// Whether calls may come at all (checked in `poll_ready`).
    ///
    /// # Errors
    /// The refusal, when no call may come.
    fn ready(&self) -> Result<(), Error> {
        Ok(())
    }

    /// Admits one call, or refuses it at once.
    ///
    /// # Errors
    /// The refusal.
    fn enter(self: &Arc<Self>) -> Result<Self::Ticket, Error>;

    /// The admitted call ended with `result`.
    fn leave<T>(ticket: Self::Ticket, result: &Result<T, Error>);
}

/// Guards a service with `G` (see [`Guard`]).
#[derive(Debug)]
pub struct GuardLayer<G> {
    guard: Arc<G>,
}

impl<G> Clone for GuardLayer<G> {
    fn clone(&self) -> Self {
        Self {
            guard: Arc::clone(&self.guard),
        }
    }
}

impl<G> GuardLayer<G> {
    /// Guards with `guard`.
    pub fn new(guard: Arc<G>) -> Self {
        Self { guard }
    }
}

impl<G, S> Layer<S> for GuardLayer<G> {
    type Service = Guarded<G, S>;

    fn layer(&self, inner: S) -> Guarded<G, S> {
        Guarded {
            guard: Arc::clone(&self.guard),
            inner,
        }
    }
}

/// A service behind a [`Guard`].
#[derive(Debug)]
pub struct Guarded<G, S> {
    guard: Arc<G>,
    inner: S,
}

impl<G, S: Clone> Clone for Guarded<G, S> {
    fn clone(&self) -> Self {
        Self {
            guard: Arc::clone(&self.guard),
            inner: self.inner.clone(),
        }
    }
}

impl<G, S, R> Service<R> for Guarded<G, S>
where
    G: Guard,
    S: Service<R, Error = Error>,
    S::Response: Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if let Err(refused) = self.guard.ready() {
            return Poll::Ready(Err(refused));
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        match self.guard.enter() {
            Ok(ticket) => {
                let future = self.inner.call(request);
                Box::pin(async move {
                    let result = future.await;
                    G::leave(ticket, &result);
                    result
                })
            }
            Err(refused) => Box::pin(std::future::ready(Err(refused))),
        }
    }
}
