//! Scenario 39: overload. `max_queue` 10, 500 concurrent callers, the
//! default retry policy: refusals are returned, typed `Overloaded` with a
//! suggested delay, and the retry budget keeps retries ≤ 20 % of the
//! requests — here there are none at all, since a refusal is never retried.

use std::time::Duration;

use dspex::{Category, ExecuteOptions, ModeSetting};
use dspex_tests::service::{Service, config, create_qa, slow_lm};
use serde_json::json;

const CALLERS: usize = 500;

#[tokio::test(flavor = "multi_thread")]
async fn s39_overload_is_refused_not_multiplied() {
    let mut config = config(ModeSetting::Pool);
    config.pool_size = 2;
    config.max_queue = Some(10);
    let service = Service::start(config).await.unwrap();
    let dspex = &service.dspex;
    dspex.configure_lm(slow_lm(50)).await.unwrap();
    create_qa(dspex).await;
    let before = service.pool().status().counters;
    let deepest = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watcher = {
        let deepest = std::sync::Arc::clone(&deepest);
        let mut status = service.pool().status_watch();
        tokio::spawn(async move {
            loop {
                let queued = status.borrow_and_update().queued;
                deepest.fetch_max(queued, std::sync::atomic::Ordering::SeqCst);
                if status.changed().await.is_err() {
                    return;
                }
            }
        })
    };
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(CALLERS));
    let calls: Vec<_> = (0..CALLERS)
        .map(|n| {
            let dspex = dspex.clone();
            let barrier = std::sync::Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                dspex
                    .execute(
                        "qa",
                        json!({"q": format!("q{n}")}),
                        ExecuteOptions::default(),
                    )
                    .await
            })
        })
        .collect();
    let (mut ok, mut overloaded) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(error) => {
                assert_eq!(error.category(), Category::Overloaded, "{error:?}");
                let delay = error.suggested_delay().expect("a suggested delay");
                assert!(delay > Duration::ZERO);
                overloaded += 1;
            }
        }
    }
    watcher.abort();
    let after = service.pool().status().counters;
    // Every attempt either reached the pool (a checkout, a refusal there) or
    // was shed before it by the adapter's readiness (the queue was full).
    let retries = dspex.status().retries;
    let attempts = CALLERS as u64 + retries;
    let at_pool = (after.checkouts - before.checkouts) + (after.overloaded - before.overloaded);
    println!(
        "s39: {CALLERS} callers: {ok} ok, {overloaded} overloaded ({} refused by the pool, \
         the rest shed at readiness); {attempts} attempts, {retries} retries; deepest queue {}",
        after.overloaded - before.overloaded,
        deepest.load(std::sync::atomic::Ordering::SeqCst)
    );
    assert_eq!(ok + overloaded, CALLERS);
    assert!(ok >= 2, "the workers were used: {ok}");
    assert!(overloaded > 0);
    assert!(at_pool <= attempts);
    assert!(
        attempts as usize <= CALLERS * 12 / 10,
        "{attempts} attempts for {CALLERS} requests"
    );
    assert_eq!(retries, 0, "a refusal is never retried");
    assert!(
        deepest.load(std::sync::atomic::Ordering::SeqCst) <= 10,
        "the queue bound held"
    );
    service.finish().await;
}
