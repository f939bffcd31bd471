//! The harness of the pool model and race tests: a pool on in-process fake
//! workers whose signals the test controls, waiting with deadlines, and the
//! small commands the tests send.
#![allow(dead_code, unused_imports, unreachable_pub)] // each test binary uses part of it

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dspex_bridge::fake::FakeSpawner;
use dspex_bridge::health::HealthConfig;
use dspex_bridge::pool::{
    CheckoutOptions, Lease, Pool, PoolConfig, PoolCounters, PoolError, PoolState, PoolStatus,
    SlotPhase,
};
use dspex_bridge::process::{Exit, Signaller, SpawnError, SpawnStrategy, Spawned, WorkerCommand};
use dspex_bridge::{CallOptions, InterpreterSource, PythonEnv, WorkerError};
use dspex_protocol::Command;
use dspex_supervision::{Backoff, RestartIntensity};
use futures::FutureExt;
use futures::future::BoxFuture;
use nix::sys::signal::Signal;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};
use serde_json::json;

/// How long anything the pool should do at once may take on a loaded CI machine.
pub const PATIENCE: Duration = Duration::from_secs(10);

// --- harness ------------------------------------------------------------------------------

/// Fake workers whose signallers are kept by pid, so a test can SIGKILL,
/// SIGSTOP and SIGCONT the worker behind a status pid or a lease.
#[derive(Debug, Default)]
pub struct SignalSpawner {
    fakes: FakeSpawner,
    signallers: Arc<Mutex<HashMap<u32, Signaller>>>,
}

impl SignalSpawner {
    pub fn signal(&self, pid: u32, signal: Signal) {
        let signaller = self
            .signallers
            .lock()
            .unwrap()
            .get(&pid)
            .cloned()
            .unwrap_or_else(|| panic!("no fake with pid {pid}"));
        signaller.send(signal).expect("fakes take every signal");
    }

    pub fn kill(&self, pid: u32) {
        self.signal(pid, Signal::SIGKILL);
        self.signallers.lock().unwrap().remove(&pid);
    }

    /// Resumes every fake (a stopped one would hold up the shutdown).
    pub fn cont_all(&self) {
        let all: Vec<Signaller> = self.signallers.lock().unwrap().values().cloned().collect();
        for signaller in all {
            let _ = signaller.send(Signal::SIGCONT);
        }
    }
}

impl SpawnStrategy for SignalSpawner {
    fn spawn(&self, command: WorkerCommand) -> BoxFuture<'static, Result<Spawned, SpawnError>> {
        let spawned = self.fakes.spawn(command);
        let signallers = Arc::clone(&self.signallers);
        async move {
            let spawned = spawned.await?;
            signallers
                .lock()
                .unwrap()
                .insert(spawned.pid, spawned.signaller.clone());
            Ok(spawned)
        }
        .boxed()
    }
}

pub fn fake_python() -> PythonEnv {
    PythonEnv {
        interpreter: "fake-python".into(),
        source: InterpreterSource::Explicit,
        package_root: "/nonexistent".into(),
        project: None,
        layer: None,
    }
}

/// The configuration of the race and model pools: restarts without delay
/// and never runs out of them, the health monitor out of the way.
fn race_config(size: usize) -> PoolConfig {
    PoolConfig {
        name: "model".into(),
        size,
        // The model counts a worker busy with one lease.
        per_worker_concurrency: 1,
        sweep_orphans: false,
        intensity: RestartIntensity {
            max_restarts: u32::MAX,
            within: Duration::from_secs(1),
        },
        backoff: Backoff::NONE,
        health: HealthConfig {
            interval: Duration::from_secs(24 * 3600),
            restart_after: None,
            ..HealthConfig::default()
        },
        checkout_timeout: PATIENCE,
        ..PoolConfig::default()
    }
}

/// A pool of `size` fakes (see [`race_config`]), and the spawner whose
/// signals the test controls.
pub async fn start_pool(size: usize) -> (Pool, Arc<SignalSpawner>) {
    let spawner = Arc::new(SignalSpawner::default());
    let config = PoolConfig {
        spawner: Some(Arc::clone(&spawner) as Arc<dyn SpawnStrategy>),
        ..race_config(size)
    };
    let pool = Pool::start_on(config, fake_python())
        .await
        .expect("pool starts");
    wait_until(&pool, "all workers ready", |s| {
        s.idle == size && s.workers.len() == size
    })
    .await;
    (pool, spawner)
}

/// The same pool on real Python workers (the managed environment, fault
/// commands on, DSPy imported lazily).
pub async fn start_real_pool(size: usize) -> Pool {
    let python = tokio::task::spawn_blocking(|| {
        PythonEnv::resolve(&dspex_bridge::PythonConfig {
            managed_only: true,
            test_extras: true,
            ..dspex_bridge::PythonConfig::default()
        })
    })
    .await
    .unwrap()
    .expect("the managed Python");
    let config = PoolConfig {
        name: format!("real{}", std::process::id()),
        env: vec![
            ("DSPEX_TEST_FAULTS".into(), "1".into()),
            ("DSPEX_LAZY_DSPY".into(), "1".into()),
        ],
        ..race_config(size)
    };
    let pool = Pool::start_on(config, python).await.expect("pool starts");
    let mut watch = pool.status_watch();
    tokio::time::timeout(Duration::from_secs(60), watch.wait_for(|s| s.idle == size))
        .await
        .expect("real workers ready")
        .unwrap();
    pool.settled().await;
    pool
}

/// Shuts a pool down and checks no process of it is left.
pub async fn finish(pool: Pool) {
    let stragglers = pool
        .shutdown(Duration::from_secs(2), Duration::from_secs(10))
        .await;
    assert_eq!(stragglers, 0, "processes outlived the pool");
    let deadline = Instant::now() + PATIENCE;
    while !dspex_bridge::process::tagged_processes(pool.run_tag()).is_empty()
        || !pool.fds().still_open().is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the pool left processes or pipes"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits (without sleeping) until the pool's status satisfies `ready`, then
/// for the pool to settle. Panics with the status after [`PATIENCE`].
pub async fn wait_until(
    pool: &Pool,
    what: &str,
    ready: impl Fn(&PoolStatus) -> bool,
) -> PoolStatus {
    let mut watch = pool.status_watch();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if ready(&watch.borrow_and_update()) {
            break;
        }
        if tokio::time::timeout_at(deadline, watch.changed())
            .await
            .is_err()
        {
            panic!("timed out waiting for {what}; status: {:#?}", pool.status());
        }
    }
    pool.settled().await;
    pool.status()
}

/// Idle + busy + starting is the pool size, and the status agrees with itself.
pub fn assert_whole(status: &PoolStatus, size: usize) {
    assert_eq!(status.state, PoolState::Running, "{status:#?}");
    assert_eq!(status.workers.len(), size, "{status:#?}");
    assert_eq!(
        status.idle + status.busy + status.starting + status.not_started,
        size,
        "{status:#?}"
    );
    assert_eq!(
        status.leases,
        status.workers.iter().map(|w| w.leases).sum::<usize>(),
        "{status:#?}"
    );
    assert!(
        status.workers.iter().all(|w| w.leases <= 1),
        "one lease per worker at most: {status:#?}"
    );
}

/// The pool is full and at rest: every worker ready and idle, no lease out,
/// nobody waiting, and every lease handed out came back exactly once.
pub fn assert_at_rest(status: &PoolStatus, size: usize) {
    assert_whole(status, size);
    assert_eq!(
        (
            status.idle,
            status.busy,
            status.starting,
            status.queued,
            status.leases
        ),
        (size, 0, 0, 0, 0),
        "{status:#?}"
    );
    assert_eq!(
        status.counters.checkouts, status.counters.checkins,
        "a lease was lost or checked in twice: {status:#?}"
    );
}

/// `future`'s output, if it comes within [`PATIENCE`] (the timer is created
/// when first polled, inside the runtime).
pub async fn patiently<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(PATIENCE, future)
        .await
        .expect("no answer within the patience of the test")
}

pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator (SplitMix64); runs print their seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn from_env(test: &str) -> Self {
        let seed = std::env::var("DSPEX_TEST_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("{test}: DSPEX_TEST_SEED={seed}");
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn fork(&mut self) -> Self {
        Self(self.next())
    }
}

pub fn echo(token: u64) -> Command {
    Command::custom("echo", json!({ "token": token }))
}

pub fn sleep_ms(ms: u64) -> Command {
    Command::custom("sleep", json!({ "ms": ms }))
}

pub fn exit_code(code: i32) -> Command {
    Command::custom("exit", json!({ "code": code }))
}

pub fn within(timeout: Duration) -> CheckoutOptions {
    CheckoutOptions {
        timeout: Some(timeout),
        ..CheckoutOptions::default()
    }
}
