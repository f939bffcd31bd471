//! The pool against a reference model, and its races under randomised load,
//! all on in-process fake workers (reliability scenarios 6, 8, 32 and, lightly, 33).
//!
//! - `scenario_32_*`: a `proptest-state-machine` model. Each case starts a
//!   pool of 2–3 fakes and applies up to 40 operations (checkout, check-in,
//!   check-in that removes the worker, a lease dropped mid-request, SIGKILL of
//!   a busy / idle / draining worker, SIGSTOP and SIGCONT); after every step,
//!   once the pool has settled (and restarts and drains the model expects are
//!   done), `status()` must equal the model: idle, busy, queued, leases,
//!   restarts and counters. A failure shrinks to a minimal sequence, and its
//!   seed is saved in `tests/pool_model.proptest-regressions` and replayed
//!   first on later runs.
//! - `scenario_6_*`: the hand-off/timeout race, once by construction (the pool
//!   actor paused while a deadline passes), then randomised.
//! - `scenario_8_*`: callers dropped at random points of their requests; every
//!   reply that is delivered carries its own caller's token. (The pool drains
//!   an abandoned reply by request id and keeps the worker, so the test also
//!   asserts 0 restarts.)
//! - `scenario_33_*`: many tasks checking out, cancelling, dropping and
//!   killing at once on a multi-thread runtime: no deadlock, no double
//!   hand-off, and the pool ends full.
//!
//! Signals reach the fakes through [`SignalSpawner`], which keeps each
//! fake's [`Signaller`] by pid (fake pids are beyond `i32::MAX`, so `kill(2)`
//! on the status pids cannot reach them).
//!
//! Sizes are small for CI; on demand:
//!
//! ```text
//! PROPTEST_CASES=10000 cargo test --release -p dspex-bridge --test pool_model scenario_32
//! DSPEX_POOL_RACE_ITERATIONS=10000 DSPEX_POOL_DROP_CALLERS=10000 DSPEX_POOL_STRESS_OPS=100000 \
//!     cargo test --release -p dspex-bridge --test pool_model
//! DSPEX_TEST_SEED=<seed printed by a failed run> cargo test -p dspex-bridge --test pool_model scenario_8
//! ```

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
const PATIENCE: Duration = Duration::from_secs(10);

// --- harness ------------------------------------------------------------------------------

/// Fake workers whose signallers are kept by pid, so a test can SIGKILL,
/// SIGSTOP and SIGCONT the worker behind a status pid or a lease.
#[derive(Debug, Default)]
struct SignalSpawner {
    fakes: FakeSpawner,
    signallers: Arc<Mutex<HashMap<u32, Signaller>>>,
}

impl SignalSpawner {
    fn signal(&self, pid: u32, signal: Signal) {
        let signaller = self
            .signallers
            .lock()
            .unwrap()
            .get(&pid)
            .cloned()
            .unwrap_or_else(|| panic!("no fake with pid {pid}"));
        signaller.send(signal).expect("fakes take every signal");
    }

    fn kill(&self, pid: u32) {
        self.signal(pid, Signal::SIGKILL);
        self.signallers.lock().unwrap().remove(&pid);
    }

    /// Resumes every fake (a stopped one would hold up the shutdown).
    fn cont_all(&self) {
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

fn fake_python() -> PythonEnv {
    PythonEnv {
        interpreter: "fake-python".into(),
        source: InterpreterSource::Explicit,
        package_root: "/nonexistent".into(),
    }
}

/// A pool of `size` fakes that restarts without delay and never runs out of
/// restarts, with the health monitor out of the way.
async fn start_pool(size: usize) -> (Pool, Arc<SignalSpawner>) {
    let spawner = Arc::new(SignalSpawner::default());
    let config = PoolConfig {
        name: "model".into(),
        size,
        spawner: Some(Arc::clone(&spawner) as Arc<dyn SpawnStrategy>),
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

/// Waits (without sleeping) until the pool's status satisfies `ready`, then
/// for the pool to settle. Panics with the status after [`PATIENCE`].
async fn wait_until(pool: &Pool, what: &str, ready: impl Fn(&PoolStatus) -> bool) -> PoolStatus {
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
fn assert_whole(status: &PoolStatus, size: usize) {
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
fn assert_at_rest(status: &PoolStatus, size: usize) {
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
async fn patiently<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(PATIENCE, future)
        .await
        .expect("no answer within the patience of the test")
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator (SplitMix64); runs print their seed.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn from_env(test: &str) -> Self {
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

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn fork(&mut self) -> Self {
        Self(self.next())
    }
}

fn echo(token: u64) -> Command {
    Command::custom("echo", json!({ "token": token }))
}

fn sleep_ms(ms: u64) -> Command {
    Command::custom("sleep", json!({ "ms": ms }))
}

fn exit_code(code: i32) -> Command {
    Command::custom("exit", json!({ "code": code }))
}

fn within(timeout: Duration) -> CheckoutOptions {
    CheckoutOptions {
        timeout: Some(timeout),
        ..CheckoutOptions::default()
    }
}

// --- scenario 32: the reference model ----------------------------------------------------

/// A lease held by the test, as the model sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// Its worker serves.
    Live,
    /// Its worker is SIGSTOPped (still busy as far as the pool can tell).
    Stopped,
    /// Its worker was killed; the lease outlived it (its check-in is stale).
    Dead,
}

/// The counters the model predicts exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Expected {
    checkouts: u64,
    checkins: u64,
    cancelled: u64,
    drained: u64,
    /// A lease whose worker died under it is checked in either as a removal
    /// (the check-in won the race with the exit notice) or as stale (it
    /// lost): exactly one of the two counts it.
    removed_or_stale: u64,
    restarts: u32,
}

#[derive(Debug, Clone)]
struct Model {
    size: usize,
    leases: Vec<Held>,
    /// Workers draining the reply of a dropped lease, held up by SIGSTOP (a
    /// running one finishes within the step).
    stopped_drains: usize,
    expected: Expected,
    /// What the last operation acted on: an index into `leases` (before the
    /// operation) or into the stopped drains, or the pick among idle workers.
    target: usize,
}

impl Model {
    fn busy(&self) -> usize {
        self.leases.iter().filter(|&&l| l != Held::Dead).count() + self.stopped_drains
    }

    fn idle(&self) -> usize {
        self.size - self.busy()
    }

    /// The leases an operation may act on.
    fn eligible(&self, op: &Op) -> Vec<usize> {
        let wanted: &[Held] = match op {
            Op::Echo(_) | Op::Checkin(_) => &[Held::Live, Held::Dead],
            Op::CheckinRemove(_) | Op::Stop(_) => &[Held::Live],
            Op::DropMidRequest { .. } | Op::KillBusy(_) => &[Held::Live, Held::Stopped],
            Op::ContLease(_) => &[Held::Stopped],
            _ => &[],
        };
        (0..self.leases.len())
            .filter(|&i| wanted.contains(&self.leases[i]))
            .collect()
    }
}

/// An operation. Its `pick` chooses among the leases (or stopped drains, or
/// idle workers) it may act on, modulo their number, so that deleting earlier
/// operations while shrinking leaves later ones valid.
#[derive(Debug, Clone)]
enum Op {
    /// Check out. The model knows the outcome: a lease at once if a worker
    /// is idle, else `CheckoutTimeout` after `wait_ms`.
    Checkout { wait_ms: u64 },
    /// `echo` on a lease (an error on a dead one).
    Echo(usize),
    /// Drop a lease: the worker goes back to idle (stale if it is dead).
    Checkin(usize),
    /// `exit` through a lease, then drop it: the worker is removed and
    /// replaced.
    CheckinRemove(usize),
    /// Start a `sleep` on a lease, drop the call after it is sent, then the
    /// lease: the pool drains the reply before the worker serves again.
    DropMidRequest { pick: usize, sleep_ms: u64 },
    /// SIGKILL the worker of a lease; the lease stays held, dead.
    KillBusy(usize),
    /// SIGKILL a stopped worker that is draining a dropped request.
    KillDraining(usize),
    /// SIGKILL an idle worker.
    KillIdle(usize),
    /// SIGSTOP the worker of a lease.
    Stop(usize),
    /// SIGCONT the worker of a lease.
    ContLease(usize),
    /// SIGCONT a stopped draining worker: its drain completes.
    ContDrain(usize),
}

impl Op {
    fn pick(&self) -> usize {
        match *self {
            Op::Checkout { .. } => 0,
            Op::DropMidRequest { pick, .. } => pick,
            Op::Echo(p)
            | Op::Checkin(p)
            | Op::CheckinRemove(p)
            | Op::KillBusy(p)
            | Op::KillDraining(p)
            | Op::KillIdle(p)
            | Op::Stop(p)
            | Op::ContLease(p)
            | Op::ContDrain(p) => p,
        }
    }
}

struct PoolModel;

impl ReferenceStateMachine for PoolModel {
    type State = Model;
    type Transition = Op;

    fn init_state() -> BoxedStrategy<Model> {
        (2usize..=3)
            .prop_map(|size| Model {
                size,
                leases: Vec::new(),
                stopped_drains: 0,
                expected: Expected::default(),
                target: 0,
            })
            .boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Op> {
        let pick = || 0usize..4;
        let lease_op =
            |weight: u32, op: fn(usize) -> Op| (weight, op(0), pick().prop_map(op).boxed());
        let candidates = vec![
            (
                6,
                Op::Checkout { wait_ms: 1 },
                (1u64..=10)
                    .prop_map(|wait_ms| Op::Checkout { wait_ms })
                    .boxed(),
            ),
            lease_op(3, Op::Echo),
            lease_op(5, Op::Checkin),
            lease_op(2, Op::CheckinRemove),
            (
                3,
                Op::DropMidRequest {
                    pick: 0,
                    sleep_ms: 1,
                },
                (pick(), 1u64..=5)
                    .prop_map(|(pick, sleep_ms)| Op::DropMidRequest { pick, sleep_ms })
                    .boxed(),
            ),
            lease_op(2, Op::KillBusy),
            lease_op(2, Op::KillDraining),
            lease_op(2, Op::KillIdle),
            lease_op(2, Op::Stop),
            lease_op(2, Op::ContLease),
            lease_op(2, Op::ContDrain),
        ];
        // Offer only what the state allows (no rejections while generating).
        let ops = candidates
            .into_iter()
            .filter(|(_, example, _)| Self::preconditions(state, example))
            .map(|(weight, _, strategy)| (weight, strategy))
            .collect();
        proptest::strategy::Union::new_weighted(ops).boxed()
    }

    fn preconditions(state: &Model, op: &Op) -> bool {
        match op {
            Op::Checkout { .. } => true,
            Op::KillDraining(_) | Op::ContDrain(_) => state.stopped_drains > 0,
            Op::KillIdle(_) => state.idle() > 0,
            _ => !state.eligible(op).is_empty(),
        }
    }

    fn apply(mut state: Model, op: &Op) -> Model {
        let idle = state.idle();
        let eligible = state.eligible(op);
        let lease = eligible.get(op.pick() % eligible.len().max(1)).copied();
        state.target = match op {
            Op::KillDraining(p) | Op::ContDrain(p) => p % state.stopped_drains,
            Op::KillIdle(p) => *p,
            _ => lease.unwrap_or(0),
        };
        let e = &mut state.expected;
        match *op {
            Op::Checkout { .. } => {
                if idle > 0 {
                    state.leases.push(Held::Live);
                    e.checkouts += 1;
                } else {
                    e.cancelled += 1;
                }
            }
            Op::Echo(_) => {}
            Op::Checkin(_) => {
                if state.leases.remove(state.target) == Held::Dead {
                    e.removed_or_stale += 1;
                }
                e.checkins += 1;
            }
            Op::CheckinRemove(_) => {
                state.leases.remove(state.target);
                e.checkins += 1;
                e.removed_or_stale += 1;
                e.restarts += 1;
            }
            Op::DropMidRequest { .. } => {
                e.drained += 1;
                if state.leases.remove(state.target) == Held::Stopped {
                    state.stopped_drains += 1;
                } else {
                    e.checkins += 1;
                }
            }
            Op::KillBusy(_) => {
                state.leases[state.target] = Held::Dead;
                e.restarts += 1;
            }
            Op::KillDraining(_) => {
                state.stopped_drains -= 1;
                e.checkins += 1;
                e.removed_or_stale += 1;
                e.restarts += 1;
            }
            Op::KillIdle(_) => e.restarts += 1,
            Op::Stop(_) => state.leases[state.target] = Held::Stopped,
            Op::ContLease(_) => state.leases[state.target] = Held::Live,
            Op::ContDrain(_) => {
                state.stopped_drains -= 1;
                e.checkins += 1;
            }
        }
        state
    }
}

/// The pool under test, with the leases and stopped drains the model tracks
/// (same order, same indices).
struct System {
    rt: tokio::runtime::Runtime,
    pool: Pool,
    spawner: Arc<SignalSpawner>,
    leases: Vec<Lease>,
    /// Pids of stopped workers draining a dropped request.
    drains: Vec<u32>,
    /// Pids killed in this step: they must be replaced before the check.
    gone: Vec<u32>,
    next_token: u64,
}

impl System {
    fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.rt.block_on(future)
    }

    /// Waits for the pool to reach the model's counts (restarts and drains
    /// the step caused included), settles it, then compares everything.
    fn check(&mut self, model: &Model) {
        let size = model.size;
        let (idle, busy) = (model.idle(), model.busy());
        let gone = std::mem::take(&mut self.gone);
        let status = self.block_on(wait_until(&self.pool, "the model's state", |s| {
            s.idle == idle
                && s.busy == busy
                && s.leases == busy
                && s.starting == 0
                && s.queued == 0
                && s.workers.iter().all(|w| !gone.contains(&w.pid))
        }));
        assert_whole(&status, size);
        assert!(
            status.workers.iter().all(|w| w.phase == SlotPhase::Ready),
            "{status:#?}"
        );
        assert_eq!(
            (status.idle, status.busy, status.queued, status.leases),
            (idle, busy, 0, busy),
            "the pool moved after settling; model {model:#?}; status {status:#?}"
        );
        let e = &model.expected;
        let c = &status.counters;
        let seen = (
            c.checkouts,
            c.checkins,
            c.cancelled,
            c.drained,
            c.removed + c.stale_checkins,
            status.restarts,
        );
        let wanted = (
            e.checkouts,
            e.checkins,
            e.cancelled,
            e.drained,
            e.removed_or_stale,
            e.restarts,
        );
        assert_eq!(
            seen, wanted,
            "counters; model {model:#?}; status {status:#?}"
        );
        assert_eq!((c.overloaded, c.session_lost), (0, 0), "{status:#?}");
        // Each held lease and each stopped drain is the one lease of a
        // distinct worker in service: no double hand-off.
        let mut busy_pids: Vec<u32> = self
            .leases
            .iter()
            .zip(&model.leases)
            .filter(|(_, held)| **held != Held::Dead)
            .map(|(lease, _)| lease.pid())
            .chain(self.drains.iter().copied())
            .collect();
        busy_pids.sort_unstable();
        let mut leased: Vec<u32> = status
            .workers
            .iter()
            .filter(|w| w.leases == 1)
            .map(|w| w.pid)
            .collect();
        leased.sort_unstable();
        assert_eq!(busy_pids, leased, "leases vs workers; status {status:#?}");
        for (lease, held) in self.leases.iter().zip(&model.leases) {
            if *held == Held::Dead {
                assert!(
                    !status.pids().contains(&lease.pid()),
                    "a killed worker is still in service: {status:#?}"
                );
            }
        }
    }
}

impl StateMachineTest for PoolModel {
    type SystemUnderTest = System;
    type Reference = PoolModel;

    fn init_test(model: &Model) -> System {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (pool, spawner) = rt.block_on(start_pool(model.size));
        let mut system = System {
            rt,
            pool,
            spawner,
            leases: Vec::new(),
            drains: Vec::new(),
            gone: Vec::new(),
            next_token: 1,
        };
        system.check(model);
        system
    }

    fn apply(mut sys: System, model: &Model, op: Op) -> System {
        let call = CallOptions::default();
        let t = model.target;
        match op {
            Op::Checkout { wait_ms } => {
                let expect_lease = model.leases.len() > sys.leases.len();
                let wait = if expect_lease {
                    PATIENCE
                } else {
                    Duration::from_millis(wait_ms)
                };
                let started = Instant::now();
                match sys.block_on(sys.pool.checkout(within(wait))) {
                    Ok(lease) if expect_lease => sys.leases.push(lease),
                    Err(PoolError::CheckoutTimeout(after)) if !expect_lease => {
                        assert_eq!(after, wait);
                        assert!(started.elapsed() >= wait);
                    }
                    other => panic!("checkout: expected a lease: {expect_lease}, got {other:?}"),
                }
            }
            Op::Echo(_) => {
                let token = sys.next_token;
                sys.next_token += 1;
                let lease = &mut sys.leases[t];
                let reply = sys.rt.block_on(patiently(lease.call(echo(token), call)));
                match model.leases[t] {
                    Held::Live => assert_eq!(reply.expect("echo"), json!({ "token": token })),
                    _ => assert!(reply.is_err(), "a dead worker answered: {reply:?}"),
                }
            }
            Op::Checkin(_) => drop(sys.leases.remove(t)),
            Op::CheckinRemove(_) => {
                let mut lease = sys.leases.remove(t);
                let pid = lease.pid();
                match sys.rt.block_on(patiently(lease.call(exit_code(3), call))) {
                    Err(WorkerError::WorkerExited { exit, .. }) => assert_eq!(exit, Exit::Code(3)),
                    other => panic!("exit: {other:?}"),
                }
                drop(lease);
                sys.gone.push(pid);
            }
            Op::DropMidRequest { sleep_ms: nap, .. } => {
                let mut lease = sys.leases.remove(t);
                let pid = lease.pid();
                let stays_stopped = model.stopped_drains > sys.drains.len();
                // A running worker is held still until the call is dropped:
                // a test thread descheduled between sending and polling
                // could otherwise see the reply already in.
                if !stays_stopped {
                    sys.spawner.signal(pid, Signal::SIGSTOP);
                }
                {
                    let mut call = pin!(lease.call(sleep_ms(nap), call));
                    let polled = sys.block_on(async { futures::poll!(call.as_mut()) });
                    assert!(polled.is_pending(), "a stopped worker answered: {polled:?}");
                }
                drop(lease);
                if stays_stopped {
                    sys.drains.push(pid);
                } else {
                    sys.spawner.signal(pid, Signal::SIGCONT);
                }
            }
            Op::KillBusy(_) => {
                let pid = sys.leases[t].pid();
                sys.spawner.kill(pid);
                sys.gone.push(pid);
            }
            Op::KillDraining(_) => {
                let pid = sys.drains.remove(t);
                sys.spawner.kill(pid);
                sys.gone.push(pid);
            }
            Op::KillIdle(_) => {
                let status = sys.pool.status();
                let idle: Vec<u32> = status
                    .workers
                    .iter()
                    .filter(|w| w.phase == SlotPhase::Ready && w.leases == 0)
                    .map(|w| w.pid)
                    .collect();
                let pid = idle[t % idle.len()];
                sys.spawner.kill(pid);
                sys.gone.push(pid);
            }
            Op::Stop(_) => sys.spawner.signal(sys.leases[t].pid(), Signal::SIGSTOP),
            Op::ContLease(_) => sys.spawner.signal(sys.leases[t].pid(), Signal::SIGCONT),
            Op::ContDrain(_) => {
                let pid = sys.drains.remove(t);
                sys.spawner.signal(pid, Signal::SIGCONT);
            }
        }
        sys.check(model);
        sys
    }

    fn teardown(sys: System, _model: Model) {
        let System {
            rt,
            pool,
            spawner,
            leases,
            ..
        } = sys;
        spawner.cont_all();
        drop(leases);
        let stragglers = rt.block_on(patiently(pool.shutdown(Duration::from_secs(2))));
        assert_eq!(stragglers, 0);
        assert_eq!(pool.status().state, PoolState::Stopped);
        rt.shutdown_timeout(Duration::from_secs(1));
    }
}

prop_state_machine! {
    #![proptest_config(Config {
        // PROPTEST_CASES (default 256) sets the number of cases.
        max_shrink_iters: 4096,
        // tests/pool_model.proptest-regressions, replayed before new cases.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions"
        ))),
        ..Config::default()
    })]

    #[test]
    fn scenario_32_the_pool_follows_its_model(sequential 1..40 => PoolModel);
}

// --- scenario 6: the hand-off/timeout race -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_6_a_worker_handed_to_a_caller_that_gave_up_goes_straight_back() {
    let (pool, _spawner) = start_pool(2).await;
    let pids = pool.status().pids();
    let mut leases = vec![
        pool.checkout(within(PATIENCE)).await.unwrap(),
        pool.checkout(within(PATIENCE)).await.unwrap(),
    ];
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.checkout(within(Duration::from_millis(250))).await }
    });
    wait_until(&pool, "the caller queued", |s| s.queued == 1).await;

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
    let status = wait_until(&pool, "all back", |s| s.idle == 2).await;
    assert_at_rest(&status, 2);
    pool.shutdown(Duration::from_secs(2)).await;
}

/// Callers whose checkout timeout is about the service time of the callers
/// before them: workers come back just as their callers give up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_6_randomised_timeouts_about_the_service_time_leak_nothing() {
    const SIZE: usize = 4;
    let iterations = env_usize("DSPEX_POOL_RACE_ITERATIONS", 2_000);
    let mut rng = Rng::from_env("scenario_6_randomised");
    let (pool, _spawner) = start_pool(SIZE).await;
    let pids = pool.status().pids();
    let (mut served, mut timed_out) = (0u64, 0u64);
    let started = Instant::now();
    for iteration in 0..iterations {
        let service = 1 + rng.below(4);
        let mut holders = Vec::new();
        for _ in 0..SIZE {
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
        assert_at_rest(&status, SIZE);
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
        "scenario 6: {iterations} iterations in {:?}; {served} waiters served, {timed_out} timed out \
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
    pool.shutdown(Duration::from_secs(2)).await;
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
    const SIZE: usize = 4;
    const BATCH: u64 = 8;
    let callers = env_usize("DSPEX_POOL_DROP_CALLERS", 5_000) as u64;
    let mut rng = Rng::from_env("scenario_8");
    let (pool, _spawner) = start_pool(SIZE).await;
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
        let status = wait_until(&pool, "drains done", |s| s.idle == SIZE).await;
        assert_at_rest(&status, SIZE);
        assert_eq!(status.restarts, 0, "{status:#?}");
        assert_eq!(status.pids(), pids, "a worker was replaced");
    }
    let status = pool.status();
    let delivered = tally.delivered.load(Ordering::Relaxed);
    eprintln!(
        "scenario 8: {callers} callers in {:?}; {delivered} delivered, {} drained, {} cancelled while queued",
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
    pool.shutdown(Duration::from_secs(2)).await;
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
    pool.shutdown(Duration::from_secs(2)).await;
}
