//! Stopping workers and what their end takes with it (scenarios 24, 28 and
//! 29 of the reliability contract, and the graceful stop).
//!
//! - G5, the escalating stop: close stdin → grace → SIGTERM to the group →
//!   grace → SIGKILL → reap. A healthy worker leaves at the first step with
//!   exit code 0; one that ignores both EOF and SIGTERM is killed.
//! - G1, EOF means exit: pipes are close-on-exec, so a worker spawned later
//!   never holds an earlier worker's stdin open.
//! - G3, process groups: a worker's descendants die with it.
//!
//! Budgets are generous multiples of the configured graces; each test prints
//! its measured figures (`cargo test -- --nocapture`).

use std::time::{Duration, Instant};

use dspex_bridge::SpawnMode;
use dspex_bridge::pool::{PoolError, RequestOptions};
use dspex_bridge::process::{Exit, StopGrace, proc_stat, tagged_processes};
use dspex_bridge::worker::WorkerEvent;
use dspex_protocol::{Command, Value};
use dspex_testkit::{TestPool, TestPoolBuilder, TestTree, poll_until, wait_event};
use nix::sys::signal::Signal;
use serde_json::json;

const BOOT: Duration = Duration::from_secs(30);

/// How long a shutdown may take before the supervisor is killed; far above
/// every stop tested here.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a shutdown lets requests in flight finish.
const DRAIN: Duration = Duration::from_secs(5);

/// Starts a tree and waits for its worker; returns it with T_boot.
async fn ready_tree(builder: TestPoolBuilder) -> (TestPool, Duration) {
    let tree = builder.start().await.expect("tree starts");
    tree.ready(BOOT).await.expect("worker ready");
    let t_boot = tree.started().elapsed();
    (tree, t_boot)
}

/// Waits for the `Exited` event of worker `pid`; returns its exit and
/// whether the stop was requested.
async fn exited(
    events: &mut tokio::sync::broadcast::Receiver<WorkerEvent>,
    pid: u32,
    timeout: Duration,
) -> (Exit, bool) {
    let event = wait_event(
        events,
        timeout,
        |e| matches!(e, WorkerEvent::Exited { pid: p, .. } if *p == pid),
    )
    .await
    .unwrap_or_else(|e| panic!("worker {pid} did not exit: {e}"));
    let WorkerEvent::Exited {
        exit, requested, ..
    } = event
    else {
        unreachable!()
    };
    (exit, requested)
}

fn alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|s| s.state != 'Z')
}

/// Scenario 28: the worker ignores SIGTERM and EOF (`ignore_shutdown`); the
/// stop escalates to SIGKILL after both graces (300 ms + 300 ms here).
///
/// Pass figure: the stop completes ≤ 2 × grace + 0.5 s (asserted with 1 s
/// more of slack) and never before both graces have passed; the exit is
/// reported as signal 9, requested.
#[tokio::test(flavor = "multi_thread")]
async fn s28_worker_ignoring_eof_and_sigterm_is_killed_after_the_grace() {
    worker_ignoring_eof_and_sigterm_is_killed_after_the_grace(SpawnMode::default()).await;
}

/// The same with directly spawned workers.
#[tokio::test(flavor = "multi_thread")]
async fn s28_worker_ignoring_eof_and_sigterm_is_killed_after_the_grace_direct() {
    worker_ignoring_eof_and_sigterm_is_killed_after_the_grace(SpawnMode::Direct).await;
}

async fn worker_ignoring_eof_and_sigterm_is_killed_after_the_grace(spawn: SpawnMode) {
    let grace = StopGrace {
        after_eof: Duration::from_millis(300),
        after_term: Duration::from_millis(300),
    };
    let (tree, _) = ready_tree(
        TestTree::builder()
            .with(|c| c.spawn = spawn.clone())
            .stop_grace(grace),
    )
    .await;
    let pid = tree.worker_pid().unwrap();
    let reply = tree.command("ignore_shutdown", json!({})).await.unwrap();
    assert_eq!(reply["ignoring"], json!(["SIGTERM", "EOF"]));

    let mut events = tree.worker_events();
    let stopping = Instant::now();
    let stragglers = tree.pool().shutdown(DRAIN, SHUTDOWN_TIMEOUT).await;
    let took = stopping.elapsed();
    assert_eq!(stragglers, 0);
    let (exit, requested) = exited(&mut events, pid, Duration::from_secs(5)).await;
    assert_eq!(exit, Exit::Signal(9));
    assert!(requested, "a stop is a requested exit");

    let both = grace.after_eof + grace.after_term;
    let figure = both + Duration::from_millis(500);
    assert!(took >= both, "stopped in {took:?}: a grace was cut short");
    assert!(
        took <= figure + Duration::from_secs(1),
        "stop took {took:?}, figure {figure:?}"
    );
    assert!(!alive(pid));
    println!("s28: stop of a worker ignoring EOF and SIGTERM took {took:?} (figure {figure:?})");
    tree.finish().await;
}

/// The graceful stop: a healthy, idle worker leaves on the EOF alone, with
/// exit code 0, long before the grace would send SIGTERM (whose handler also
/// exits 0, hence the 10 s grace that the stop must not reach).
#[tokio::test(flavor = "multi_thread")]
async fn graceful_stop_exits_0_on_eof() {
    let grace = StopGrace {
        after_eof: Duration::from_secs(10),
        after_term: Duration::from_secs(10),
    };
    let (tree, t_boot) = ready_tree(TestTree::builder().stop_grace(grace)).await;
    let pid = tree.worker_pid().unwrap();
    assert_eq!(tree.command("echo", json!({})).await.unwrap(), json!({}));

    let mut events = tree.worker_events();
    let stopping = Instant::now();
    let stragglers = tree.pool().shutdown(DRAIN, SHUTDOWN_TIMEOUT).await;
    let took = stopping.elapsed();
    assert_eq!(stragglers, 0);
    let (exit, requested) = exited(&mut events, pid, Duration::from_secs(5)).await;
    assert_eq!(exit, Exit::Code(0));
    assert!(requested);
    assert!(
        took < grace.after_eof,
        "stop took {took:?}: the worker did not leave on EOF"
    );
    // After the shutdown the pool refuses calls instead of hanging.
    let error = tree.command("echo", json!({})).await.unwrap_err();
    assert!(matches!(error, PoolError::ShuttingDown), "{error:?}");
    println!("graceful stop: exit 0 on EOF in {took:?} (T_boot {t_boot:?})");
    tree.finish().await;
}

/// Scenario 24: EOF reaches a worker while its siblings run. Trees B and C
/// are started after A, so their workers were forked while A's stdin pipe
/// existed: had its write end leaked into them (no close-on-exec), A would
/// never see the EOF.
///
/// Pass figure: A exits ≤ 200 ms after its stdin is closed (asserted < 1 s);
/// B and C unaffected (their in-flight requests and later ones succeed, same
/// pids, 0 restarts).
#[tokio::test(flavor = "multi_thread")]
async fn s24_eof_reaches_a_worker_while_its_siblings_run() {
    eof_reaches_a_worker_while_its_siblings_run(SpawnMode::default()).await;
}

/// The same with directly spawned workers.
#[tokio::test(flavor = "multi_thread")]
async fn s24_eof_reaches_a_worker_while_its_siblings_run_direct() {
    eof_reaches_a_worker_while_its_siblings_run(SpawnMode::Direct).await;
}

async fn eof_reaches_a_worker_while_its_siblings_run(spawn: SpawnMode) {
    let (a, _) = ready_tree(TestTree::builder().with(|c| c.spawn = spawn.clone())).await;
    let (b, _) = ready_tree(TestTree::builder().with(|c| c.spawn = spawn.clone())).await;
    let (c, _) = ready_tree(TestTree::builder().with(|c| c.spawn = spawn.clone())).await;
    let a_worker = a.ready(BOOT).await.unwrap();
    let a_pid = a_worker.pid();
    let b_pid = b.worker_pid().unwrap();
    let c_pid = c.worker_pid().unwrap();

    // The siblings are busy while A's stdin closes.
    let busy = |tree: &TestPool| {
        let pool = tree.pool().clone();
        tokio::spawn(async move {
            pool.call(
                Command::custom("sleep", json!({"ms": 500})),
                RequestOptions::default(),
            )
            .await
        })
    };
    let (b_busy, c_busy) = (busy(&b), busy(&c));

    let mut events = a.worker_events();
    let closed_at = Instant::now();
    a_worker.close_stdin();
    let (exit, requested) = exited(&mut events, a_pid, Duration::from_secs(5)).await;
    let took = closed_at.elapsed();
    assert_eq!(exit, Exit::Code(0), "A leaves on EOF");
    assert!(!requested, "nobody asked A to stop");
    assert!(took < Duration::from_secs(1), "A exited {took:?} after EOF");

    for (name, tree, pid, call) in [("B", &b, b_pid, b_busy), ("C", &c, c_pid, c_busy)] {
        let slept: Value = call.await.unwrap().expect("the sibling's request succeeds");
        assert_eq!(slept["slept_ms"], json!(500), "{name}");
        assert_eq!(
            tree.command("echo", json!({"sibling": name}))
                .await
                .unwrap(),
            json!({"sibling": name})
        );
        assert_eq!(tree.worker_pid(), Some(pid), "{name} kept its worker");
        assert_eq!(tree.restarts(), 0, "{name}");
    }
    // An exit nobody asked for is a failure: A's supervisor replaces it.
    let replaced = poll_until(BOOT, "A replaced", || {
        a.worker_pid().is_some_and(|p| p != a_pid)
    })
    .await;
    assert!(replaced.is_ok());
    assert_eq!(a.restarts(), 1);
    println!("s24: A exited {took:?} after its stdin closed; B and C unaffected");
    // Last started, first finished: each tree's fd baseline (checked under
    // nextest) includes the trees started before it.
    for tree in [c, b, a] {
        tree.finish().await;
    }
}

/// Scenario 29: a worker spawns a grandchild (`sleep 1000`) and is then
/// SIGKILLed — the process only, not its group. The owner's group kill (G3)
/// takes the grandchild too.
///
/// Pass figure: 0 descendants alive ≤ 500 ms after the worker was reaped
/// (its `Exited` event).
#[tokio::test(flavor = "multi_thread")]
async fn s29_grandchild_dies_with_its_worker() {
    grandchild_dies_with_its_worker(SpawnMode::default()).await;
}

/// The same with directly spawned workers.
#[tokio::test(flavor = "multi_thread")]
async fn s29_grandchild_dies_with_its_worker_direct() {
    grandchild_dies_with_its_worker(SpawnMode::Direct).await;
}

async fn grandchild_dies_with_its_worker(spawn: SpawnMode) {
    let (tree, _) = ready_tree(TestTree::builder().with(|c| c.spawn = spawn.clone())).await;
    let reply = tree
        .command("spawn_grandchild", json!({"seconds": 1000}))
        .await
        .unwrap();
    let grandchild = u32::try_from(reply["pid"].as_u64().unwrap()).unwrap();
    assert!(alive(grandchild));
    assert!(tagged_processes(tree.pool().run_tag()).contains(&grandchild));

    let mut events = tree.worker_events();
    let killed_at = Instant::now();
    let pid = tree.signal_worker(Signal::SIGKILL).unwrap();
    let (exit, requested) = exited(&mut events, pid, Duration::from_secs(5)).await;
    let reaped_after = killed_at.elapsed();
    assert_eq!(exit, Exit::Signal(9));
    assert!(!requested);
    let gone = poll_until(Duration::from_secs(5), "grandchild gone", || {
        !alive(grandchild)
    })
    .await
    .expect("the grandchild dies with its worker");
    assert!(
        gone <= Duration::from_millis(500),
        "grandchild alive {gone:?} after the worker was reaped"
    );
    // Workers are this process's children (the replacement may be booting);
    // anything else with the tag is a descendant.
    let me = std::process::id();
    let descendants: Vec<u32> = tagged_processes(tree.pool().run_tag())
        .into_iter()
        .filter(|&p| proc_stat(p).is_some_and(|s| s.ppid != me))
        .collect();
    assert!(descendants.is_empty(), "left: {descendants:?}");
    println!(
        "s29: worker reaped {reaped_after:?} after SIGKILL; grandchild gone {gone:?} after that"
    );
    tree.finish().await;
}
