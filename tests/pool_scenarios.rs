//! Pool mode against the real Python worker, with the pass figures of the
//! reliability contract.

use std::time::{Duration, Instant};

use dspex_bridge::pool::{CheckoutOptions, PoolError, RequestOptions};
use dspex_protocol::Command;
use dspex_testkit::TestPool;
use serde_json::json;

const BOOT: Duration = Duration::from_secs(30);

/// Scenario 5: all 4 workers busy (sleep 1 s); a 5th caller with
/// `checkout_timeout = 100 ms` gets `CheckoutTimeout` at the deadline; no
/// worker is touched; the 4 busy requests succeed.
#[tokio::test(flavor = "multi_thread")]
async fn s05_checkout_timeout_touches_no_worker() {
    let pool = TestPool::start(TestPool::config(), BOOT).await.unwrap();
    let pids = pool.pool().status().pids();
    let busy: Vec<_> = (0..4)
        .map(|_| {
            let p = pool.pool().clone();
            tokio::spawn(async move {
                p.call(
                    Command::custom("sleep", json!({"ms": 1000})),
                    RequestOptions::default(),
                )
                .await
            })
        })
        .collect();
    pool.wait_status(Duration::from_secs(5), |s| s.busy == 4)
        .await
        .unwrap();
    let started = Instant::now();
    let error = pool
        .pool()
        .checkout(CheckoutOptions {
            timeout: Some(Duration::from_millis(100)),
            ..CheckoutOptions::default()
        })
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert!(matches!(error, PoolError::CheckoutTimeout(_)), "{error:?}");
    assert!(
        waited >= Duration::from_millis(100) && waited <= Duration::from_millis(150),
        "timed out after {waited:?}"
    );
    for call in busy {
        assert_eq!(call.await.unwrap().unwrap(), json!({"slept_ms": 1000}));
    }
    let status = pool.pool().status();
    assert_eq!(status.restarts, 0);
    assert_eq!(status.pids(), pids);
    pool.finish().await;
}
