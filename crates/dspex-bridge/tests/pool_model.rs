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

mod pool_harness;

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dspex_bridge::pool::{Lease, Pool, PoolError, PoolState, SlotPhase};
use dspex_bridge::process::Exit;
use dspex_bridge::{CallOptions, WorkerError};
use nix::sys::signal::Signal;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};
use serde_json::json;

/// How long anything the pool should do at once may take on a loaded CI machine.
use pool_harness::*;

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
                let worker = lease.worker().clone();
                {
                    let mut call = pin!(lease.call(sleep_ms(nap), call));
                    let polled = sys.block_on(async { futures::poll!(call.as_mut()) });
                    assert!(polled.is_pending(), "a stopped worker answered: {polled:?}");
                    // The actor serves its mailbox in order: once it has
                    // answered this, it has sent the request (a request
                    // whose caller is gone before that is never sent).
                    sys.block_on(worker.info()).unwrap();
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
        let stragglers = rt.block_on(patiently(
            pool.shutdown(Duration::from_secs(2), Duration::from_secs(2)),
        ));
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
