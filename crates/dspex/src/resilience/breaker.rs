//! The circuit breaker: [`CircuitBreaker`] (a handful of atomics) and its
//! [`BreakerLayer`].
//!
//! After `failure_threshold` consecutive failures that say the machinery is
//! broken ([`Error::indicates_broken_worker`]: crashes, protocol
//! violations — never a structured error reply, a slow LM or a refusal;
//! the calls of one dead worker, which fail together, count once) it
//! opens and refuses calls at once for `cooldown`, with the time left as the
//! error's suggested delay; then it lets one probe through (half-open). The
//! probe's success closes it; its failure opens it again. A probe is a
//! [`Permit`]: if its future is dropped before it reports (a client gone, a
//! `tokio::time::timeout` around the call), the permit is released and the
//! next call probes instead, so the breaker can never wedge open.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::guard::{Guard, GuardLayer, Guarded};
use crate::error::Error;

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
    /// The pid of the dead worker whose failure was counted last.
    last_incident: AtomicU64,
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
            last_incident: AtomicU64::new(0),
            opened_at: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            trips: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
    }

    /// Lets a call through — its [`Permit`] records the outcome — or
    /// refuses it at once while open.
    ///
    /// # Errors
    /// [`Error::Unavailable`] while the circuit is open, suggesting the time
    /// left until a probe is let through.
    pub fn acquire(self: &Arc<Self>) -> Result<Permit, Error> {
        let opened = self.opened_at.load(Ordering::Acquire);
        if opened == 0 {
            return Ok(Permit::new(self, false));
        }
        let cooldown = u64::try_from(self.config.cooldown.as_millis()).unwrap_or(u64::MAX);
        let elapsed = self.now_ms().saturating_sub(opened);
        if elapsed >= cooldown
            && self
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            return Ok(Permit::new(self, true));
        }
        self.rejected.fetch_add(1, Ordering::Relaxed);
        let left = Duration::from_millis(cooldown.saturating_sub(elapsed));
        Err(Error::Unavailable {
            cause: format!(
                "circuit open after {} consecutive failures; retry in {left:?}",
                self.config.failure_threshold,
            ),
            // A probe may be in flight already: come back after the
            // cool-down, or a moment later.
            retry_after: Some(left.max(Duration::from_millis(10))),
        })
    }

    /// Records a success: the circuit closes.
    fn on_success(&self) {
        self.failures.store(0, Ordering::Release);
        self.opened_at.store(0, Ordering::Release);
        self.probing.store(false, Ordering::Release);
    }

    /// Records a failure; only failures of the machinery count.
    fn on_failure(&self, error: &Error) {
        if error.is_refusal() {
            // Nothing ran: no news about the machinery (and a refused probe
            // leaves the probe to the next call).
            self.probing.store(false, Ordering::Release);
            return;
        }
        if !error.indicates_broken_worker() {
            if self.probing.swap(false, Ordering::AcqRel) {
                // The probe reached a worker and failed for its own reasons:
                // the machinery works.
                self.on_success();
            }
            return;
        }
        let probe_failed = self.probing.swap(false, Ordering::AcqRel);
        // The calls one dead worker was serving fail together: one incident,
        // counted once (a worker serves many calls at once).
        let incident = match error {
            Error::WorkerCrashed { pid, .. } if *pid != 0 => u64::from(*pid),
            _ => 0,
        };
        if incident != 0
            && !probe_failed
            && self.last_incident.swap(incident, Ordering::AcqRel) == incident
        {
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let threshold = self.config.failure_threshold;
        if threshold > 0 && (failures >= threshold || probe_failed) {
            let was = self.opened_at.swap(self.now_ms(), Ordering::AcqRel);
            if was == 0 {
                self.trips.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(failures, "circuit breaker opened");
            }
        }
    }

    /// The outcome of a call let through.
    fn record(&self, outcome: Result<(), &Error>) {
        match outcome {
            Ok(()) => self.on_success(),
            Err(error) => self.on_failure(error),
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

/// A call the breaker let through. [`Permit::record`] reports its outcome;
/// dropped unrecorded (its future was dropped), a probe is released so the
/// next call probes.
#[derive(Debug)]
pub struct Permit {
    breaker: Arc<CircuitBreaker>,
    probe: bool,
    recorded: bool,
}

impl Permit {
    fn new(breaker: &Arc<CircuitBreaker>, probe: bool) -> Self {
        Self {
            breaker: Arc::clone(breaker),
            probe,
            recorded: false,
        }
    }

    /// Whether this call is the half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Reports the call's outcome.
    pub fn record<T>(mut self, result: &Result<T, Error>) {
        self.recorded = true;
        self.breaker.record(result.as_ref().map(|_| ()));
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.probe && !self.recorded {
            self.breaker.probing.store(false, Ordering::Release);
        }
    }
}

/// The breaker as a [`Guard`]: refuses at once while open, records the
/// outcome of each call let through.
impl Guard for CircuitBreaker {
    type Ticket = Permit;

    fn enter(self: &Arc<Self>) -> Result<Permit, Error> {
        self.acquire()
    }

    fn leave<T>(permit: Permit, result: &Result<T, Error>) {
        permit.record(result);
    }
}

/// The layer of [`Breaker`].
pub type BreakerLayer = GuardLayer<CircuitBreaker>;

/// Refuses calls at once while its circuit is open; records the outcome of
/// the others.
pub type Breaker<S> = Guarded<CircuitBreaker, S>;

#[cfg(test)]
mod tests {
    use super::*;
    use dspex_bridge::process::Exit;
    use tower::{Layer, ServiceExt};

    fn crash() -> Error {
        Error::WorkerCrashed {
            pid: 0,
            exit: Exit::Signal(9),
            stderr_tail: String::new(),
        }
    }

    fn breaker(threshold: u32, cooldown: Duration) -> Arc<CircuitBreaker> {
        Arc::new(CircuitBreaker::new(BreakerConfig {
            failure_threshold: threshold,
            cooldown,
        }))
    }

    #[test]
    fn the_breaker_opens_refuses_probes_and_closes() {
        let breaker = breaker(3, Duration::ZERO);
        for _ in 0..2 {
            breaker.acquire().unwrap().record::<()>(&Err(crash()));
        }
        assert_eq!(breaker.status().state, BreakerState::Closed);
        breaker.acquire().unwrap().record::<()>(&Err(crash()));
        assert_eq!(breaker.status().trips, 1);
        // Cooldown zero: one probe is let through, the next is refused.
        let probe = breaker.acquire().unwrap();
        assert!(probe.is_probe());
        let refused = breaker.acquire().unwrap_err();
        assert!(refused.is_refusal() && refused.suggested_delay().is_some());
        assert_eq!(breaker.status().rejected, 1);
        // The probe fails: open again; then a probe succeeds: closed.
        probe.record::<()>(&Err(crash()));
        breaker.acquire().unwrap().record(&Ok(()));
        assert_eq!(breaker.status().state, BreakerState::Closed);
        assert!(breaker.acquire().is_ok() && breaker.acquire().is_ok());
    }

    #[test]
    fn a_dropped_probe_does_not_wedge_the_breaker() {
        let breaker = breaker(1, Duration::ZERO);
        breaker.acquire().unwrap().record::<()>(&Err(crash()));
        let probe = breaker.acquire().unwrap();
        assert!(breaker.acquire().is_err(), "one probe at a time");
        drop(probe); // its future was dropped: no outcome
        let next = breaker.acquire().expect("the next call probes again");
        assert!(next.is_probe());
        next.record(&Ok(()));
        assert_eq!(breaker.status().state, BreakerState::Closed);
    }

    #[test]
    fn the_calls_of_one_dead_worker_count_as_one_failure() {
        let breaker = breaker(3, Duration::from_secs(60));
        let crash_of = |pid| Error::WorkerCrashed {
            pid,
            exit: Exit::Signal(9),
            stderr_tail: String::new(),
        };
        // Sixteen calls in flight on worker 41 when it died.
        for _ in 0..16 {
            breaker.acquire().unwrap().record::<()>(&Err(crash_of(41)));
        }
        assert_eq!(breaker.status().state, BreakerState::Closed);
        assert_eq!(breaker.status().consecutive_failures, 1);
        // Three dead workers in a row are three failures: it opens.
        breaker.acquire().unwrap().record::<()>(&Err(crash_of(42)));
        breaker.acquire().unwrap().record::<()>(&Err(crash_of(43)));
        assert_eq!(breaker.status().state, BreakerState::Open);
    }

    #[test]
    fn only_a_broken_worker_counts() {
        let breaker = breaker(1, Duration::from_secs(60));
        for error in [
            Error::validation("input", None, "bad"),
            Error::Timeout {
                deadline: crate::Deadline::Request,
                after: Duration::from_millis(150),
            },
            Error::Lm {
                message: "rate limited".into(),
                configured: true,
            },
            Error::Python {
                kind: dspex_protocol::ErrorKind::ProtocolError,
                message: "reply too large".into(),
                traceback: None,
            },
        ] {
            breaker.acquire().unwrap().record::<()>(&Err(error));
            assert_eq!(breaker.status().state, BreakerState::Closed);
        }
        breaker.acquire().unwrap().record::<()>(&Err(crash()));
        assert_eq!(breaker.status().state, BreakerState::Open);
        assert!(matches!(
            breaker.acquire(),
            Err(Error::Unavailable {
                retry_after: Some(_),
                ..
            })
        ));
    }

    #[tokio::test]
    async fn the_layer_refuses_at_once_while_open_and_releases_dropped_probes() {
        let breaker = breaker(1, Duration::ZERO);
        let fail = BreakerLayer::new(Arc::clone(&breaker))
            .layer(tower::service_fn(|(): ()| async { Err::<(), _>(crash()) }));
        assert!(fail.clone().oneshot(()).await.is_err());
        assert_eq!(breaker.status().trips, 1);
        let hang = BreakerLayer::new(Arc::clone(&breaker)).layer(tower::service_fn(|(): ()| {
            std::future::pending::<Result<(), Error>>()
        }));
        // The probe's future is dropped by a timeout around it.
        let dropped = tokio::time::timeout(Duration::from_millis(5), hang.oneshot(())).await;
        assert!(dropped.is_err());
        let ok = BreakerLayer::new(Arc::clone(&breaker))
            .layer(tower::service_fn(|(): ()| async { Ok::<_, Error>(()) }));
        ok.oneshot(())
            .await
            .expect("the next call probes and closes it");
        assert_eq!(breaker.status().state, BreakerState::Closed);
    }
}
