//! Retries, the circuit breaker and error categories on the execute path,
//! driven through the mock adapter's error injection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use dspex::adapter::{MockAdapter, Operation};
use dspex::bridge::process::Exit;
use dspex::resilience::{BreakerState, RetryPolicy};
use dspex::{
    Category, Config, Deadline, Dspex, Error, ExecuteOptions, LmConfig, Module, Signature,
};
use serde_json::json;

const FAST: RetryPolicy = RetryPolicy {
    max_attempts: 3,
    base: Duration::from_millis(1),
    cap: Duration::from_millis(5),
};

/// A mock whose executions fail `failures` times with `error`, then succeed.
async fn flaky(failures: u32, error: Error, config: Config) -> (Dspex, Arc<AtomicU32>) {
    let mock = Arc::new(MockAdapter::new());
    let calls = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&calls);
    mock.inject(move |operation| match operation {
        Operation::Execute(_) => {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            (n < failures).then(|| error.clone())
        }
        _ => None,
    });
    let dspex = Dspex::builder()
        .config(config)
        .with_adapter(mock)
        .lm(LmConfig::dummy())
        .start()
        .await
        .unwrap();
    let signature = Signature::parse("q: str -> a: str").unwrap();
    dspex
        .create_program("p", signature, Module::Predict)
        .await
        .unwrap();
    (dspex, calls)
}

fn crash() -> Error {
    Error::WorkerCrashed {
        pid: 0,
        exit: Exit::Signal(9),
        stderr_tail: String::new(),
    }
}

fn queue_timeout() -> Error {
    Error::Timeout {
        deadline: Deadline::Checkout,
        after: Duration::from_millis(1),
    }
}

fn overloaded() -> Error {
    Error::Overloaded {
        message: "queue full".into(),
        retry_after: Duration::from_millis(100),
    }
}

/// Refusals that say "not now" (no worker in time, a full queue) never ran,
/// and are returned at once with their suggested delay: retrying them
/// inside would multiply the load that caused them.
#[tokio::test]
async fn refusals_are_returned_at_once_never_retried() {
    for refusal in [queue_timeout(), overloaded()] {
        let (dspex, calls) = flaky(1, refusal.clone(), Config::default()).await;
        let started = std::time::Instant::now();
        let error = dspex
            .execute(
                "p",
                json!({"q": "x"}),
                ExecuteOptions::default().retry(FAST).idempotent(),
            )
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "not slept on"
        );
        assert_eq!(error.category(), refusal.category());
        assert!(error.is_refusal() && error.never_ran());
        assert!(error.suggested_delay().is_some(), "{error:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "tried once");
        assert_eq!(dspex.status().retries, 0);
    }
}

#[tokio::test]
async fn a_crash_is_retried_only_when_the_call_is_idempotent() {
    let (dspex, calls) = flaky(1, crash(), Config::default()).await;
    let error = dspex
        .execute(
            "p",
            json!({"q": "x"}),
            ExecuteOptions::default().retry(FAST),
        )
        .await
        .unwrap_err();
    assert_eq!(error.category(), Category::WorkerCrashed);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "not retried: it may have run"
    );

    let prediction = dspex
        .execute(
            "p",
            json!({"q": "x"}),
            ExecuteOptions::default().retry(FAST).idempotent(),
        )
        .await
        .unwrap();
    assert_eq!(prediction.attempts, 1, "the injected failure was used up");
}

#[tokio::test]
async fn retries_stop_at_the_policy_bound_and_never_for_caller_errors() {
    let (dspex, calls) = flaky(10, crash(), Config::default()).await;
    let error = dspex
        .execute(
            "p",
            json!({"q": "x"}),
            ExecuteOptions::default().retry(FAST).idempotent(),
        )
        .await
        .unwrap_err();
    assert_eq!(error.category(), Category::WorkerCrashed);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(dspex.status().retries, 2);

    let python_error = Error::Python {
        kind: dspex::protocol::ErrorKind::PythonException,
        message: "KeyError".into(),
        traceback: Some("Traceback".into()),
    };
    let (dspex, calls) = flaky(10, python_error, Config::default()).await;
    let error = dspex
        .execute(
            "p",
            json!({"q": "x"}),
            ExecuteOptions::default().retry(FAST).idempotent(),
        )
        .await
        .unwrap_err();
    assert_eq!(error.category(), Category::Python);
    assert!(!error.is_retryable());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_breaker_opens_after_repeated_crashes_and_refuses_at_once() {
    let mut config = Config::default();
    config.breaker.failure_threshold = 3;
    config.breaker.cooldown_ms = 60_000;
    let (dspex, calls) = flaky(u32::MAX, crash(), config).await;
    for _ in 0..3 {
        let error = dspex
            .execute(
                "p",
                json!({"q": "x"}),
                ExecuteOptions::default().retry(RetryPolicy::NONE),
            )
            .await
            .unwrap_err();
        assert_eq!(error.category(), Category::WorkerCrashed);
    }
    let status = dspex.status().breaker;
    assert_eq!(status.state, BreakerState::Open);
    assert_eq!(status.trips, 1);
    let refused = dspex
        .execute(
            "p",
            json!({"q": "x"}),
            ExecuteOptions::default().retry(RetryPolicy::NONE),
        )
        .await
        .unwrap_err();
    assert_eq!(refused.category(), Category::Unavailable);
    assert!(refused.is_retryable(), "an open circuit will half-open");
    assert!(refused.is_refusal());
    let delay = refused.suggested_delay().expect("the time until the probe");
    assert!(
        delay <= Duration::from_secs(60) && delay > Duration::from_secs(50),
        "{delay:?}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "the refused call never reached the adapter"
    );
    assert_eq!(dspex.status().breaker.rejected, 1);
}

#[tokio::test]
async fn validation_errors_name_the_field_and_send_nothing() {
    let (dspex, calls) = flaky(0, crash(), Config::default()).await;
    let error = dspex
        .execute("p", json!({"q": 1}), ExecuteOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::Validation { what: "input", field: Some(f), .. } if f == "q"),
        "{error:?}"
    );
    assert!(error.to_string().contains("expected str"), "{error}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    let error = dspex
        .execute("p", json!(["not", "a", "map"]), ExecuteOptions::default())
        .await
        .unwrap_err();
    assert_eq!(error.category(), Category::Validation);
    let bad_id = dspex
        .create_program(
            "bad id!",
            Signature::parse("q: str -> a: str").unwrap(),
            Module::Predict,
        )
        .await
        .unwrap_err();
    assert_eq!(bad_id.category(), Category::Validation);
}

#[tokio::test]
async fn configuration_errors_are_caught_before_anything_starts() {
    let error = Dspex::builder().pool_size(0).start().await.unwrap_err();
    assert_eq!(error.category(), Category::Configuration);
    assert!(error.to_string().contains("pool_size"), "{error}");
    let error = Dspex::builder()
        .config_file("/nonexistent/dspex.toml")
        .start()
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("/nonexistent/dspex.toml"),
        "{error}"
    );
}

/// Scenario 38's rule: while the circuit is open, every call is refused at
/// once — never slept on, never retried, never reaching the adapter.
#[tokio::test]
async fn an_open_breaker_refuses_a_hundred_calls_at_once() {
    let mut config = Config::default();
    config.breaker.failure_threshold = 1;
    config.breaker.cooldown_ms = 60_000;
    let (dspex, calls) = flaky(1, crash(), config).await;
    let _ = dspex
        .execute("p", json!({"q": "x"}), ExecuteOptions::default())
        .await;
    assert_eq!(dspex.status().breaker.state, BreakerState::Open);
    let mut slowest = Duration::ZERO;
    for _ in 0..100 {
        let started = std::time::Instant::now();
        let error = dspex
            .execute(
                "p",
                json!({"q": "x"}),
                ExecuteOptions::default().idempotent(),
            )
            .await
            .unwrap_err();
        slowest = slowest.max(started.elapsed());
        assert!(error.is_refusal(), "{error:?}");
    }
    assert!(
        slowest < Duration::from_millis(5),
        "slowest refusal {slowest:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(dspex.status().retries, 0);
    assert_eq!(dspex.status().breaker.rejected, 100);
}

/// A handle on a mock that holds every execution until `release`d, with
/// `calls` of program `p` already in flight through it.
struct Held {
    dspex: Dspex,
    gate: Arc<tokio::sync::Semaphore>,
    running: Vec<tokio::task::JoinHandle<dspex::Result<dspex::Prediction>>>,
}

async fn held(builder: dspex::DspexBuilder, calls: usize) -> Held {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let adapter = Arc::new(Slow {
        gate: Arc::clone(&gate),
        inner: MockAdapter::new(),
    });
    let dspex = builder
        .with_adapter(adapter)
        .lm(LmConfig::dummy())
        .start()
        .await
        .unwrap();
    let signature = Signature::parse("q: str -> a: str").unwrap();
    dspex
        .create_program("p", signature, Module::Predict)
        .await
        .unwrap();
    let running = (0..calls)
        .map(|_| {
            let d = dspex.clone();
            tokio::spawn(async move {
                d.execute("p", json!({"q": "x"}), ExecuteOptions::default())
                    .await
            })
        })
        .collect();
    until(|| dspex.status().in_flight == calls).await;
    Held {
        dspex,
        gate,
        running,
    }
}

impl Held {
    /// Lets the calls in flight finish; each must succeed.
    async fn release(self) -> Dspex {
        self.gate.add_permits(self.running.len());
        for call in self.running {
            assert!(call.await.unwrap().is_ok(), "a call in flight failed");
        }
        self.dspex
    }
}

async fn until(mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "condition not met");
        tokio::task::yield_now().await;
    }
}

/// The handle's concurrency limit: calls beyond `max_in_flight` are refused
/// at once as overloaded (load shedding), never queued.
#[tokio::test]
async fn calls_beyond_max_in_flight_are_shed() {
    let held = held(Dspex::builder().max_in_flight(2), 2).await;
    let shed = held
        .dspex
        .execute("p", json!({"q": "x"}), ExecuteOptions::default())
        .await
        .unwrap_err();
    assert_eq!(shed.category(), Category::Overloaded, "{shed:?}");
    assert!(shed.suggested_delay().is_some());
    held.release().await.shutdown().await;
}

/// Graceful shutdown, whatever the adapter: new calls are refused at once,
/// the calls in flight finish with their results.
#[tokio::test]
async fn shutdown_refuses_new_calls_and_lets_those_in_flight_finish() {
    let held = held(Dspex::builder(), 4).await;
    let dspex = held.dspex.clone();
    let stopping = tokio::spawn({
        let d = dspex.clone();
        async move { d.shutdown().await }
    });
    until(|| dspex.status().closing).await;
    let refused = dspex
        .execute("p", json!({"q": "x"}), ExecuteOptions::default())
        .await
        .unwrap_err();
    assert_eq!(refused.category(), Category::Unavailable);
    assert!(refused.to_string().contains("shutting down"), "{refused}");
    assert!(
        !stopping.is_finished(),
        "shutdown waits for the calls in flight"
    );
    held.release().await;
    stopping.await.unwrap();
    assert_eq!(dspex.status().in_flight, 0);
}

/// A mock that holds every execution until the test lets it go.
#[derive(Debug)]
struct Slow {
    gate: Arc<tokio::sync::Semaphore>,
    inner: MockAdapter,
}

impl dspex::adapter::Adapter for Slow {
    fn call(
        &self,
        operation: Operation,
    ) -> futures::future::BoxFuture<'_, dspex::Result<serde_json::Value>> {
        Box::pin(async move {
            if matches!(operation, Operation::Execute(_)) {
                let permit = self.gate.acquire().await.expect("open");
                permit.forget();
            }
            self.inner.call(operation).await
        })
    }

    fn status(&self) -> dspex::adapter::AdapterStatus {
        self.inner.status()
    }

    fn events(&self) -> tokio::sync::broadcast::Receiver<dspex::Event> {
        self.inner.events()
    }

    fn shutdown(&self, grace: Duration) -> futures::future::BoxFuture<'_, ()> {
        self.inner.shutdown(grace)
    }
}
