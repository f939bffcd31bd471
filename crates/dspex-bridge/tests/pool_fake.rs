//! The pool against in-process fake workers (the real codec, worker actors
//! and supervisors; no Python), where thousands of operations run fast.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dspex_bridge::fake::FakeSpawner;
use dspex_bridge::pool::{
    CheckoutOptions, Pool, PoolConfig, PoolError, PoolEvent, PoolState, RequestOptions, Run,
    Session,
};
use dspex_bridge::{InterpreterSource, PythonEnv, WorkerError};
use dspex_protocol::{Command, FieldSpec, LmConfig, ProgramDefinition, SignatureSpec, Value};
use serde_json::json;

fn fake_python() -> PythonEnv {
    PythonEnv {
        interpreter: "fake-python".into(),
        source: InterpreterSource::Explicit,
        package_root: "/nonexistent".into(),
        project: None,
        layer: None,
    }
}

async fn pool(config: PoolConfig) -> Pool {
    let config = PoolConfig {
        spawner: Some(Arc::new(FakeSpawner::default())),
        sweep_orphans: false,
        // These tests count a worker busy with one lease.
        per_worker_concurrency: 1,
        ..config
    };
    let pool = Pool::start_on(config, fake_python())
        .await
        .expect("pool starts");
    let mut status = pool.status_watch();
    tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| s.idle == s.workers.len() && !s.workers.is_empty()),
    )
    .await
    .expect("workers ready in time")
    .expect("pool alive");
    pool
}

fn echo(n: u64) -> Command {
    Command::custom("echo", json!({ "n": n }))
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_are_served_and_counted() {
    let pool = pool(PoolConfig::default()).await;
    let status = pool.status();
    assert_eq!((status.idle, status.busy, status.starting), (4, 0, 0));
    for n in 0..20 {
        let reply = pool.call(echo(n), RequestOptions::default()).await.unwrap();
        assert_eq!(reply, json!({ "n": n }));
    }
    pool.settled().await;
    let status = pool.status();
    assert_eq!(status.counters.checkouts, 20);
    assert_eq!(status.idle, 4);
    assert_eq!(status.leases, 0);
    pool.shutdown(Duration::from_secs(5), Duration::from_secs(5))
        .await;
    assert_eq!(pool.status().state, PoolState::Stopped);
}

#[tokio::test(flavor = "multi_thread")]
async fn checkout_times_out_when_every_worker_is_busy() {
    let pool = pool(PoolConfig::default()).await;
    let mut leases = Vec::new();
    for _ in 0..4 {
        leases.push(pool.checkout(CheckoutOptions::default()).await.unwrap());
    }
    assert_eq!(pool.status().busy, 4);
    let started = Instant::now();
    let error = pool
        .checkout(CheckoutOptions {
            timeout: Some(Duration::from_millis(100)),
            ..CheckoutOptions::default()
        })
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert!(matches!(error, PoolError::CheckoutTimeout(_)), "{error:?}");
    assert!(waited >= Duration::from_millis(100) && waited < Duration::from_millis(300));
    drop(leases);
    let mut status = pool.status_watch();
    status
        .wait_for(|s| s.idle == 4 && s.queued == 0)
        .await
        .unwrap();
    assert_eq!(pool.status().restarts, 0);
    pool.shutdown(Duration::from_secs(5), Duration::from_secs(5))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn programs_are_sent_only_to_workers_that_lack_them() {
    let pool = pool(PoolConfig::default()).await;
    pool.configure_lm(LmConfig::dummy()).await.unwrap();
    let program = ProgramDefinition {
        program_id: "qa".into(),
        signature: SignatureSpec {
            name: "QA".into(),
            instructions: String::new(),
            inputs: vec![FieldSpec::new("q", "str")],
            outputs: vec![FieldSpec::new("a", "str"), FieldSpec::new("n", "int")],
        },
        module: "predict".into(),
        ..ProgramDefinition::default()
    };
    let program = pool.create_program(program).await.unwrap();
    assert_eq!(program.hash.len(), 64);
    for i in 0..12 {
        let inputs = json!({ "q": format!("question {i}") });
        let Value::Object(inputs) = inputs else {
            unreachable!()
        };
        let out = pool
            .execute(&program, Run::once(inputs), RequestOptions::default())
            .await
            .unwrap();
        assert!(out["outputs"]["a"].as_str().unwrap().starts_with("a: "));
        assert!(out["outputs"]["n"].is_u64());
    }
    // Every worker has now loaded it once.
    let status = pool.status();
    assert!(status.workers.iter().all(|w| w.programs == 1), "{status:?}");
    pool.shutdown(Duration::from_secs(5), Duration::from_secs(5))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stateful_session_is_lost_with_its_worker() {
    let pool = pool(PoolConfig::default()).await;
    let session = CheckoutOptions {
        session: Some(Session::stateful("s1")),
        ..CheckoutOptions::default()
    };
    let options = RequestOptions {
        checkout: session.clone(),
        ..RequestOptions::default()
    };
    let lease = pool.checkout(session.clone()).await.unwrap();
    let pid = lease.pid();
    drop(lease);
    for _ in 0..5 {
        let lease = pool.checkout(session.clone()).await.unwrap();
        assert_eq!(lease.pid(), pid, "a stateful session stays on its worker");
    }
    let mut events = pool.subscribe();
    let mut lease = pool.checkout(session.clone()).await.unwrap();
    let error = lease
        .call(
            Command::custom("exit", json!({"code": 1})),
            Default::default(),
        )
        .await;
    assert!(matches!(error, Err(WorkerError::WorkerExited { .. })));
    drop(lease);
    loop {
        if let PoolEvent::SessionLost { session_id } = events.recv().await.unwrap() {
            assert_eq!(session_id, "s1");
            break;
        }
    }
    let error = pool.call(echo(1), options).await.unwrap_err();
    assert!(matches!(error, PoolError::SessionLost { ref session_id } if session_id == "s1"));
    // Other sessions and plain calls are unaffected.
    assert_eq!(
        pool.call(echo(2), RequestOptions::default()).await.unwrap(),
        json!({"n": 2})
    );
    pool.shutdown(Duration::from_secs(5), Duration::from_secs(5))
        .await;
}
