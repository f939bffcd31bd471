//! Deadlines that never take the pool down (scenario 35 of the reliability
//! contract; 34 is `slow_lm.rs`) and the health monitor's own ping deadline.
//!
//! A request carries its deadline to the worker, which answers
//! `DeadlineExceeded` at it and stays in service; the caller gets `Timeout`
//! at its deadline. Only a worker that stays silent past the deadline and
//! the hang grace is killed, and that kill — the pool's decision — does not
//! count toward the restart budget.

use std::time::{Duration, Instant};

use dspex::bridge::WorkerError;
use dspex::bridge::health::{Health, HealthConfig};
use dspex::bridge::pool::{PoolError, PoolState, RequestOptions};
use dspex::bridge::worker::WorkerEvent;
use dspex::protocol::Command;
use dspex::{Category, ExecuteOptions, ModeSetting};
use dspex_testkit::{TestTree, poll_until, wait_event};
use dspex_tests::service::{Service, config, create_qa, slow_lm};
use nix::sys::signal::Signal;
use serde_json::json;

const BOOT: Duration = Duration::from_secs(60);

/// Scenario 35: a worker truly hung (SIGSTOP) with requests in flight is
/// killed only at deadline + hang grace; its other in-flight requests get
/// `WorkerExited` ("may have run"); and 20 such kills within 5 s do not
/// exhaust the default restart budget (3 in 5 s).
///
/// Pass figure: killed ≤ deadline + grace + 100 ms (asserted with 400 ms of
/// slack on a loaded machine); 0 `Failed` after 20 kills in 5 s.
#[tokio::test(flavor = "multi_thread")]
async fn s35_only_a_truly_hung_worker_is_killed_and_it_is_not_a_crash() {
    let deadline = Duration::from_millis(200);
    let grace = Duration::from_millis(100);
    let pool = TestTree::builder()
        .hang_grace(grace)
        .with(|c| c.per_worker_concurrency = 2)
        .start()
        .await
        .unwrap();
    pool.ready(BOOT).await.unwrap();
    let mut events = pool.worker_events();
    let mut kills = Vec::new();
    let storm = Instant::now();
    let mut killed_pid = 0;
    for round in 0..20 {
        // The replacement of the last round's worker, once the pool has it.
        let status = pool
            .wait_status(BOOT, |s| s.idle == 1 && !s.pids().contains(&killed_pid))
            .await
            .unwrap();
        let pid = status.pids()[0];
        killed_pid = pid;
        // A long request in flight beside the one that will time out.
        let bystander = {
            let p = pool.pool().clone();
            tokio::spawn(async move {
                p.call(
                    Command::custom("sleep", json!({"ms": 10_000})),
                    RequestOptions {
                        timeout: Some(Duration::from_secs(20)),
                        ..RequestOptions::default()
                    },
                )
                .await
            })
        };
        poll_until(Duration::from_secs(5), "bystander in flight", || {
            pool.pool().status().leases == 1
        })
        .await
        .unwrap();
        pool.signal(pid, Signal::SIGSTOP).unwrap();
        let started = Instant::now();
        let timed_out = pool
            .pool()
            .call(
                Command::custom("echo", json!({"round": round})),
                RequestOptions {
                    timeout: Some(deadline),
                    ..RequestOptions::default()
                },
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                timed_out,
                PoolError::Worker(WorkerError::RequestTimeout { .. })
            ),
            "round {round}: {timed_out:?}"
        );
        wait_event(
            &mut events,
            Duration::from_secs(5),
            |e| matches!(e, WorkerEvent::Exited { pid: p, .. } if *p == pid),
        )
        .await
        .unwrap();
        let killed = started.elapsed();
        kills.push(killed);
        assert!(
            killed >= deadline + grace && killed <= deadline + grace + Duration::from_millis(500),
            "round {round}: killed {killed:?} after the call"
        );
        let bystander = bystander.await.unwrap().unwrap_err();
        assert!(
            matches!(
                bystander,
                PoolError::Worker(WorkerError::WorkerExited { .. })
            ),
            "round {round}: the bystander may have run: {bystander:?}"
        );
    }
    let storm = storm.elapsed();
    let status = pool.pool().status();
    println!(
        "s35: 20 hang kills in {storm:?}; kill at deadline + grace + {:?} (worst)",
        kills.iter().max().unwrap().saturating_sub(deadline + grace)
    );
    assert_eq!(status.state, PoolState::Running, "never Failed");
    assert_eq!(status.restarts, 0, "a hang kill is not a crash");
    assert_eq!(
        pool.command("echo", json!({"after": "storm"}))
            .await
            .unwrap(),
        json!({"after": "storm"})
    );
    pool.finish().await;
}

/// The health monitor's ping has its own deadline: a missed ping is a
/// failed check, and the thresholds decide — a worker that misses fewer
/// than `restart_after` pings in a row is degraded, then healthy again,
/// never killed by its ping.
#[tokio::test(flavor = "multi_thread")]
async fn missed_pings_are_failed_checks_and_only_the_thresholds_act() {
    let health = HealthConfig {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(150),
        degraded_after: 1,
        unhealthy_after: 3,
        restart_after: Some(10),
    };
    let pool = TestTree::builder()
        .health(health)
        .hang_grace(Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    pool.ready(BOOT).await.unwrap();
    poll_until(Duration::from_secs(10), "healthy", || {
        pool.pool().health().health == Health::Healthy
    })
    .await
    .unwrap();
    let pid = pool.signal_worker(Signal::SIGSTOP).unwrap();
    poll_until(Duration::from_secs(10), "degraded", || {
        pool.pool().health().health != Health::Healthy
    })
    .await
    .unwrap();
    // Missed pings past their deadline and the hang grace: the monitor
    // counts them; the worker actor does not kill for them.
    poll_until(Duration::from_secs(10), "two failed checks", || {
        pool.pool().health().consecutive_failures >= 2
    })
    .await
    .unwrap();
    pool.signal(pid, Signal::SIGCONT).unwrap();
    poll_until(Duration::from_secs(10), "healthy again", || {
        pool.pool().health().health == Health::Healthy
    })
    .await
    .unwrap();
    assert_eq!(pool.worker_pid(), Some(pid), "not killed for missed pings");
    assert_eq!(pool.pool().health().restarts, 0);
    assert_eq!(pool.restarts(), 0);
    pool.finish().await;
}

/// Through the public API, a timeout is a `Timeout` of the request: not a
/// crash, not counted by the breaker, never retried (the deadline is spent).
#[tokio::test(flavor = "multi_thread")]
async fn a_timeout_through_the_api_is_typed_and_not_retried() {
    let service = Service::start(config(ModeSetting::Single)).await.unwrap();
    let dspex = &service.dspex;
    dspex.configure_lm(slow_lm(2_000)).await.unwrap();
    create_qa(dspex).await;
    let error = dspex
        .execute(
            "qa",
            json!({"q": "x"}),
            ExecuteOptions::default()
                .timeout(Duration::from_millis(300))
                .idempotent(),
        )
        .await
        .unwrap_err();
    assert_eq!(error.category(), Category::Timeout);
    assert!(!error.indicates_broken_worker());
    assert_eq!(dspex.status().retries, 0);
    assert_eq!(dspex.status().breaker.consecutive_failures, 0);
    service.finish().await;
}
