//! Scenario 36: `Dspex::shutdown` — the public API, not the pool's own —
//! with requests in flight, in pool mode, in single mode and on the bridge
//! mock: stop admitting, let every request in flight finish with its
//! result, then stop the workers. (The second of the two runs the hardening
//! issue starts from: both calls in flight used to fail with "the worker
//! crashed (exit code 0) ... abandoning in-flight work".)

use std::time::{Duration, Instant};

use dspex::{AdapterKind, Category, Dspex, ExecuteOptions, ModeSetting};
use dspex_tests::service::{Service, config, create_qa, slow_lm, spawn_calls, wait_in_flight};
use serde_json::json;

const LATENCY_MS: u64 = 1_000;

/// Starts `IN_FLIGHT` one-second calls on `dspex`, waits until they all
/// run, shuts down, and checks: all ok, new calls refused at once, and the
/// shutdown took about one second plus the workers' stop.
async fn shutdown_with_calls_in_flight(dspex: &Dspex, label: &str, in_flight: usize) {
    create_qa(dspex).await;
    let calls = spawn_calls(dspex, in_flight, &ExecuteOptions::default());
    wait_in_flight(dspex, in_flight).await;
    let stopping = Instant::now();
    let shutdown = {
        let dspex = dspex.clone();
        tokio::spawn(async move { dspex.shutdown().await })
    };
    while !dspex.status().closing {
        tokio::task::yield_now().await;
    }
    let refused_at = Instant::now();
    let refused = dspex
        .execute("qa", json!({"q": "late"}), ExecuteOptions::default())
        .await
        .unwrap_err();
    assert!(
        refused_at.elapsed() < Duration::from_millis(50),
        "{label}: refused at once"
    );
    assert_eq!(refused.category(), Category::Unavailable, "{label}");
    assert!(
        refused.to_string().contains("shutting down"),
        "{label}: {refused}"
    );
    let mut ok = 0;
    for call in calls {
        let prediction = call.await.unwrap();
        assert!(
            prediction.is_ok(),
            "{label}: a call in flight failed: {prediction:?}"
        );
        ok += 1;
    }
    shutdown.await.unwrap();
    let took = stopping.elapsed();
    println!("s36 {label}: {ok}/{in_flight} in-flight calls ok; shutdown took {took:?}");
    assert_eq!(ok, in_flight);
    // One second of work left at most, then the stop (EOF: the idle
    // workers leave at once; graces are 2 s + 2 s for stragglers).
    assert!(
        took < Duration::from_millis(LATENCY_MS) + Duration::from_secs(4),
        "{label}: shutdown took {took:?}"
    );
}

/// The Python adapter in `mode`, four one-second calls in flight.
async fn python(mode: ModeSetting, label: &str) {
    let mut config = config(mode);
    // Room for four calls at once, whatever the mode.
    config.pool_size = 4;
    config.per_worker_concurrency = if mode == ModeSetting::Single { 4 } else { 1 };
    let service = Service::start(config).await.unwrap();
    let dspex = &service.dspex;
    dspex.configure_lm(slow_lm(LATENCY_MS)).await.unwrap();
    shutdown_with_calls_in_flight(dspex, label, 4).await;
    assert_eq!(service.pool().status().restarts, 0);
    service.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s36_pool_mode_shutdown_lets_four_calls_in_flight_finish() {
    python(ModeSetting::Pool, "pool").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s36_single_mode_shutdown_lets_its_calls_in_flight_finish() {
    python(ModeSetting::Single, "single").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s36_bridge_mock_shutdown_lets_its_calls_in_flight_finish() {
    let dspex = Dspex::builder()
        .adapter(AdapterKind::BridgeMock)
        .pool_size(2)
        .per_worker_concurrency(2)
        .lm(slow_lm(LATENCY_MS))
        .start()
        .await
        .unwrap();
    shutdown_with_calls_in_flight(&dspex, "bridge mock", 4).await;
}
