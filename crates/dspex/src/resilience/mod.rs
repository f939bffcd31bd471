//! The execute path as layers, in the tower style: each is a
//! [`tower::Layer`] around any [`tower::Service`] of [`ExecuteRequest`]s,
//! tested alone, and [`crate::Dspex`] only composes them.
//!
//! ```text
//! Admission      stop admitting at shutdown; count calls in flight (drain)
//! └ Deadline     one deadline for the whole call, retries included
//!   └ Retry      tower's Retry: only calls that may be retried, within a
//!                budget (≈ 20 % of requests), decorrelated jitter
//!     └ Breaker  refuse at once while open; the half-open probe is released
//!                when its future is dropped
//!       └ LoadShed + ConcurrencyLimit (tower's): refuse at once when the
//!                handle's `max_in_flight` calls run, or the adapter has no
//!                room (its readiness, `poll_ready`)
//!         └ the adapter (mock, bridge mock, Python pool)
//! ```
//!
//! Refusals — a full queue, no worker free in time, an open circuit, a pool
//! that is failed or shutting down — are never retried inside: they return
//! at once with [`crate::Error::suggested_delay`], and the caller decides.

mod admission;
mod breaker;
mod deadline;
mod guard;
mod retry;

pub use admission::{Admission, AdmissionLayer, Gate, InFlight};
pub use breaker::{
    Breaker, BreakerConfig, BreakerLayer, BreakerState, BreakerStatus, CircuitBreaker, Permit,
};
pub use deadline::{Deadline, DeadlineLayer};
pub use guard::{Guard, GuardLayer, Guarded};
pub use retry::{RetryBudget, RetryLayer, RetryPolicy, Retrying};

use std::sync::Arc;
use std::time::Duration;

use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceBuilder};

use crate::adapter::{AdapterService, ExecuteRequest, Executed};
use crate::error::{Error, OVERLOADED_RETRY_AFTER};

/// The composed execute path.
pub(crate) type ExecuteStack = BoxCloneSyncService<ExecuteRequest, Executed, Error>;

/// What the stack is built from.
pub(crate) struct StackParts {
    pub(crate) gate: Arc<Gate>,
    pub(crate) default_timeout: Duration,
    pub(crate) retry: Retrying,
    pub(crate) breaker: Arc<CircuitBreaker>,
    pub(crate) max_in_flight: Option<usize>,
}

/// Composes the layers around `adapter` (see the module docs).
pub(crate) fn stack(parts: StackParts, adapter: AdapterService) -> ExecuteStack {
    let limited = ServiceBuilder::new()
        .map_err(load_shed_error)
        .load_shed()
        .option_layer(
            parts
                .max_in_flight
                .map(tower::limit::ConcurrencyLimitLayer::new),
        )
        .service(adapter);
    let service = ServiceBuilder::new()
        .layer(AdmissionLayer::new(parts.gate))
        .layer(DeadlineLayer::new(parts.default_timeout))
        .layer(RetryLayer::new(parts.retry))
        .layer(BreakerLayer::new(parts.breaker))
        .service(limited);
    BoxCloneSyncService::new(service)
}

/// Turns what tower's load shedding and limits produce back into [`Error`].
fn load_shed_error(error: BoxError) -> Error {
    match error.downcast::<Error>() {
        Ok(error) => *error,
        Err(other) if other.is::<tower::load_shed::error::Overloaded>() => Error::Overloaded {
            message: "too many calls in flight on this handle, or no room in the adapter's queue"
                .into(),
            retry_after: OVERLOADED_RETRY_AFTER,
        },
        Err(other) => Error::Unavailable {
            cause: other.to_string(),
            retry_after: None,
        },
    }
}
