//! Pool mode's state, against the real Python worker: sessions (scenarios
//! 22 and 23), the LM and programs as pool state.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dspex_bridge::pool::ProgramVersion;
use dspex_bridge::pool::{
    CheckoutOptions, Lease, PoolConfig, PoolError, PoolEvent, PoolStatus, RequestOptions, Run,
    Session, SlotPhase,
};
use dspex_bridge::{CallOptions, WorkerError};
use dspex_protocol::{
    Command, ErrorKind, FieldSpec, LmConfig, ProgramDefinition, SignatureSpec, Value,
};
use dspex_testkit::{TestPool, wait_event};
use dspex_tests::pool::{
    BOOT, echo, full_without, hold_all, in_session, percentile, ping_pid, random_below, start,
};
use nix::sys::signal::Signal;
use serde_json::json;

/// Scenario 22: a stateful session pinned to worker W; W is SIGKILLed → the
/// session's next call gets `SessionLost{session_id}` (≤ 100 ms after the
/// kill is seen), and so does every later one, even once W's replacement
/// serves: 0 calls run on another worker. W's session-table entry is gone
/// ≤ 1 s after the kill; the other sessions are unaffected. Ending the
/// session lets its id start afresh.
#[tokio::test(flavor = "multi_thread")]
async fn s22_pinned_session_is_lost_with_its_worker_never_moved() {
    let (pool, _) = start(TestPool::config()).await;
    let pinned = Session::stateful("s22-pinned");
    let other = Session::stateful("s22-other");
    let loose = Session::new("s22-loose");
    // Three sessions on three workers: each checks out while the others hold theirs.
    let mut held = Vec::new();
    for session in [&pinned, &other, &loose] {
        let options = CheckoutOptions {
            session: Some(session.clone()),
            ..CheckoutOptions::default()
        };
        held.push(pool.pool().checkout(options).await.unwrap());
    }
    let (w, w_other) = (held[0].pid(), held[1].pid());
    drop(held);
    assert_eq!(ping_pid(&pool, &pinned).await.unwrap(), w);
    assert_eq!(ping_pid(&pool, &other).await.unwrap(), w_other);
    assert_eq!(pool.pool().status().sessions, 3);

    let mut events = pool.events();
    let killed_at = Instant::now();
    pool.signal(w, Signal::SIGKILL).unwrap();
    // Racing the detection, the call reaches the dead W or is refused: it
    // never runs elsewhere.
    let racing = ping_pid(&pool, &pinned).await;
    assert!(
        matches!(
            racing,
            Err(PoolError::SessionLost { .. } | PoolError::Worker(WorkerError::WorkerExited { .. }))
        ),
        "{racing:?}"
    );
    let mut lost_event = false;
    wait_event(&mut events, BOOT, |e| {
        lost_event |=
            matches!(e, PoolEvent::SessionLost { session_id } if session_id == "s22-pinned");
        matches!(e, PoolEvent::WorkerExited { pid, .. } if *pid == w)
    })
    .await
    .unwrap();
    let detected = Instant::now();
    let error = ping_pid(&pool, &pinned).await.unwrap_err();
    let lost_after = detected.elapsed();
    assert!(
        matches!(&error, PoolError::SessionLost { session_id } if session_id == "s22-pinned"),
        "{error:?}"
    );
    let status = pool
        .wait_status(Duration::from_secs(1), |s| s.sessions == 2)
        .await
        .unwrap();
    let entry_gone = killed_at.elapsed();
    assert!(lost_event || status.counters.session_lost > 0);
    // Once W's replacement serves, the session still never runs there.
    pool.wait_status(BOOT, |s| full_without(s, 4, w))
        .await
        .unwrap();
    for _ in 0..20 {
        let error = ping_pid(&pool, &pinned).await.unwrap_err();
        assert!(matches!(error, PoolError::SessionLost { .. }), "{error:?}");
    }
    // The other sessions are unaffected.
    assert_eq!(ping_pid(&pool, &other).await.unwrap(), w_other);
    assert!(ping_pid(&pool, &loose).await.is_ok());
    println!(
        "scenario 22: kill seen {:?} after it; SessionLost {lost_after:?} after that; \
         session entry gone {entry_gone:?} after the kill",
        detected - killed_at
    );
    assert!(lost_after <= Duration::from_millis(100), "{lost_after:?}");
    // A new session under the same id starts afresh once the old one is ended.
    pool.pool().end_session("s22-pinned");
    pool.pool().settled().await;
    assert!(ping_pid(&pool, &pinned).await.is_ok());
    let status = pool.pool().status();
    assert_eq!(status.restarts, 1);
    pool.finish().await;
}

/// Scenario 23: a stateful session pinned to a busy worker W; 50 calls for
/// that session plus 50 unpinned ones → 100 % of the pinned calls run on W,
/// in order; the unpinned calls are served by the other workers meanwhile
/// (all of them done before W's queue drains); a pinned call honours its
/// checkout timeout.
#[tokio::test(flavor = "multi_thread")]
async fn s23_pinned_calls_queue_behind_their_worker_only() {
    let (pool, _) = start(TestPool::config()).await;
    let pinned = Session::stateful("s23-pinned");
    let w = ping_pid(&pool, &pinned).await.unwrap();
    // The ping's check-in first, so that the lease seen below is the sleep's.
    pool.pool().settled().await;
    let slot = |s: &PoolStatus| s.workers.iter().find(|x| x.pid == w).cloned().unwrap();
    let busy = {
        let (p, options) = (pool.pool().clone(), in_session(&pinned));
        tokio::spawn(async move {
            p.call(Command::custom("sleep", json!({"ms": 500})), options)
                .await
        })
    };
    pool.wait_status(Duration::from_secs(5), |s| slot(s).leases == 1)
        .await
        .unwrap();
    // Pinned calls wait for W only as long as their checkout timeout.
    let mut hurried = in_session(&pinned);
    hurried.checkout.timeout = Some(Duration::from_millis(100));
    let started = Instant::now();
    let error = pool.pool().call(Command::Ping, hurried).await.unwrap_err();
    let waited = started.elapsed();
    assert!(matches!(error, PoolError::CheckoutTimeout(_)), "{error:?}");
    assert!(
        waited >= Duration::from_millis(100) && waited < Duration::from_millis(400),
        "{waited:?}"
    );
    pool.wait_status(Duration::from_secs(5), |s| s.queued == 0)
        .await
        .unwrap();

    // 50 pinned calls of 10 ms each, queued in a known order.
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut pinned_calls = Vec::new();
    for k in 0..50 {
        let (p, order, session) = (pool.pool().clone(), Arc::clone(&order), pinned.clone());
        let options = CheckoutOptions {
            session: Some(session.clone()),
            ..CheckoutOptions::default()
        };
        pinned_calls.push(tokio::spawn(async move {
            p.with_worker(options, async move |lease: &mut Lease| {
                order.lock().unwrap().push((k, lease.pid()));
                let call = CallOptions {
                    session_id: Some(session.id.clone()),
                    ..CallOptions::default()
                };
                let reply = lease
                    .call(Command::custom("sleep", json!({"ms": 10})), call)
                    .await;
                reply.map(|_| Instant::now())
            })
            .await
        }));
        pool.wait_status(Duration::from_secs(5), |s| slot(s).queued == k + 1)
            .await
            .unwrap();
    }
    // 50 unpinned calls at once.
    let unpinned: Vec<_> = (0..50)
        .map(|n| {
            let p = pool.pool().clone();
            tokio::spawn(async move {
                let started = Instant::now();
                p.with_worker(
                    CheckoutOptions::default(),
                    async move |lease: &mut Lease| {
                        let reply = lease
                            .call(echo(json!({"n": n})), CallOptions::default())
                            .await;
                        assert_eq!(reply.unwrap(), json!({"n": n}));
                        (lease.pid(), started.elapsed(), Instant::now())
                    },
                )
                .await
                .unwrap()
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut unpinned_done = Vec::new();
    for call in unpinned {
        let (pid, latency, done) = call.await.unwrap();
        assert_ne!(pid, w, "an unpinned call waited for the busy pinned worker");
        latencies.push(latency);
        unpinned_done.push(done);
    }
    busy.await.unwrap().unwrap();
    let mut pinned_done = Vec::new();
    for call in pinned_calls {
        pinned_done.push(call.await.unwrap().unwrap().unwrap());
    }
    let order = order.lock().unwrap().clone();
    assert_eq!(order, (0..50).map(|k| (k, w)).collect::<Vec<_>>());
    latencies.sort();
    let (last_unpinned, last_pinned) = (
        unpinned_done.iter().max().unwrap(),
        pinned_done.iter().max().unwrap(),
    );
    println!(
        "scenario 23: 50/50 pinned calls on W in order; unpinned p50 {:?} p99 {:?}; \
         last unpinned done {:?} before W's queue drained",
        latencies[25],
        percentile(&latencies, 99),
        last_pinned.duration_since(*last_unpinned),
    );
    assert!(last_unpinned < last_pinned);
    let status = pool.pool().status();
    assert_eq!((status.queued, status.restarts), (0, 0));
    pool.finish().await;
}

/// A config for tests that run DSPy: the first DSPy command of each worker
/// imports it (about 1.2 s alone, several seconds with 4 at once on 2 cores).
fn dspy_config() -> PoolConfig {
    let mut config = TestPool::config();
    config.worker.request_timeout = Duration::from_secs(120);
    config.checkout_timeout = Duration::from_secs(120);
    config
}

/// The worker's `get_stats`.
async fn stats(lease: &mut Lease) -> Value {
    lease
        .call(Command::GetStats, CallOptions::default())
        .await
        .unwrap()
}

/// How many times the worker ran `command`.
fn ran(stats: &Value, command: &str) -> u64 {
    stats["requests"]["by_command"][command]
        .as_u64()
        .unwrap_or(0)
}

/// The LM is pool state: `configure_lm(dummy)` reaches every worker (each
/// reports the `dummy` LM, configured once); a bad configuration is an
/// error that changes nothing (`lm_generation` and every worker's LM as
/// they were, no restart); a worker replacing a killed one receives the LM
/// before it serves (its first request finds it configured).
#[tokio::test(flavor = "multi_thread")]
async fn lm_configuration_is_pool_state() {
    let (pool, _) = start(dspy_config()).await;
    assert_eq!(
        pool.pool().configure_lm(LmConfig::dummy()).await.unwrap(),
        1
    );
    let mut leases = hold_all(&pool, 4).await;
    for lease in &mut leases {
        let stats = stats(lease).await;
        assert_eq!(stats["lm"], json!("dummy"), "{stats}");
        assert_eq!(ran(&stats, "configure_lm"), 1, "{stats}");
    }
    drop(leases);

    let mut no_model = LmConfig::dummy();
    no_model.model = String::new();
    let mut wrong_type = LmConfig::dummy();
    wrong_type.extra.insert("latency_ms".into(), json!("fast"));
    for bad in [no_model, wrong_type] {
        let error = pool.pool().configure_lm(bad.clone()).await.unwrap_err();
        assert!(
            matches!(&error, PoolError::Worker(WorkerError::Remote(e)) if e.kind == ErrorKind::InvalidArguments),
            "{bad:?}: {error:?}"
        );
    }
    pool.pool().settled().await;
    assert_eq!(pool.pool().status().lm_generation, 1);
    let mut leases = hold_all(&pool, 4).await;
    for lease in &mut leases {
        assert_eq!(stats(lease).await["lm"], json!("dummy"));
    }
    drop(leases);

    // A replacement is configured before it serves.
    let phases = Arc::new(Mutex::new(Vec::new()));
    let watcher = {
        let (mut status, phases) = (pool.pool().status_watch(), Arc::clone(&phases));
        tokio::spawn(async move {
            loop {
                let seen: Vec<(u32, SlotPhase)> = status
                    .borrow_and_update()
                    .workers
                    .iter()
                    .map(|w| (w.pid, w.phase))
                    .collect();
                phases.lock().unwrap().extend(seen);
                if status.changed().await.is_err() {
                    return;
                }
            }
        })
    };
    let before = pool.pool().status().pids();
    let victim = before[random_below(before.len())];
    pool.signal(victim, Signal::SIGKILL).unwrap();
    let status = pool
        .wait_status(BOOT, |s| full_without(s, 4, victim))
        .await
        .unwrap();
    watcher.abort();
    let fresh = *status.pids().iter().find(|p| !before.contains(p)).unwrap();
    let seen = phases.lock().unwrap().clone();
    let configuring = seen
        .iter()
        .position(|&s| s == (fresh, SlotPhase::Configuring));
    let ready = seen.iter().position(|&s| s == (fresh, SlotPhase::Ready));
    // (The watcher may not have recorded the final Ready yet.)
    assert!(
        configuring.is_some() && ready.is_none_or(|r| Some(r) > configuring),
        "{seen:?}"
    );
    let mut leases = hold_all(&pool, 4).await;
    let lease = leases.iter_mut().find(|l| l.pid() == fresh).unwrap();
    let stats = stats(lease).await;
    assert_eq!(stats["lm"], json!("dummy"), "{stats}");
    // Its first request found the LM there: configure_lm, then this.
    assert_eq!(
        stats["requests"]["by_command"],
        json!({"configure_lm": 1, "get_stats": 1}),
        "{stats}"
    );
    drop(leases);
    assert_eq!(pool.pool().status().restarts, 1);
    pool.finish().await;
}

/// Runs `program_id` on 4 workers at once (the LM's latency keeps each
/// worker busy while the others check out); every run must succeed.
async fn execute_on_every_worker(pool: &TestPool, program: &ProgramVersion) {
    let runs: Vec<_> = (0..4)
        .map(|n| {
            let p = pool.pool().clone();
            let program = program.clone();
            tokio::spawn(async move {
                let Value::Object(inputs) = json!({"question": format!("question {n}")}) else {
                    unreachable!()
                };
                p.execute(&program, Run::once(inputs), RequestOptions::default())
                    .await
            })
        })
        .collect();
    for run in runs {
        let reply = run.await.unwrap().unwrap();
        assert!(reply["outputs"]["answer"].is_string(), "{reply}");
    }
    pool.pool().settled().await;
}

/// Programs are pool state: created once (validated on one worker), a
/// program runs on every worker, the definition going along to each worker
/// that lacks it; after a worker is killed, its replacement runs the
/// program without the caller doing anything.
#[tokio::test(flavor = "multi_thread")]
async fn programs_run_on_every_worker_and_survive_a_restart() {
    let (pool, _) = start(dspy_config()).await;
    let mut lm = LmConfig::dummy();
    lm.extra.insert("latency_ms".into(), json!(300));
    pool.pool().configure_lm(lm).await.unwrap();
    let program = ProgramDefinition {
        program_id: "qa".into(),
        signature: SignatureSpec {
            name: "QuestionAnswer".into(),
            instructions: "Answer the question.".into(),
            inputs: vec![FieldSpec::new("question", "str")],
            outputs: vec![FieldSpec::new("answer", "str")],
        },
        module: "predict".into(),
        ..ProgramDefinition::default()
    };
    let program = pool.pool().create_program(program).await.unwrap();
    pool.pool().settled().await;
    let loaded = |s: &PoolStatus| s.workers.iter().map(|w| w.programs).collect::<Vec<_>>();
    assert_eq!(loaded(&pool.pool().status()).iter().sum::<usize>(), 1);

    execute_on_every_worker(&pool, &program).await;
    assert_eq!(loaded(&pool.pool().status()), [1, 1, 1, 1]);
    let mut leases = hold_all(&pool, 4).await;
    let mut created = 0;
    for lease in &mut leases {
        let stats = stats(lease).await;
        assert_eq!(stats["programs"], json!(1), "{stats}");
        created += ran(&stats, "create_program");
    }
    assert_eq!(
        created, 1,
        "created once; the other workers got it with execute"
    );
    drop(leases);

    let before = pool.pool().status().pids();
    let victim = before[random_below(before.len())];
    pool.signal(victim, Signal::SIGKILL).unwrap();
    let status = pool
        .wait_status(BOOT, |s| full_without(s, 4, victim))
        .await
        .unwrap();
    assert_eq!(loaded(&status).iter().sum::<usize>(), 3);
    execute_on_every_worker(&pool, &program).await;
    let status = pool.pool().status();
    assert_eq!(loaded(&status), [1, 1, 1, 1]);
    assert_eq!(status.restarts, 1);
    pool.finish().await;
}
