//! The pool's races: the hand-off/timeout race (scenario 6), callers
//! dropped mid-request (scenario 8), and concurrent operations without
//! deadlock (scenario 33, lightly). Each of 6 and 8 runs twice: on
//! in-process fake workers with the contract's counts (behind environment
//! variables, see the harness), and on real Python workers with counts CI
//! can afford (`DSPEX_REAL_RACE_ITERATIONS`, `DSPEX_REAL_DROP_CALLERS`).

mod pool_harness;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dspex_bridge::CallOptions;
use dspex_bridge::pool::{Lease, Pool, PoolCounters, PoolError};
use serde_json::json;

use pool_harness::Rng;
/// How long anything the pool should do at once may take on a loaded CI machine.
use pool_harness::*;

// --- scenario 6: the hand-off/timeout race -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_6_a_worker_handed_to_a_caller_that_gave_up_goes_straight_back() {
    let (pool, _spawner) = start_pool(2).await;
    handed_back(&pool).await;
    pool.shutdown(Duration::from_secs(2), Duration::from_secs(2))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_6_on_real_workers_a_worker_handed_to_a_caller_that_gave_up_goes_straight_back() {
    let pool = start_real_pool(2).await;
    handed_back(&pool).await;
    finish(pool).await;
}

async fn handed_back(pool: &Pool) {
    let pids = pool.status().pids();
    let mut leases = vec![
        pool.checkout(within(PATIENCE)).await.unwrap(),
        pool.checkout(within(PATIENCE)).await.unwrap(),
    ];
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.checkout(within(Duration::from_millis(250))).await }
    });
    wait_until(pool, "the caller queued", |s| s.queued == 1).await;

    // The check-in reaches the pool only after the caller's deadline passed.
    let resume = pool.pause().unwrap();
    drop(leases.pop());
    let gave_up = tokio::time::timeout(PATIENCE, waiter)
        .await
        .expect("the caller's deadline passes while the pool is paused")
        .unwrap();
    assert!(
        matches!(gave_up, Err(PoolError::CheckoutTimeout(_))),
        "{gave_up:?}"
    );
    drop(resume);
    pool.settled().await;

    let status = pool.status();
    assert_whole(&status, 2);
    assert_eq!(
        (status.idle, status.busy, status.queued, status.leases),
        (1, 1, 0, 1),
        "{status:#?}"
    );
    assert_eq!(
        status.counters,
        PoolCounters {
            checkouts: 2,
            checkins: 1,
            cancelled: 1,
            ..PoolCounters::default()
        },
        "{status:#?}"
    );
    assert_eq!(status.restarts, 0);
    assert_eq!(status.pids(), pids, "no worker was replaced");

    // The worker is straight back in service.
    let lease = pool
        .checkout(within(Duration::from_secs(1)))
        .await
        .expect("the returned worker serves the next caller");
    drop((lease, leases));
    let status = wait_until(pool, "all back", |s| s.idle == 2).await;
    assert_at_rest(&status, 2);
}

/// Callers whose checkout timeout is about the service time of the callers
/// before them: workers come back just as their callers give up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_6_randomised_timeouts_about_the_service_time_leak_nothing() {
    let (pool, _spawner) = start_pool(4).await;
    let iterations = env_usize("DSPEX_POOL_RACE_ITERATIONS", 2_000);
    randomised_timeouts(&pool, 4, iterations, "scenario_6_randomised").await;
    pool.shutdown(Duration::from_secs(2), Duration::from_secs(2))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_6_on_real_workers_randomised_timeouts_leak_nothing() {
    let pool = start_real_pool(4).await;
    let iterations = env_usize("DSPEX_REAL_RACE_ITERATIONS", 1_000);
    randomised_timeouts(&pool, 4, iterations, "scenario_6_real").await;
    finish(pool).await;
}

async fn randomised_timeouts(pool: &Pool, size: usize, iterations: usize, seed: &str) {
    let mut rng = Rng::from_env(seed);
    let pids = pool.status().pids();
    let (mut served, mut timed_out) = (0u64, 0u64);
    let started = Instant::now();
    for iteration in 0..iterations {
        let service = 1 + rng.below(4);
        let mut holders = Vec::new();
        for _ in 0..size {
            let lease = pool.checkout(within(PATIENCE)).await.unwrap();
            holders.push(tokio::spawn(async move {
                let mut lease = lease;
                lease.call(sleep_ms(service), CallOptions::default()).await
            }));
        }
        let mut waiters = Vec::new();
        for _ in 0..1 + rng.below(4) {
            // service - 1 ..= service + 1 ms, in 250 µs steps.
            let micros = (service * 1000 + rng.below(9) * 250).saturating_sub(1000);
            let pool = pool.clone();
            waiters.push(tokio::spawn(async move {
                let mut lease = pool.checkout(within(Duration::from_micros(micros))).await?;
                Ok::<_, PoolError>(lease.call(echo(micros), CallOptions::default()).await)
            }));
        }
        let all = async {
            for holder in holders {
                holder
                    .await
                    .unwrap()
                    .expect("the holder's request succeeds");
            }
            for waiter in waiters {
                match waiter.await.unwrap() {
                    Ok(reply) => {
                        reply.expect("a served waiter's request succeeds");
                        served += 1;
                    }
                    Err(PoolError::CheckoutTimeout(_)) => timed_out += 1,
                    Err(other) => panic!("iteration {iteration}: {other:?}"),
                }
            }
        };
        tokio::time::timeout(PATIENCE, all)
            .await
            .unwrap_or_else(|_| panic!("iteration {iteration} hung: {:#?}", pool.status()));
        pool.settled().await;
        let status = pool.status();
        assert_at_rest(&status, size);
        assert_eq!(status.restarts, 0, "iteration {iteration}: {status:#?}");
        assert_eq!(status.counters.removed, 0, "{status:#?}");
        assert_eq!(
            status.pids(),
            pids,
            "iteration {iteration}: a worker was replaced"
        );
    }
    let cancelled = pool.status().counters.cancelled;
    eprintln!(
        "{seed}: {iterations} iterations in {:?}; {served} waiters served, {timed_out} timed out \
         ({cancelled} taken back by the pool, {} after their lease was already sent)",
        started.elapsed(),
        timed_out - cancelled.min(timed_out),
    );
    // Only waiters give up. One whose deadline fires just as its lease
    // arrives drops the lease, which checks in like any other: it counts as a
    // checkout and a check-in, not as cancelled.
    assert!(
        cancelled <= timed_out,
        "cancelled {cancelled} > timed out {timed_out}"
    );
    assert!(
        iterations < 50 || (served > 0 && timed_out > 0),
        "the race was not exercised"
    );
}

// --- scenario 8: callers dropped mid-request -----------------------------------------------

#[derive(Debug, Default)]
struct Tally {
    delivered: AtomicU64,
    misdelivered: AtomicU64,
    failed: AtomicU64,
}

/// One caller: a random `sleep`, then an `echo` of its own token; both
/// replies must be its own.
async fn caller(pool: Pool, token: u64, nap: u64, tally: Arc<Tally>) {
    let mut lease = match pool.checkout(within(PATIENCE)).await {
        Ok(lease) => lease,
        Err(error) => {
            eprintln!("caller {token}: {error}");
            tally.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let call = CallOptions::default();
    match lease.call(sleep_ms(nap), call.clone()).await {
        Ok(reply) if reply == json!({ "slept_ms": nap }) => {}
        Ok(reply) => {
            eprintln!("caller {token}: sleep {nap} got {reply}");
            tally.misdelivered.fetch_add(1, Ordering::Relaxed);
        }
        Err(error) => {
            eprintln!("caller {token}: {error}");
            tally.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    match lease.call(echo(token), call).await {
        Ok(reply) if reply == json!({ "token": token }) => {
            tally.delivered.fetch_add(1, Ordering::Relaxed);
        }
        Ok(reply) => {
            eprintln!("caller {token}: echo got {reply}");
            tally.misdelivered.fetch_add(1, Ordering::Relaxed);
        }
        Err(error) => {
            eprintln!("caller {token}: {error}");
            tally.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_8_callers_dropped_mid_request_never_get_or_cause_a_wrong_reply() {
    let (pool, _spawner) = start_pool(4).await;
    let callers = env_usize("DSPEX_POOL_DROP_CALLERS", 5_000) as u64;
    dropped_callers(&pool, 4, callers, "scenario_8").await;
    pool.shutdown(Duration::from_secs(2), Duration::from_secs(2))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_8_on_real_workers_dropped_callers_never_get_a_wrong_reply() {
    let pool = start_real_pool(4).await;
    let callers = env_usize("DSPEX_REAL_DROP_CALLERS", 3_000) as u64;
    dropped_callers(&pool, 4, callers, "scenario_8_real").await;
    finish(pool).await;
}

async fn dropped_callers(pool: &Pool, size: usize, callers: u64, seed: &str) {
    const BATCH: u64 = 8;
    let mut rng = Rng::from_env(seed);
    let pids = pool.status().pids();
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let mut token = 0;
    while token < callers {
        let mut batch = Vec::new();
        for _ in 0..BATCH {
            token += 1;
            let nap = rng.below(4);
            let body = caller(pool.clone(), token, nap, Arc::clone(&tally));
            // Dropped at a random point: by a timeout around the caller, or
            // by aborting its task; a few run to the end.
            let after = Duration::from_micros(rng.below(6_000));
            batch.push(match rng.below(3) {
                0 => tokio::spawn(async move {
                    let _ = tokio::time::timeout(after, body).await;
                }),
                1 => {
                    let task = tokio::spawn(body);
                    tokio::spawn(async move {
                        tokio::time::sleep(after).await;
                        task.abort();
                        let _ = task.await;
                    })
                }
                _ => tokio::spawn(body),
            });
        }
        let batch = futures::future::join_all(batch);
        tokio::time::timeout(PATIENCE, batch)
            .await
            .unwrap_or_else(|_| panic!("callers hung: {:#?}", pool.status()));
        // Drained workers come back by themselves.
        let status = wait_until(pool, "drains done", |s| s.idle == size).await;
        assert_at_rest(&status, size);
        assert_eq!(status.restarts, 0, "{status:#?}");
        assert_eq!(status.pids(), pids, "a worker was replaced");
    }
    let status = pool.status();
    let delivered = tally.delivered.load(Ordering::Relaxed);
    eprintln!(
        "{seed}: {callers} callers in {:?}; {delivered} delivered, {} drained, {} cancelled while queued",
        started.elapsed(),
        status.counters.drained,
        status.counters.cancelled
    );
    assert_eq!(
        tally.misdelivered.load(Ordering::Relaxed),
        0,
        "misdelivered replies"
    );
    assert_eq!(tally.failed.load(Ordering::Relaxed), 0, "failed requests");
    assert!(
        status.counters.drained > 0,
        "no drop hit a request in flight"
    );
    assert!(delivered > 0 && delivered < callers, "drops did not vary");
}

// --- scenario 33, lightly: concurrent operations -------------------------------------------

/// Marks a worker as held by one caller; a second holder at once would be a
/// double hand-off. Declared after its lease, so it drops first.
struct Holding {
    pid: u32,
    held: Arc<Mutex<HashSet<u32>>>,
}

impl Holding {
    fn new(lease: &Lease, held: &Arc<Mutex<HashSet<u32>>>) -> Self {
        let pid = lease.pid();
        assert!(
            held.lock().unwrap().insert(pid),
            "worker {pid} handed to two callers at once"
        );
        Self {
            pid,
            held: Arc::clone(held),
        }
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        self.held.lock().unwrap().remove(&self.pid);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_33_concurrent_checkouts_cancels_drops_and_kills_do_not_deadlock() {
    const SIZE: usize = 3;
    const TASKS: usize = 32;
    let ops = env_usize("DSPEX_POOL_STRESS_OPS", 4_000);
    let mut rng = Rng::from_env("scenario_33");
    let (pool, _spawner) = start_pool(SIZE).await;
    let held = Arc::new(Mutex::new(HashSet::new()));
    let failures = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let pool = pool.clone();
            let held = Arc::clone(&held);
            let failures = Arc::clone(&failures);
            let mut rng = rng.fork();
            let share = ops / TASKS + usize::from(t < ops % TASKS);
            tokio::spawn(async move {
                for n in 0..share {
                    let token = (t * 1_000_000 + n) as u64;
                    let wait = Duration::from_micros(rng.below(3_000));
                    match rng.below(100) {
                        // Check out with a short deadline (often queued, often
                        // cancelled), hold briefly, give back.
                        0..30 => {
                            if let Ok(lease) = pool.checkout(within(wait)).await {
                                let _holding = Holding::new(&lease, &held);
                                tokio::task::yield_now().await;
                            }
                        }
                        // A caller that is dropped while queued.
                        30..40 => {
                            let _ =
                                tokio::time::timeout(wait, pool.checkout(within(PATIENCE))).await;
                        }
                        // A full request.
                        40..70 => {
                            let Ok(mut lease) = pool.checkout(within(PATIENCE)).await else {
                                failures.fetch_add(1, Ordering::Relaxed);
                                continue;
                            };
                            let _holding = Holding::new(&lease, &held);
                            match lease.call(echo(token), CallOptions::default()).await {
                                Ok(reply) if reply == json!({ "token": token }) => {}
                                other => {
                                    eprintln!("echo {token}: {other:?}");
                                    failures.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        // A request dropped at a random point (drained).
                        70..95 => {
                            let pool = &pool;
                            let held = &held;
                            let request = async move {
                                let mut lease = pool.checkout(within(PATIENCE)).await?;
                                let _holding = Holding::new(&lease, held);
                                let nap = 1 + token % 3;
                                lease.call(sleep_ms(nap), CallOptions::default()).await?;
                                Ok::<_, PoolError>(())
                            };
                            let _ = tokio::time::timeout(wait, request).await;
                        }
                        // A worker that exits under its caller: removed, replaced.
                        95..98 => {
                            if let Ok(mut lease) = pool.checkout(within(PATIENCE)).await {
                                let _holding = Holding::new(&lease, &held);
                                let _ = lease.call(exit_code(1), CallOptions::default()).await;
                            }
                        }
                        // Barriers and a short pause of the pool actor.
                        98 => pool.settled().await,
                        _ => {
                            if let Ok(resume) = pool.pause() {
                                tokio::task::yield_now().await;
                                drop(resume);
                            }
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(tasks))
        .await
        .unwrap_or_else(|_| panic!("deadlock: {:#?}", pool.status()))
        .into_iter()
        .for_each(|r| r.expect("no task panicked"));
    let status = wait_until(&pool, "the pool full again", |s| {
        s.idle == SIZE && s.starting == 0
    })
    .await;
    eprintln!(
        "scenario 33: {ops} operations from {TASKS} tasks in {:?}; counters {:?}; {} restarts",
        started.elapsed(),
        status.counters,
        status.restarts
    );
    assert_at_rest(&status, SIZE);
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    assert!(held.lock().unwrap().is_empty());
    pool.shutdown(Duration::from_secs(2), Duration::from_secs(2))
        .await;
}
