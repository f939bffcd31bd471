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

#[tokio::test]
async fn errors_that_never_ran_are_retried() {
    let (dspex, calls) = flaky(2, queue_timeout(), Config::default()).await;
    let prediction = dspex
        .execute(
            "p",
            json!({"q": "x"}),
            ExecuteOptions::default().retry(FAST),
        )
        .await
        .unwrap();
    assert_eq!(prediction.attempts, 3);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(dspex.status().retries, 2);
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
    let (dspex, calls) = flaky(10, queue_timeout(), Config::default()).await;
    let error = dspex
        .execute(
            "p",
            json!({"q": "x"}),
            ExecuteOptions::default().retry(FAST),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Timeout { .. }));
    assert_eq!(calls.load(Ordering::SeqCst), 3);

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
