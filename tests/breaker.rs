//! The circuit breaker on real workers (scenarios 37 and 38): it opens
//! after workers crash under calls, refuses at once while open — never
//! sleeping on or retrying a refusal — and a half-open probe whose future
//! is dropped cannot wedge it.

use std::time::{Duration, Instant};

use dspex::resilience::BreakerState;
use dspex::{Category, Dspex, ExecuteOptions, ModeSetting};
use dspex_tests::service::{Service, config, create_qa, slow_lm};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

/// A service whose breaker opens after 2 consecutive crashes (and stays
/// open for `cooldown`), on workers whose LM takes 2 s (so a call is in
/// flight long enough to be killed).
async fn service(cooldown: Duration) -> Service {
    let mut config = config(ModeSetting::Pool);
    config.pool_size = 2;
    config.breaker.failure_threshold = 2;
    config.breaker.cooldown_ms = cooldown.as_millis() as u64;
    // Crashes are the point here: the budget is not.
    config.restart.max_restarts = 100;
    let service = Service::start(config).await.unwrap();
    service.dspex.configure_lm(slow_lm(2_000)).await.unwrap();
    create_qa(&service.dspex).await;
    service
}

/// Crashes `n` calls by SIGKILLing the worker that runs each.
async fn crash_calls(service: &Service, n: usize) {
    for _ in 0..n {
        let before = executions(service).await;
        let dspex: Dspex = service.dspex.clone();
        let call = tokio::spawn(async move {
            dspex
                .execute("qa", json!({"q": "x"}), ExecuteOptions::default())
                .await
        });
        let pid = running_on(service, &before).await;
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
        let error = call.await.unwrap().unwrap_err();
        assert_eq!(error.category(), Category::WorkerCrashed, "{error:?}");
        service
            .pool()
            .ready_worker(Duration::from_secs(30))
            .await
            .unwrap();
    }
}

/// How many `execute_program` requests each ready worker has read, by pid.
async fn executions(service: &Service) -> Vec<(u32, u64)> {
    let mut counts = Vec::new();
    for worker in service.pool().ready_workers() {
        let stats = worker
            .call(dspex::protocol::Command::GetStats, Default::default())
            .await
            .unwrap();
        let count = stats["requests"]["by_command"]["execute_program"]
            .as_u64()
            .unwrap_or(0);
        counts.push((worker.pid(), count));
    }
    counts
}

/// Waits until a worker has read one more `execute_program` than it had
/// `before` (its own counters say so), so that killing it now crashes a
/// call that ran; returns its pid. (A lease alone proves nothing: the pool
/// also takes leases to load programs and LMs.)
async fn running_on(service: &Service, before: &[(u32, u64)]) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for (pid, count) in executions(service).await {
            let was = before
                .iter()
                .find(|(p, _)| *p == pid)
                .map_or(0, |(_, c)| *c);
            if count > was {
                return pid;
            }
        }
        assert!(Instant::now() < deadline, "the call never started");
        tokio::task::yield_now().await;
    }
}

/// Scenario 38: the breaker is open; 100 calls.
///
/// Pass figure: each refused at once (p99 < 1 ms; asserted < 5 ms on a
/// shared machine); 0 retries counted; none reached a worker.
#[tokio::test(flavor = "multi_thread")]
async fn s38_an_open_breaker_refuses_at_once_and_never_retries() {
    let cooldown = Duration::from_secs(60);
    let service = service(cooldown).await;
    crash_calls(&service, 2).await;
    let dspex = &service.dspex;
    assert_eq!(dspex.status().breaker.state, BreakerState::Open);
    let checkouts = service.pool().status().counters.checkouts;
    let mut took = Vec::with_capacity(100);
    for _ in 0..100 {
        let started = Instant::now();
        let error = dspex
            .execute(
                "qa",
                json!({"q": "x"}),
                ExecuteOptions::default().idempotent(),
            )
            .await
            .unwrap_err();
        took.push(started.elapsed());
        assert!(error.is_refusal(), "{error:?}");
        let delay = error.suggested_delay().expect("when to come back");
        assert!(delay <= cooldown, "{delay:?}");
    }
    took.sort();
    let p99 = took[98];
    println!("s38: 100 refusals, p50 {:?}, p99 {p99:?}", took[50]);
    assert!(p99 < Duration::from_millis(5), "p99 refusal {p99:?}");
    assert_eq!(dspex.status().retries, 0);
    assert_eq!(dspex.status().breaker.rejected, 100);
    assert_eq!(
        service.pool().status().counters.checkouts,
        checkouts,
        "no refused call reached the pool"
    );
    service.finish().await;
}

/// Scenario 37: the half-open probe's future is dropped (a
/// `tokio::time::timeout` around it fires).
///
/// Pass figure: the next call after the cool-down probes again; the breaker
/// closes after one successful probe; 0 calls refused after that.
#[tokio::test(flavor = "multi_thread")]
async fn s37_a_dropped_probe_does_not_wedge_the_breaker() {
    let service = service(Duration::from_millis(300)).await;
    crash_calls(&service, 2).await;
    let dspex = &service.dspex;
    assert_eq!(dspex.status().breaker.trips, 1);
    dspex_testkit::poll_until(Duration::from_secs(5), "half-open", || {
        dspex.status().breaker.state == BreakerState::HalfOpen
    })
    .await
    .unwrap();
    // The probe: its caller gives up long before the 2 s LM answers.
    let probe = tokio::time::timeout(
        Duration::from_millis(50),
        dspex.execute("qa", json!({"q": "probe"}), ExecuteOptions::default()),
    )
    .await;
    assert!(probe.is_err(), "the probe was dropped");
    // The next call probes again (a fast LM for this call only).
    let prediction = dspex
        .execute(
            "qa",
            json!({"q": "again"}),
            ExecuteOptions::default().lm(slow_lm(0)),
        )
        .await
        .expect("the next call is let through as the probe");
    assert!(prediction.outputs["a"].is_string());
    assert_eq!(dspex.status().breaker.state, BreakerState::Closed);
    let rejected = dspex.status().breaker.rejected;
    for n in 0..10 {
        dspex
            .execute(
                "qa",
                json!({"q": format!("after {n}")}),
                ExecuteOptions::default().lm(slow_lm(0)),
            )
            .await
            .unwrap();
    }
    assert_eq!(dspex.status().breaker.rejected, rejected, "0 refused after");
    println!(
        "s37: probe dropped at 50 ms; the next call probed and closed the breaker; \
         0 of 10 later calls refused"
    );
    service.finish().await;
}
