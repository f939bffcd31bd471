//! Scenario 41: recycling. With `max_requests` 100 per worker under a
//! steady 200 requests a second for 20 s, each worker reaching the limit is
//! replaced start-new-then-retire: the replacement is started while the old
//! worker serves, and the old one retires once idle.
//!
//! Pass figure: 0 errors; ready workers ≥ pool_size at every status change
//! once the pool first had them; recycles counted in the status. The run
//! lasts `DSPEX_RECYCLE_SECS` (default 20) seconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dspex_bridge::pool::{PoolEvent, RecyclePolicy, RequestOptions, SlotPhase};
use dspex_testkit::TestPool;
use dspex_tests::pool::{BOOT, echo, env_number, start};
use serde_json::json;

const SIZE: usize = 2;
const RATE: u64 = 200;
const MAX_REQUESTS: u64 = 100;

#[tokio::test(flavor = "multi_thread")]
async fn s41_recycled_workers_are_replaced_before_they_retire() {
    let seconds = env_number("DSPEX_RECYCLE_SECS", 20);
    let mut config = TestPool::config();
    config.size = SIZE;
    config.per_worker_concurrency = 4;
    config.recycle = RecyclePolicy {
        max_requests: Some(MAX_REQUESTS),
        ..RecyclePolicy::default()
    };
    let (pool, _) = start(config).await;
    let mut events = pool.events();
    let recycled_events = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&recycled_events);
    let listener = tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            if matches!(event, PoolEvent::WorkerRecycled { .. }) {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }
    });

    // Watch every status the pool publishes: the ready, serving workers
    // never drop below the size.
    let dipped = Arc::new(AtomicBool::new(false));
    let lowest = Arc::new(AtomicUsize::new(SIZE));
    let watcher = {
        let mut status = pool.pool().status_watch();
        let dipped = Arc::clone(&dipped);
        let lowest = Arc::clone(&lowest);
        tokio::spawn(async move {
            loop {
                let ready = status
                    .borrow_and_update()
                    .workers
                    .iter()
                    .filter(|w| w.phase == SlotPhase::Ready)
                    .count();
                lowest.fetch_min(ready, Ordering::SeqCst);
                if ready < SIZE {
                    dipped.store(true, Ordering::SeqCst);
                }
                if status.changed().await.is_err() {
                    return;
                }
            }
        })
    };

    let total = RATE * seconds;
    let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut calls = Vec::with_capacity(total as usize);
    for n in 0..total {
        ticks.tick().await;
        let p = pool.pool().clone();
        calls.push(tokio::spawn(async move {
            p.call(echo(json!({"n": n})), RequestOptions::default())
                .await
        }));
    }
    let mut errors = Vec::new();
    for (n, call) in calls.into_iter().enumerate() {
        match call.await.unwrap() {
            Ok(reply) => assert_eq!(reply, json!({"n": n})),
            Err(error) => errors.push(error),
        }
    }
    let took = started.elapsed();
    pool.pool().settled().await;
    watcher.abort();
    let status = pool.pool().status();
    let recycled = status.counters.recycled;
    println!(
        "s41: {total} requests in {took:?}: {} errors; {recycled} recycles; \
         lowest ready {} (size {SIZE}); restarts {}",
        errors.len(),
        lowest.load(Ordering::SeqCst),
        status.restarts
    );
    assert!(errors.is_empty(), "errors: {errors:?}");
    assert!(
        !dipped.load(Ordering::SeqCst),
        "ready workers fell below the size"
    );
    // Every worker serves about MAX_REQUESTS before it is replaced.
    let expected = total / MAX_REQUESTS;
    assert!(
        recycled >= expected * 3 / 4 && recycled <= expected + SIZE as u64,
        "{recycled} recycles for {total} requests"
    );
    assert_eq!(status.restarts, 0, "recycling is not a crash");
    assert!(
        status
            .workers
            .iter()
            .all(|w| w.requests <= MAX_REQUESTS + 4 * SIZE as u64),
        "{status:#?}"
    );
    assert_eq!(
        pool.wait_status(BOOT, |s| s.idle == SIZE)
            .await
            .unwrap()
            .retiring,
        0
    );
    listener.abort();
    assert_eq!(
        recycled_events.load(Ordering::SeqCst) as u64,
        recycled,
        "one WorkerRecycled event per recycle"
    );
    pool.finish().await;
}

/// A worker holding a stateful session is not recycled while the session
/// lives (its state would be lost); once the session ends, it is.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_holding_a_stateful_session_is_recycled_only_after_it_ends() {
    let mut config = TestPool::config();
    config.size = 1;
    config.recycle = RecyclePolicy {
        max_requests: Some(3),
        ..RecyclePolicy::default()
    };
    let (pool, _) = start(config).await;
    let session = dspex_bridge::pool::Session::stateful("keep-me");
    let options = RequestOptions {
        checkout: dspex_bridge::pool::CheckoutOptions {
            session: Some(session),
            ..Default::default()
        },
        ..RequestOptions::default()
    };
    let pid = pool.worker_pid().unwrap();
    for n in 0..10 {
        pool.pool()
            .call(echo(json!({"n": n})), options.clone())
            .await
            .expect("the session keeps its worker");
    }
    assert_eq!(pool.worker_pid(), Some(pid));
    assert_eq!(pool.pool().status().counters.recycled, 0);
    pool.pool().end_session("keep-me");
    // The next requests reach the limit again: now it is recycled.
    for n in 0..3 {
        pool.pool()
            .call(echo(json!({"n": n})), RequestOptions::default())
            .await
            .unwrap();
    }
    let status = pool
        .wait_status(BOOT, |s| s.counters.recycled == 1 && s.idle == 1)
        .await
        .unwrap();
    assert_ne!(status.pids(), [pid], "replaced");
    assert_eq!(status.restarts, 0);
    pool.finish().await;
}

/// The age and memory limits: checked on the pool's tick, they recycle a
/// worker the same way (replacement first), with no caller error.
#[tokio::test(flavor = "multi_thread")]
async fn workers_are_recycled_by_age_and_by_memory() {
    for (label, recycle) in [
        (
            "max_age",
            RecyclePolicy {
                max_age: Some(Duration::from_millis(300)),
                ..RecyclePolicy::default()
            },
        ),
        (
            // Any Python process is above 1 MiB: recycled as soon as seen.
            "max_rss_mb",
            RecyclePolicy {
                max_rss_mb: Some(1),
                ..RecyclePolicy::default()
            },
        ),
    ] {
        let mut config = TestPool::config();
        config.size = 1;
        config.recycle = recycle;
        let (pool, _) = start(config).await;
        let first = pool.worker_pid().unwrap();
        let mut events = pool.events();
        let recycled = dspex_testkit::wait_event(
            &mut events,
            BOOT,
            |e| matches!(e, PoolEvent::WorkerRecycled { pid, .. } if *pid == first),
        )
        .await
        .unwrap();
        let PoolEvent::WorkerRecycled { reason, .. } = recycled else {
            unreachable!()
        };
        assert!(reason.contains(label), "{label}: {reason}");
        let status = pool.pool().status();
        assert!(
            status.counters.recycled >= 1 && status.restarts == 0,
            "{status:?}"
        );
        assert_eq!(
            pool.command("echo", json!({"after": label})).await.unwrap(),
            json!({"after": label})
        );
        pool.finish().await;
    }
}
