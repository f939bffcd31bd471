//! Resilience on the execute path: retries with backoff and a circuit
//! breaker.
//!
//! - [`RetryPolicy`]: exponential backoff with decorrelated jitter
//!   (`delay = random(base, previous × 3)`, capped), only for retryable
//!   errors, and for calls that may have run (a crash mid-request) only when
//!   the call is marked idempotent. Errors that guarantee the request never
//!   ran (a checkout timeout, a full queue) are always safe to retry.
//! - [`CircuitBreaker`]: after `failure_threshold` consecutive machinery
//!   failures (crashes, protocol errors, request timeouts, LM failures) it
//!   opens and refuses calls at once for `cooldown`, then lets one probe
//!   through (half-open); the probe's success closes it. It is a handful of
//!   atomics: calls never queue behind it.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::RngExt;

use crate::error::{Deadline, Error};

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
    /// tried again.
    pub fn should_retry(&self, attempt: u32, error: &Error, idempotent: bool) -> bool {
        attempt < self.max_attempts && error.is_retryable() && (idempotent || error.never_ran())
    }
}

/// Settings of a [`CircuitBreaker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit (0: never open).
    pub failure_threshold: u32,
    /// How long it stays open before a probe is let through.
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            cooldown: Duration::from_secs(5),
        }
    }
}

/// The circuit's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls are refused until the cooldown ends.
    Open,
    /// One probe call is allowed through.
    HalfOpen,
}

/// A snapshot of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerStatus {
    /// Its position.
    pub state: BreakerState,
    /// Consecutive failures counted.
    pub consecutive_failures: u32,
    /// Times it opened.
    pub trips: u64,
    /// Calls it refused.
    pub rejected: u64,
}

/// A lock-free circuit breaker. See the module docs.
#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    epoch: Instant,
    failures: AtomicU32,
    /// Milliseconds since `epoch` + 1 when it opened; 0 while closed.
    opened_at: AtomicU64,
    probing: AtomicBool,
    trips: AtomicU64,
    rejected: AtomicU64,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            epoch: Instant::now(),
            failures: AtomicU32::new(0),
            opened_at: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            trips: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
    }

    /// Lets a call through, or refuses it while open.
    ///
    /// # Errors
    /// [`Error::Unavailable`] (transient) while the circuit is open.
    pub fn allow(&self) -> Result<(), Error> {
        let opened = self.opened_at.load(Ordering::Acquire);
        if opened == 0 {
            return Ok(());
        }
        let cooldown = u64::try_from(self.config.cooldown.as_millis()).unwrap_or(u64::MAX);
        let elapsed = self.now_ms().saturating_sub(opened);
        if elapsed >= cooldown
            && self
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            return Ok(());
        }
        self.rejected.fetch_add(1, Ordering::Relaxed);
        Err(Error::Unavailable {
            cause: format!(
                "circuit open after {} consecutive failures; retry in {:?}",
                self.config.failure_threshold,
                Duration::from_millis(cooldown.saturating_sub(elapsed))
            ),
            transient: true,
        })
    }

    /// Records a success: the circuit closes.
    pub fn on_success(&self) {
        self.failures.store(0, Ordering::Release);
        self.opened_at.store(0, Ordering::Release);
        self.probing.store(false, Ordering::Release);
    }

    /// Records a failure; only failures of the machinery count.
    pub fn on_failure(&self, error: &Error) {
        let counts = matches!(
            error,
            Error::WorkerCrashed { .. }
                | Error::Protocol { .. }
                | Error::Timeout {
                    deadline: Deadline::Request,
                    ..
                }
                | Error::Lm {
                    configured: true,
                    ..
                }
        );
        if !counts {
            if self.probing.swap(false, Ordering::AcqRel) {
                // The probe reached a worker and failed for its own reasons:
                // the machinery works.
                self.on_success();
            }
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let threshold = self.config.failure_threshold;
        let probe_failed = self.probing.swap(false, Ordering::AcqRel);
        if threshold > 0 && (failures >= threshold || probe_failed) {
            let was = self.opened_at.swap(self.now_ms(), Ordering::AcqRel);
            if was == 0 {
                self.trips.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(failures, "circuit breaker opened");
            }
        }
    }

    /// A snapshot.
    pub fn status(&self) -> BreakerStatus {
        let opened = self.opened_at.load(Ordering::Acquire);
        let cooldown = u64::try_from(self.config.cooldown.as_millis()).unwrap_or(u64::MAX);
        let state = if opened == 0 {
            BreakerState::Closed
        } else if self.now_ms().saturating_sub(opened) >= cooldown {
            BreakerState::HalfOpen
        } else {
            BreakerState::Open
        };
        BreakerStatus {
            state,
            consecutive_failures: self.failures.load(Ordering::Relaxed),
            trips: self.trips.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dspex_bridge::process::Exit;

    fn crash() -> Error {
        Error::WorkerCrashed {
            exit: Exit::Signal(9),
            stderr_tail: String::new(),
        }
    }

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
    fn only_safe_or_idempotent_retryable_errors_are_retried() {
        let policy = RetryPolicy::default();
        let queued = Error::Timeout {
            deadline: Deadline::Checkout,
            after: Duration::from_secs(1),
        };
        assert!(policy.should_retry(1, &queued, false));
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
    }

    #[test]
    fn the_breaker_opens_refuses_probes_and_closes() {
        let breaker = CircuitBreaker::new(BreakerConfig {
            failure_threshold: 3,
            cooldown: Duration::ZERO,
        });
        for _ in 0..2 {
            breaker.on_failure(&crash());
        }
        assert_eq!(breaker.status().state, BreakerState::Closed);
        breaker.on_failure(&crash());
        assert_eq!(breaker.status().trips, 1);
        // Cooldown zero: one probe is let through, the next is refused.
        assert!(breaker.allow().is_ok());
        assert!(breaker.allow().is_err());
        assert_eq!(breaker.status().rejected, 1);
        // The probe fails: open again; then a probe succeeds: closed.
        breaker.on_failure(&crash());
        assert!(breaker.allow().is_ok());
        breaker.on_success();
        assert_eq!(breaker.status().state, BreakerState::Closed);
        assert!(breaker.allow().is_ok() && breaker.allow().is_ok());
    }

    #[test]
    fn caller_errors_do_not_count() {
        let breaker = CircuitBreaker::new(BreakerConfig {
            failure_threshold: 1,
            cooldown: Duration::from_secs(60),
        });
        breaker.on_failure(&Error::validation("input", None, "bad"));
        assert_eq!(breaker.status().state, BreakerState::Closed);
        breaker.on_failure(&crash());
        assert_eq!(breaker.status().state, BreakerState::Open);
        assert!(matches!(
            breaker.allow(),
            Err(Error::Unavailable {
                transient: true,
                ..
            })
        ));
    }
}
