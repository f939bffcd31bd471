//! Single mode is the pool machinery with one worker: the same queue bound,
//! concurrency limit, LM and program tracking, and `SessionLost` after a
//! restart — none of it silently ignored.

use std::time::{Duration, Instant};

use dspex::{Category, ExecuteOptions, ModeSetting};
use dspex_tests::service::{Service, config, create_qa, slow_lm, spawn_calls};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

async fn single(change: impl FnOnce(&mut dspex::Config)) -> Service {
    let mut config = config(ModeSetting::Single);
    change(&mut config);
    let service = Service::start(config).await.unwrap();
    create_qa(&service.dspex).await;
    service
}

#[tokio::test(flavor = "multi_thread")]
async fn the_queue_bound_and_the_concurrency_hold_in_single_mode() {
    let service = single(|c| {
        c.per_worker_concurrency = 2;
        c.max_queue = Some(2);
    })
    .await;
    let dspex = &service.dspex;
    dspex.configure_lm(slow_lm(500)).await.unwrap();
    let calls = spawn_calls(dspex, 10, &ExecuteOptions::default());
    let mut peak_leases = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !calls.iter().all(|c| c.is_finished()) {
        let status = service.pool().status();
        peak_leases = peak_leases.max(status.leases);
        assert!(status.queued <= 2, "queue bound exceeded: {status:?}");
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (mut ok, mut overloaded) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(error) => {
                assert_eq!(error.category(), Category::Overloaded, "{error:?}");
                overloaded += 1;
            }
        }
    }
    println!("single mode: {ok} ok, {overloaded} overloaded, peak {peak_leases} leases");
    assert_eq!(ok, 4, "two running and two queued");
    assert_eq!(overloaded, 6);
    assert_eq!(peak_leases, 2, "per_worker_concurrency is honoured");
    service.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stateful_session_is_lost_with_the_single_worker() {
    let service = single(|_| {}).await;
    let dspex = &service.dspex;
    dspex.configure_lm(slow_lm(0)).await.unwrap();
    let chat = dspex.stateful_session("chat-1");
    chat.execute("qa", json!({"q": "hello"}), ExecuteOptions::default())
        .await
        .unwrap();
    let pid = service.pool().status().pids()[0];
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let mut status = service.pool().status_watch();
    tokio::time::timeout(
        Duration::from_secs(30),
        status.wait_for(|s| s.idle == 1 && !s.pids().contains(&pid)),
    )
    .await
    .expect("the worker is replaced")
    .unwrap();
    let started = Instant::now();
    let error = chat
        .execute("qa", json!({"q": "again"}), ExecuteOptions::default())
        .await
        .unwrap_err();
    assert_eq!(error.category(), Category::Session, "{error:?}");
    assert!(started.elapsed() < Duration::from_millis(100));
    // Other calls run on the replacement, which got the LM and the program.
    let prediction = dspex
        .execute("qa", json!({"q": "fresh"}), ExecuteOptions::default())
        .await
        .unwrap();
    assert!(prediction.outputs["a"].is_string());
    service.finish().await;
}

/// With the default configuration one worker overlaps sixteen LM-bound
/// calls: the pool hands it sixteen leases and its Python thread pool runs
/// them at once (the worker's own counters say so).
#[tokio::test(flavor = "multi_thread")]
async fn by_default_one_worker_serves_sixteen_calls_at_once() {
    let service = single(|_| {}).await;
    let dspex = &service.dspex;
    assert_eq!(dspex::Config::default().per_worker_concurrency, 16);
    dspex.configure_lm(slow_lm(1_000)).await.unwrap();
    let calls = spawn_calls(dspex, 16, &ExecuteOptions::default());
    dspex_testkit::poll_until(Duration::from_secs(10), "16 leases", || {
        service.pool().status().leases == 16
    })
    .await
    .unwrap();
    let worker = service.pool().ready_workers()[0].clone();
    let stats = worker
        .call(dspex::protocol::Command::GetStats, Default::default())
        .await
        .unwrap();
    assert_eq!(stats["max_concurrency"], json!(16), "{stats}");
    for call in calls {
        call.await.unwrap().expect("every call succeeds");
    }
    let stats = worker
        .call(dspex::protocol::Command::GetStats, Default::default())
        .await
        .unwrap();
    assert!(
        stats["requests"]["max_in_flight"].as_u64() >= Some(16),
        "the worker ran 16 at once: {stats}"
    );
    service.finish().await;
}
