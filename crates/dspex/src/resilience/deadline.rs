//! [`DeadlineLayer`]: one deadline for the whole call.
//!
//! The deadline is fixed when the call enters (its timeout, or the
//! default) and travels with the request, so every layer below and every
//! attempt works against the same instant: a retry gets what is left, the
//! pool waits for a worker no longer than that, and the worker is told the
//! rest (it answers `DeadlineExceeded` by then on its own). This layer is
//! the backstop: if nothing below has answered a moment after the deadline,
//! the call ends with [`Error::Timeout`] and the work below is dropped
//! (which is cancel safe all the way down).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::{Layer, Service};

use crate::adapter::ExecuteRequest;
use crate::error::{Deadline as Which, Error};

/// How long after the deadline the backstop fires: the layers below report
/// their own, more precise error (a checkout timeout, the worker's
/// `DeadlineExceeded`) first.
const BACKSTOP: Duration = Duration::from_millis(10);

/// The layer of [`Deadline`].
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    default: Duration,
}

impl DeadlineLayer {
    /// Calls without a timeout of their own get `default`.
    pub fn new(default: Duration) -> Self {
        Self { default }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            default: self.default,
            inner,
        }
    }
}

/// Fixes each call's deadline and enforces it (see the module docs).
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    default: Duration,
    inner: S,
}

impl<S> Service<ExecuteRequest> for Deadline<S>
where
    S: Service<ExecuteRequest, Error = Error>,
    S::Response: Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: ExecuteRequest) -> Self::Future {
        let total = request.timeout.unwrap_or(self.default);
        let deadline = *request.deadline.get_or_insert(Instant::now() + total);
        let future = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout_at(deadline + BACKSTOP, future).await {
                Ok(result) => result,
                Err(_) => Err(Error::Timeout {
                    deadline: Which::Request,
                    after: total,
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapter::Executed;
    use tower::ServiceExt;

    #[tokio::test(start_paused = true)]
    async fn the_deadline_is_fixed_once_and_enforced() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let record = std::sync::Arc::clone(&seen);
        let service = DeadlineLayer::new(Duration::from_secs(30)).layer(tower::service_fn(
            move |request: ExecuteRequest| {
                *record.lock().unwrap() = request.deadline;
                async move {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok::<_, Error>(Executed::default())
                }
            },
        ));
        let start = Instant::now();
        let request = ExecuteRequest::test().timeout(Duration::from_millis(150));
        let error = service.oneshot(request).await.unwrap_err();
        assert!(matches!(
            error,
            Error::Timeout { deadline: Which::Request, after } if after == Duration::from_millis(150)
        ));
        assert_eq!(start.elapsed(), Duration::from_millis(160));
        assert_eq!(
            *seen.lock().unwrap(),
            Some(start + Duration::from_millis(150)),
            "the layers below see the deadline"
        );
    }
}
