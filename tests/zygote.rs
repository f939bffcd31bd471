//! Workers forked from a zygote (the default spawn strategy), and scenario
//! 47: the zygote's own death.
//!
//! - Workers are the zygote's children, each leading its own process group,
//!   carrying the tree's run tag, and serving like directly spawned ones.
//! - A first restart is immediate and forked (no import): the pool is full
//!   again long before a fresh interpreter could have imported anything.
//! - Scenario 47: the zygote is SIGKILLed under load; its workers keep
//!   serving (0 errors), the next spawn starts a new zygote, and the leak
//!   check ends clean (host SIGKILL with a zygote is in `host_death.rs`).
//! - The switch back: `SpawnMode::Direct` starts no zygote at all.

use std::time::{Duration, Instant};

use dspex_bridge::SpawnMode;
use dspex_bridge::pool::RequestOptions;
use dspex_bridge::process::{proc_stat, tagged_processes};
use dspex_protocol::Command;
use dspex_testkit::{TestPool, TestPoolBuilder, poll_until, zygote_pids};
use nix::sys::signal::Signal;
use serde_json::json;

const READY: Duration = Duration::from_secs(60);

async fn pool(builder: TestPoolBuilder) -> TestPool {
    let pool = builder.start().await.expect("the pool starts");
    pool.wait_status(READY, |s| s.idle == s.workers.len() && s.idle > 0)
        .await
        .expect("every worker ready");
    pool
}

fn worker_pids(pool: &TestPool) -> Vec<u32> {
    pool.pool().status().workers.iter().map(|w| w.pid).collect()
}

fn parent_of(pid: u32) -> u32 {
    proc_stat(pid).expect("the process is alive").ppid
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_are_forked_from_the_pools_zygote() {
    let pool = pool(TestPool::builder().with(|c| c.size = 2)).await;
    let zygotes = zygote_pids(pool.pool().run_tag());
    assert_eq!(zygotes.len(), 1, "one zygote per pool: {zygotes:?}");
    let zygote = zygotes[0];
    assert_eq!(
        parent_of(zygote),
        std::process::id(),
        "the host owns the zygote"
    );
    for pid in worker_pids(&pool) {
        assert_eq!(parent_of(pid), zygote, "worker {pid} was forked");
        let group = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid as i32))).unwrap();
        assert_eq!(
            group.as_raw() as u32,
            pid,
            "worker {pid} leads its own group (G3)"
        );
        assert!(tagged_processes(pool.pool().run_tag()).contains(&pid));
    }
    assert_eq!(
        pool.command("echo", json!({"forked": true})).await.unwrap(),
        json!({"forked": true})
    );
    pool.finish().await;
}

/// A first restart is immediate (no backoff) and forked (no import).
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_worker_is_replaced_by_a_fork_at_once() {
    let pool = pool(TestPool::builder().with(|c| c.size = 2).eager_dspy()).await;
    let zygote = zygote_pids(pool.pool().run_tag())[0];
    let victim = worker_pids(&pool)[0];
    let killed = Instant::now();
    pool.signal(victim, Signal::SIGKILL).unwrap();
    pool.wait_status(READY, |s| {
        s.idle == 2 && s.workers.iter().all(|w| w.pid != victim)
    })
    .await
    .unwrap();
    let back = killed.elapsed();
    let replacement = worker_pids(&pool)
        .into_iter()
        .find(|&p| p != victim)
        .filter(|&p| parent_of(p) == zygote);
    assert!(
        replacement.is_some(),
        "the replacement is forked by the same zygote"
    );
    assert_eq!(pool.restarts(), 1);
    println!("a killed worker (DSPy imported) was back and ready {back:?} after the kill");
    pool.finish().await;
}

/// Scenario 47: the zygote is SIGKILLed while its workers serve a stream.
///
/// Pass figure: 0 errors from the zygote's death; a later spawn works (a
/// new zygote); the leak check is clean.
#[tokio::test(flavor = "multi_thread")]
async fn s47_the_zygotes_death_costs_no_request() {
    let pool = pool(TestPool::builder().with(|c| c.size = 2)).await;
    let tag = pool.pool().run_tag().clone();
    let zygote = zygote_pids(&tag)[0];
    let workers = worker_pids(&pool);

    let stream: Vec<_> = (0..4)
        .map(|caller| {
            let p = pool.pool().clone();
            tokio::spawn(async move {
                let mut errors = Vec::new();
                for i in 0..250 {
                    let args = json!({"caller": caller, "i": i});
                    match p
                        .call(
                            Command::custom("echo", args.clone()),
                            RequestOptions::default(),
                        )
                        .await
                    {
                        Ok(reply) if reply == args => {}
                        other => errors.push(format!("{other:?}")),
                    }
                }
                errors
            })
        })
        .collect();
    pool.signal(zygote, Signal::SIGKILL).unwrap();
    let mut errors = Vec::new();
    for caller in stream {
        errors.extend(caller.await.unwrap());
    }
    assert!(errors.is_empty(), "requests failed: {errors:?}");
    assert_eq!(worker_pids(&pool), workers, "the workers kept serving");
    poll_until(Duration::from_secs(5), "zygote reaped", || {
        proc_stat(zygote).is_none_or(|s| s.state == 'Z' && s.ppid != std::process::id())
    })
    .await
    .unwrap();

    // A worker that dies now is replaced by a new zygote's fork.
    let victim = workers[0];
    pool.signal(victim, Signal::SIGKILL).unwrap();
    pool.wait_status(READY, |s| {
        s.idle == 2 && s.workers.iter().all(|w| w.pid != victim)
    })
    .await
    .unwrap();
    let fresh = zygote_pids(&tag);
    assert_eq!(fresh.len(), 1, "{fresh:?}");
    assert_ne!(fresh[0], zygote, "a new zygote");
    let replacement = worker_pids(&pool)
        .into_iter()
        .find(|&p| p != workers[1])
        .unwrap();
    assert_eq!(parent_of(replacement), fresh[0]);
    // The old zygote's surviving worker still serves.
    assert_eq!(
        pool.command("echo", json!({"after": "zygote"}))
            .await
            .unwrap(),
        json!({"after": "zygote"})
    );
    println!(
        "s47: 1,000 echoes across the zygote's SIGKILL, 0 errors; a new zygote forked the next worker"
    );
    pool.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn direct_spawning_starts_no_zygote() {
    let pool = pool(TestPool::builder().with(|c| {
        c.size = 2;
        c.spawn = SpawnMode::Direct;
    }))
    .await;
    assert!(zygote_pids(pool.pool().run_tag()).is_empty());
    for pid in worker_pids(&pool) {
        assert_eq!(
            parent_of(pid),
            std::process::id(),
            "worker {pid} is the host's child"
        );
    }
    pool.finish().await;
}

/// A zygote that cannot start (its environment is broken) hands over to
/// direct spawning, so the workers' own failure (and its stderr) is what
/// the pool reports — as without a zygote.
#[tokio::test(flavor = "multi_thread")]
async fn a_zygote_that_cannot_start_hands_over_to_direct_spawning() {
    let marker = tempfile::NamedTempFile::new().unwrap();
    let path = marker.path().to_str().unwrap().to_owned();
    let builder = TestPool::builder()
        .with(|c| c.size = 1)
        .worker_env("DSPEX_TEST_FAIL_IMPORT_IF_EXISTS", &path)
        .intensity(100, Duration::from_secs(60));
    let pool = builder.start().await.unwrap();
    // Workers fail while the file exists; once it is gone they serve,
    // spawned directly (the zygote failed and is not retried at once).
    poll_until(Duration::from_secs(30), "a start failed", || {
        pool.pool().status().restarts >= 1
    })
    .await
    .unwrap();
    drop(marker);
    pool.wait_status(READY, |s| s.idle == 1).await.unwrap();
    let pid = worker_pids(&pool)[0];
    assert_eq!(parent_of(pid), std::process::id(), "spawned directly");
    pool.finish().await;
}
