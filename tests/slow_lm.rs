//! Scenario 34: a slow LM costs the calls that wait on it, never the pool.
//! Alone in its binary, so that its timing figure is not shared with other
//! tests' worker boots.

use std::time::{Duration, Instant};

use dspex::bridge::pool::PoolState;
use dspex::protocol::Command;
use dspex::{Deadline, Error, ExecuteOptions, ModeSetting, Module, Signature};
use dspex_tests::service::{Service, config, slow_lm};
use serde_json::json;

/// Scenario 34, through the public API with the defaults (budget 3 in 5 s):
/// a pool of 2 on an LM slower (400 ms) than the calls' timeout (150 ms).
///
/// Pass figure: 50/50 calls get `Timeout` within deadline + 50 ms; the
/// workers answered `DeadlineExceeded` themselves; 0 workers killed, 0
/// restarts, never `Failed`; the next normal call succeeds. (This is also
/// the first of the two runs the hardening issue starts from: six calls
/// then used to end the pool.)
#[tokio::test(flavor = "multi_thread")]
async fn s34_a_slow_lm_costs_the_calls_not_the_pool() {
    let mut config = config(ModeSetting::Pool);
    config.pool_size = 2;
    let service = Service::start(config).await.unwrap();
    let dspex = &service.dspex;
    dspex.configure_lm(slow_lm(400)).await.unwrap();
    let signature = Signature::parse("question: str -> answer: str").unwrap();
    dspex
        .create_program("qa", signature, Module::Predict)
        .await
        .unwrap();
    let before = service.pool().status().pids();

    let deadline = Duration::from_millis(150);
    let streams: Vec<_> = (0..2)
        .map(|stream| {
            let dspex = dspex.clone();
            tokio::spawn(async move {
                let mut late = Vec::new();
                for n in 0..25 {
                    let started = Instant::now();
                    let error = dspex
                        .execute(
                            "qa",
                            json!({"question": format!("q{stream}-{n}")}),
                            ExecuteOptions::default().timeout(deadline),
                        )
                        .await
                        .unwrap_err();
                    let took = started.elapsed();
                    assert!(
                        matches!(
                            error,
                            Error::Timeout {
                                deadline: Deadline::Request,
                                ..
                            }
                        ),
                        "call {stream}-{n}: {error:?}"
                    );
                    late.push(took);
                }
                late
            })
        })
        .collect();
    let mut took = Vec::new();
    for stream in streams {
        took.extend(stream.await.unwrap());
    }
    took.sort();
    let worst = *took.last().unwrap();
    println!(
        "s34: 50/50 Timeout; p50 {:?}, worst {worst:?} (deadline {deadline:?})",
        took[25]
    );
    assert_eq!(took.len(), 50);
    assert!(
        took[0] >= deadline - Duration::from_millis(5),
        "{:?}",
        took[0]
    );
    assert!(
        worst <= deadline + Duration::from_millis(50),
        "a Timeout came {worst:?} after the call (deadline {deadline:?})"
    );

    let status = service.pool().status();
    assert_eq!(status.state, PoolState::Running);
    assert_eq!(status.restarts, 0);
    assert_eq!(status.counters.removed, 0);
    assert_eq!(status.pids(), before, "no worker was killed");
    assert_eq!(dspex.status().breaker.trips, 0, "slow is not broken");
    // The workers abandoned the work themselves.
    let mut abandoned = 0;
    for worker in service.pool().ready_workers() {
        let stats = worker
            .call(Command::GetStats, Default::default())
            .await
            .unwrap();
        abandoned += stats["requests"]["deadline_exceeded"].as_u64().unwrap();
    }
    assert_eq!(abandoned, 50, "every call was answered DeadlineExceeded");
    // And the next normal call succeeds.
    let prediction = dspex
        .execute(
            "qa",
            json!({"question": "now"}),
            ExecuteOptions::default().timeout(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    assert!(prediction.outputs["answer"].is_string());
    service.finish().await;
}
