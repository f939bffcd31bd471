//! Retries: [`RetryPolicy`] (how many, how far apart) and [`Retrying`],
//! the [`tower::retry::Policy`] that applies it with a [`RetryBudget`].
//!
//! A call is tried again only when [`Error::may_retry`] says so — a failure
//! of the machinery, never a refusal ("not now" is the caller's to act on),
//! never past the deadline, and after a failure that may have run the
//! request only for a call marked idempotent — and only while the budget
//! allows: retries stay under a fraction of the requests (tower's
//! [`TpsBudget`]), so a failing dependency is never hit by a multiple of
//! the load it already cannot take. Delays use decorrelated jitter
//! (`random(base, previous × 3)`, capped), at least what the error
//! suggests, and never run past the call's deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::RngExt;
use tokio::time::Instant;
use tower::retry::budget::{Budget, TpsBudget};

pub use tower::retry::RetryLayer;

use crate::adapter::{ExecuteRequest, Executed};
use crate::error::Error;

/// When and how to retry a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1: no retry).
    pub max_attempts: u32,
    /// The smallest delay.
    pub base: Duration,
    /// The largest delay.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base: Duration::from_millis(50),
            cap: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// Never retry.
    pub const NONE: Self = Self {
        max_attempts: 1,
        base: Duration::ZERO,
        cap: Duration::ZERO,
    };

    /// The delay after one of `previous` (decorrelated jitter), at least
    /// what the error suggests, at most the cap.
    pub fn next_delay(&self, previous: Duration, error: &Error) -> Duration {
        let low = self.base;
        let high = (previous * 3).max(low);
        let jittered = if high > low {
            rand::rng().random_range(low..=high)
        } else {
            low
        };
        jittered
            .max(error.suggested_delay().unwrap_or_default().min(self.cap))
            .min(self.cap)
    }

    /// Whether attempt `attempt` (1-based) that failed with `error` may be
    /// tried again under this policy (the budget and the deadline aside):
    /// see [`Error::may_retry`].
    pub fn should_retry(&self, attempt: u32, error: &Error, idempotent: bool) -> bool {
        attempt < self.max_attempts && error.may_retry(idempotent)
    }
}

/// How many retries the execute path may make, as a share of its requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    /// Retries allowed per request, on average (0.2: at most about one
    /// retry for every five requests).
    pub ratio: f32,
    /// Retries allowed per second whatever the traffic, so a quiet service
    /// still retries its occasional failure.
    pub min_per_sec: u32,
    /// How long a request counts toward the budget.
    pub window: Duration,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_sec: 10,
            window: Duration::from_secs(10),
        }
    }
}

#[derive(Debug)]
struct Shared {
    default: RetryPolicy,
    budget: TpsBudget,
    retries: AtomicU64,
    denied: AtomicU64,
}

/// The retry policy of the execute path, as a [`tower::retry::Policy`]:
/// one per call (tower clones it), sharing the budget and the counters.
#[derive(Debug, Clone)]
pub struct Retrying {
    shared: Arc<Shared>,
    previous: Duration,
}

impl Retrying {
    /// Retries by `default` (a call may bring its own policy) within `budget`.
    pub fn new(default: RetryPolicy, budget: RetryBudget) -> Self {
        let budget = TpsBudget::new(
            budget.window,
            budget.min_per_sec,
            budget.ratio.clamp(0.0, 1000.0),
        );
        Self {
            previous: default.base,
            shared: Arc::new(Shared {
                default,
                budget,
                retries: AtomicU64::new(0),
                denied: AtomicU64::new(0),
            }),
        }
    }

    /// Retries made so far.
    pub fn retries(&self) -> u64 {
        self.shared.retries.load(Ordering::Relaxed)
    }

    /// Retries the policy allowed but the budget refused.
    pub fn denied(&self) -> u64 {
        self.shared.denied.load(Ordering::Relaxed)
    }
}

impl tower::retry::Policy<ExecuteRequest, Executed, Error> for Retrying {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        request: &mut ExecuteRequest,
        result: &mut Result<Executed, Error>,
    ) -> Option<Self::Future> {
        let shared = &self.shared;
        if request.attempt == 1 {
            shared.budget.deposit();
        }
        let Err(error) = result else {
            return None;
        };
        let policy = request.retry.unwrap_or(shared.default);
        if !policy.should_retry(request.attempt, error, request.idempotent) {
            return None;
        }
        let delay = policy.next_delay(self.previous, error);
        if request
            .deadline
            .is_some_and(|deadline| Instant::now() + delay >= deadline)
        {
            return None;
        }
        if !shared.budget.withdraw() {
            shared.denied.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(attempt = request.attempt, %error, "retry budget exhausted; not retrying");
            return None;
        }
        tracing::debug!(attempt = request.attempt, ?delay, %error, "retrying");
        shared.retries.fetch_add(1, Ordering::Relaxed);
        self.previous = delay;
        request.attempt += 1;
        Some(tokio::time::sleep(delay))
    }

    fn clone_request(&mut self, request: &ExecuteRequest) -> Option<ExecuteRequest> {
        Some(request.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Deadline;
    use dspex_bridge::process::Exit;
    use std::sync::atomic::AtomicU32;
    use tower::{Layer, ServiceExt};

    fn crash() -> Error {
        Error::WorkerCrashed {
            pid: 0,
            exit: Exit::Signal(9),
            stderr_tail: String::new(),
        }
    }

    const FAST: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        base: Duration::from_millis(1),
        cap: Duration::from_millis(2),
    };

    #[test]
    fn delays_grow_with_jitter_and_stay_capped() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base: Duration::from_millis(10),
            cap: Duration::from_millis(500),
        };
        let error = Error::validation("x", None, "y"); // suggests nothing
        let mut delay = policy.base;
        for _ in 0..50 {
            let next = policy.next_delay(delay, &error);
            assert!(next >= policy.base && next <= policy.cap, "{next:?}");
            assert!(next <= (delay * 3).max(policy.base));
            delay = next;
        }
    }

    #[test]
    fn only_machinery_failures_are_retried_and_never_refusals() {
        let policy = RetryPolicy::default();
        let queued = Error::Timeout {
            deadline: Deadline::Checkout,
            after: Duration::from_secs(1),
        };
        assert!(!policy.should_retry(1, &queued, true), "a refusal");
        let full = Error::Overloaded {
            message: "full".into(),
            retry_after: Duration::from_millis(100),
        };
        assert!(!policy.should_retry(1, &full, true), "a refusal");
        assert!(
            !policy.should_retry(1, &crash(), false),
            "a crash may have run it"
        );
        assert!(policy.should_retry(1, &crash(), true));
        assert!(
            !policy.should_retry(3, &crash(), true),
            "attempts are bounded"
        );
        let invalid = Error::validation("input", Some("q".into()), "missing");
        assert!(!policy.should_retry(1, &invalid, true));
        let late = Error::Timeout {
            deadline: Deadline::Request,
            after: Duration::from_secs(1),
        };
        assert!(
            !policy.should_retry(1, &late, true),
            "the deadline is spent"
        );
    }

    type Failing = tower::util::BoxCloneService<ExecuteRequest, Executed, Error>;

    /// A service failing every call with `error`, counting the calls.
    fn failing(error: Error) -> (Failing, Arc<AtomicU32>) {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&calls);
        let service = tower::service_fn(move |_request: ExecuteRequest| {
            counter.fetch_add(1, Ordering::SeqCst);
            let error = error.clone();
            async move { Err::<Executed, _>(error) }
        });
        (tower::util::BoxCloneService::new(service), calls)
    }

    #[tokio::test]
    async fn retries_follow_the_policy_and_count() {
        let retrying = Retrying::new(FAST, RetryBudget::default());
        let (service, calls) = failing(crash());
        let service = RetryLayer::new(retrying.clone()).layer(service);
        let request = ExecuteRequest::test().idempotent();
        assert!(service.clone().oneshot(request).await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(retrying.retries(), 2);
        let (service, calls) = failing(crash());
        let service = RetryLayer::new(retrying.clone()).layer(service);
        assert!(service.oneshot(ExecuteRequest::test()).await.is_err());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "not idempotent: not retried"
        );
    }

    #[tokio::test]
    async fn the_budget_keeps_retries_to_a_fifth_of_the_requests() {
        let budget = RetryBudget {
            ratio: 0.2,
            min_per_sec: 0,
            window: Duration::from_secs(60),
        };
        let retrying = Retrying::new(FAST, budget);
        let (service, calls) = failing(crash());
        let service = RetryLayer::new(retrying.clone()).layer(service);
        for _ in 0..500 {
            let _ = service
                .clone()
                .oneshot(ExecuteRequest::test().idempotent())
                .await;
        }
        let attempts = calls.load(Ordering::SeqCst);
        assert!(attempts <= 600, "{attempts} attempts for 500 requests");
        assert!(retrying.retries() > 0 && retrying.denied() > 0);
    }

    #[tokio::test]
    async fn no_retry_runs_past_the_deadline() {
        let slow = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(200),
            cap: Duration::from_millis(200),
        };
        let retrying = Retrying::new(slow, RetryBudget::default());
        let (service, calls) = failing(crash());
        let service = RetryLayer::new(retrying).layer(service);
        let mut request = ExecuteRequest::test().idempotent();
        request.deadline = Some(Instant::now() + Duration::from_millis(50));
        assert!(service.oneshot(request).await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
