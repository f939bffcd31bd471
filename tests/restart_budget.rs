//! The restart budget in single mode against workers that cannot start or
//! keep dying (scenarios 16, 17, 19 and 31 of the reliability contract), and
//! the revive policy that can bring a failed pool back (scenario 40).
//!
//! The workers' supervisor counts restarts the OTP way (default 3 in 5 s,
//! backoff 100 ms ×2): a worker that never starts is started `1 + 3 = 4`
//! times, then the pool is `Failed`, and every later call fails at once with
//! the last failure (exit status and stderr tail). Budgets are relative to
//! T_boot, measured in the same test on a healthy tree before any fault, and
//! generous: these tests prove behaviour, not speed. Each prints its measured
//! figures (`cargo test -- --nocapture`).

use std::error::Error as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dspex_bridge::SpawnMode;
use dspex_bridge::WorkerError;
use dspex_bridge::pool::{PoolError, PoolEvent, PoolState, RevivePolicy};
use dspex_bridge::worker::WorkerEvent;
use dspex_supervision::{Backoff, ExitCause, SupervisorEvent, SupervisorHandle};
use dspex_testkit::{TestPool, TestPoolBuilder, TestTree, managed_python, poll_until, wait_event};
use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::json;
use tokio::sync::broadcast;

/// Deadline for anything that waits on a worker boot (never reached when
/// things work; it only bounds a broken run).
const BOOT: Duration = Duration::from_secs(30);

/// The default budget under test: 3 restarts (in 5 s).
const MAX_RESTARTS: u32 = 3;

/// The backoff delays before restarts 1, 2 and 3: 100 + 200 + 400 ms.
const BACKOFF_TOTAL: Duration = Duration::from_millis(700);

/// How long "nothing happens" is watched for after `Failed`.
const QUIET: Duration = Duration::from_secs(1);

/// T_boot: spawn → ready handshake of a fresh healthy worker, measured on a
/// tree of its own before any fault is injected.
async fn t_boot() -> Duration {
    let tree = TestTree::start().await.expect("healthy tree starts");
    tree.ready(BOOT).await.expect("healthy worker ready");
    let t_boot = tree.started().elapsed();
    tree.finish().await;
    t_boot
}

fn is_failed(state: &PoolState) -> bool {
    matches!(state, PoolState::Failed(_))
}

fn workers(tree: &TestPool) -> SupervisorHandle {
    tree.pool()
        .workers_supervisor()
        .expect("a workers' supervisor")
}

/// Asserts that no worker is spawned for [`QUIET`]: the `Spawned` wait must
/// run into its deadline (not end because the channel closed).
async fn assert_no_spawn(events: &mut broadcast::Receiver<WorkerEvent>) {
    let waited = wait_event(events, QUIET, |e| matches!(e, WorkerEvent::Spawned { .. })).await;
    match waited {
        Err(error) => assert!(
            error.to_string().contains("no matching event"),
            "the event wait ended early: {error}"
        ),
        Ok(event) => panic!("a worker was spawned after Failed: {event:?}"),
    }
}

/// Calls a `Failed` pool `n` times; each call must fail with `Unavailable`
/// carrying every one of `needles`. Returns the slowest call.
async fn later_calls_fail_fast(tree: &TestPool, n: usize, needles: &[&str]) -> Duration {
    let mut slowest = Duration::ZERO;
    for _ in 0..n {
        let called = Instant::now();
        let error = tree.command("echo", json!({})).await.unwrap_err();
        slowest = slowest.max(called.elapsed());
        let PoolError::Unavailable { cause, .. } = &error else {
            panic!("expected Unavailable from a Failed pool, got {error:?}");
        };
        for needle in needles {
            assert!(cause.contains(needle), "{needle:?} missing from {cause}");
        }
    }
    slowest
}

/// Scenario 16: every worker dies at import (`DSPEX_TEST_FAIL_IMPORT=1`, exit
/// 1 with `ModuleNotFoundError` on stderr) before its handshake.
///
/// Pass figure: `Failed` ≤ 2 s after start (here: ≤ max(2 s, 4 × T_boot +
/// 700 ms backoff + 1 s)); total spawns ≤ 1 + max_restarts = 4 for a single
/// pool; the failure and every later call carry "exit code 1" and
/// "ModuleNotFoundError"; later calls fail < 1 ms (asserted < 50 ms); 0 spawns
/// after `Failed`; leak check clean.
#[tokio::test(flavor = "multi_thread")]
async fn s16_import_failure_ends_in_failed_with_exit_status_and_stderr_tail() {
    let t_boot = t_boot().await;
    let tree = TestTree::builder()
        .worker_env("DSPEX_TEST_FAIL_IMPORT", "1")
        .start()
        .await
        .expect("the tree starts; its worker dies later, at import");

    // The budget runs out: the pool gives up instead of crash-looping.
    let state = tree.wait_state(BOOT, is_failed).await.unwrap();
    let failed_after = tree.started().elapsed();
    let budget = Duration::from_secs(2).max(t_boot * 4 + BACKOFF_TOTAL + Duration::from_secs(1));
    assert!(
        failed_after <= budget,
        "Failed after {failed_after:?}, budget {budget:?} (T_boot {t_boot:?})"
    );
    let PoolState::Failed(cause) = state else {
        unreachable!()
    };
    assert!(cause.contains("exit code 1"), "no exit status in: {cause}");
    assert!(
        cause.contains("ModuleNotFoundError"),
        "no stderr tail in: {cause}"
    );

    // Exactly the budget was spent: the first start and 3 restarts.
    let spawned = tree.spawned_pids();
    assert_eq!(
        spawned.len(),
        1 + MAX_RESTARTS as usize,
        "spawns: {spawned:?}"
    );
    assert_eq!(tree.restarts(), MAX_RESTARTS);

    // Callers learn it at once, with the cause.
    let slowest = later_calls_fail_fast(&tree, 100, &["exit code 1", "ModuleNotFoundError"]).await;
    assert!(
        slowest < Duration::from_millis(50),
        "a call on a Failed pool took {slowest:?}"
    );

    // And nothing is ever started again.
    let mut events = tree.worker_events();
    assert_no_spawn(&mut events).await;
    assert_eq!(tree.spawned_pids(), spawned);
    println!(
        "s16: Failed {failed_after:?} after start (budget {budget:?}, T_boot {t_boot:?}); \
         spawns {}; slowest of 100 later calls {slowest:?}",
        spawned.len()
    );
    tree.finish().await;
}

/// A stand-in interpreter that fails its first `DSPEX_FLAKY_FAILURES` runs
/// (stderr line, exit 1), counting runs in `DSPEX_FLAKY_COUNTER`, then execs
/// the real Python (`DSPEX_FLAKY_PYTHON`) with the same arguments, so the
/// pid, process group and parent-death signal are the real worker's.
const FLAKY_PYTHON: &str = r#"#!/bin/sh
[ -n "$DSPEX_FLAKY_PROBE" ] && exit 0
n=$(cat "$DSPEX_FLAKY_COUNTER" 2>/dev/null || echo 0)
n=$((n + 1))
echo "$n" > "$DSPEX_FLAKY_COUNTER"
if [ "$n" -le "$DSPEX_FLAKY_FAILURES" ]; then
    echo "flaky start $n: ModuleNotFoundError: No module named 'flaky'" >&2
    exit 1
fi
exec "$DSPEX_FLAKY_PYTHON" "$@"
"#;

/// Writes an executable script and waits until it can be executed: a fork
/// in a concurrent test can briefly hold the write end we just closed, and
/// exec then fails with ETXTBSY, which would count as a spawn failure.
async fn write_script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    poll_until(Duration::from_secs(10), "script executable", || {
        std::process::Command::new(path)
            .env("DSPEX_FLAKY_PROBE", "1")
            .status()
            .is_ok_and(|s| s.success())
    })
    .await
    .unwrap();
}

/// Scenario 17: a flaky start — 2 of the first 3 spawns fail, the 3rd works.
///
/// Pass figure: the worker is ready ≤ 3 × T_boot + 0.1 + 0.2 s (backoff)
/// after start (asserted with 1 s of slack); the state is never `Failed`;
/// restarts == 2.
#[tokio::test(flavor = "multi_thread")]
async fn s17_flaky_start_recovers_within_the_budget() {
    let t_boot = t_boot().await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("flaky-python");
    write_script(&script, FLAKY_PYTHON).await;
    let real = managed_python().unwrap().interpreter;
    let counter = dir.path().join("starts");
    // Every start of the wrapper counts, so no zygote: each start is a worker.
    let tree = TestTree::builder()
        .with(|c| c.spawn = SpawnMode::Direct)
        .interpreter(&script)
        .worker_env("DSPEX_FLAKY_COUNTER", counter.to_str().unwrap())
        .worker_env("DSPEX_FLAKY_FAILURES", "2")
        .worker_env("DSPEX_FLAKY_PYTHON", real.to_str().unwrap())
        .start()
        .await
        .unwrap();

    let worker = tree
        .ready(BOOT)
        .await
        .expect("ready after two failed starts");
    let ready_after = tree.started().elapsed();
    let budget = t_boot * 3 + Duration::from_millis(300) + Duration::from_secs(1);
    assert!(
        ready_after <= budget,
        "ready after {ready_after:?}, budget {budget:?} (T_boot {t_boot:?})"
    );

    // `Failed` is final here (no revive), so a Running pool was never Failed.
    let status = tree.pool().status();
    assert_eq!(status.state, PoolState::Running);
    assert_eq!(status.restarts, 2);
    assert_eq!(std::fs::read_to_string(&counter).unwrap().trim(), "3");
    assert_eq!(tree.spawned_pids().len(), 3);
    assert_eq!(tree.spawned_pids().last(), Some(&worker.pid()));
    // The last failure is remembered with its stderr tail.
    let last_cause = workers(&tree).status().children[0].last_cause.clone();
    match last_cause {
        Some(ExitCause::Failed(text)) => {
            assert!(text.contains("exit code 1"), "{text}");
            assert!(text.contains("flaky start 2"), "{text}");
        }
        other => panic!("unexpected last cause {other:?}"),
    }
    assert_eq!(
        tree.command("echo", json!({"ok": true})).await.unwrap(),
        json!({"ok": true})
    );
    println!("s17: ready {ready_after:?} after start (budget {budget:?}, T_boot {t_boot:?})");
    tree.finish().await;
}

/// Scenario 19: an over-budget storm — the worker is SIGKILLed each time it
/// becomes ready (one kill per 100/200/400 ms backoff + T_boot).
///
/// Pass figure: exactly one `Failed` event; `Failed` at the 4th crash, i.e.
/// when a 4th restart would be needed inside the 5 s window; 0 spawns after
/// it; clean shutdown.
#[tokio::test(flavor = "multi_thread")]
async fn s19_over_budget_storm_fails_once_and_stops_respawning() {
    let t_boot = t_boot().await;
    // The storm must fit the default 5 s window; widen it only on a machine
    // so slow that four boots and the backoff would not.
    let within = Duration::from_secs(5).max(t_boot * 8 + BACKOFF_TOTAL);
    let (tree, _) = ready_tree(TestTree::builder().intensity(MAX_RESTARTS, within)).await;
    let mut supervisor_events = workers(&tree).subscribe();
    let collector = tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            match supervisor_events.recv().await {
                Ok(event) => {
                    let last = matches!(event, SupervisorEvent::Stopped);
                    seen.push(event);
                    if last {
                        return seen;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => panic!("lagged by {n}"),
                Err(broadcast::error::RecvError::Closed) => return seen,
            }
        }
    });
    let mut events = tree.worker_events();

    let storm = Instant::now();
    let mut pid = tree.worker_pid().unwrap();
    let mut kills = Vec::new();
    loop {
        nix::sys::signal::kill(Pid::from_raw(i32::try_from(pid).unwrap()), Signal::SIGKILL)
            .unwrap();
        kills.push(storm.elapsed());
        if kills.len() == 1 + MAX_RESTARTS as usize {
            break;
        }
        let ready = wait_event(
            &mut events,
            BOOT,
            |e| matches!(e, WorkerEvent::Ready { pid: p, .. } if *p != pid),
        )
        .await
        .expect("the killed worker is replaced while under budget");
        let WorkerEvent::Ready { pid: next, .. } = ready else {
            unreachable!()
        };
        pid = next;
    }
    tree.wait_state(Duration::from_secs(10), is_failed)
        .await
        .expect("Failed after the 4th crash");
    let failed_after = storm.elapsed();
    assert!(
        failed_after < within,
        "Failed {failed_after:?} after the first kill (window {within:?})"
    );
    assert_eq!(tree.restarts(), MAX_RESTARTS);
    let spawned = tree.spawned_pids();
    assert_eq!(spawned.len(), 1 + MAX_RESTARTS as usize, "{spawned:?}");

    assert_no_spawn(&mut events).await;
    assert_eq!(tree.spawned_pids(), spawned);
    let calls = later_calls_fail_fast(&tree, 10, &["signal 9"]).await;
    tree.finish().await;

    let seen = tokio::time::timeout(Duration::from_secs(10), collector)
        .await
        .expect("the supervisor reports Stopped")
        .unwrap();
    let failed = seen
        .iter()
        .filter(|e| matches!(e, SupervisorEvent::Failed { .. }))
        .count();
    assert_eq!(failed, 1, "events: {seen:?}");
    let restarting = seen
        .iter()
        .filter(|e| matches!(e, SupervisorEvent::ChildRestarting { .. }))
        .count();
    assert_eq!(restarting, MAX_RESTARTS as usize, "events: {seen:?}");
    let after_failed: Vec<_> = seen
        .iter()
        .skip_while(|e| !matches!(e, SupervisorEvent::Failed { .. }))
        .skip(1)
        .filter(|e| !matches!(e, SupervisorEvent::Stopped))
        .collect();
    assert!(after_failed.is_empty(), "after Failed: {after_failed:?}");
    println!(
        "s19: kills at {kills:?}; Failed {failed_after:?} after the first kill \
         (T_boot {t_boot:?}); slowest later call {calls:?}"
    );
}

/// Starts a tree and waits for its worker; returns it with the boot time.
async fn ready_tree(builder: TestPoolBuilder) -> (TestPool, Duration) {
    let tree = builder.start().await.expect("tree starts");
    tree.ready(BOOT).await.expect("worker ready");
    let t_boot = tree.started().elapsed();
    (tree, t_boot)
}

/// Scenario 31 with a missing interpreter (ENOENT).
///
/// Pass figure: the first error is immediate (< 50 ms; asserted < 500 ms)
/// and typed (`WorkerError::Spawn` → `SpawnError` with the path and errno);
/// it counts as a restart; the pool ends `Failed` like scenario 16.
#[tokio::test(flavor = "multi_thread")]
async fn s31_missing_interpreter_is_a_typed_spawn_error_and_ends_in_failed() {
    let path = PathBuf::from("/nonexistent/python3");
    spawn_failure(
        "s31 ENOENT",
        &path,
        Errno::ENOENT as i32,
        "No such file or directory",
    )
    .await;
}

/// Scenario 31 with an interpreter that is not executable (EACCES).
#[tokio::test(flavor = "multi_thread")]
async fn s31_non_executable_interpreter_is_a_typed_spawn_error_and_ends_in_failed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("python3");
    std::fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    spawn_failure(
        "s31 EACCES",
        &path,
        Errno::EACCES as i32,
        "Permission denied",
    )
    .await;
}

/// The spawn-failure narrative shared by both errnos.
///
/// `TestPoolBuilder::start` (`Pool::start_on`) still succeeds: the
/// supervisor treats the failed first start like a crash (`OnGiveUp::Remain`)
/// and schedules a restart, so the caller gets a tree whose status already
/// names the failure. No process is ever created.
async fn spawn_failure(label: &str, path: &Path, errno: i32, os_text: &str) {
    let tree = TestTree::builder()
        .interpreter(path)
        .start()
        .await
        .expect("start returns a running tree even though the first spawn failed");
    let first_error_after = tree.started().elapsed();
    let path_text = path.display().to_string();

    // The first attempt has already failed when `start` returns.
    let status = workers(&tree).status();
    let child = &status.children[0];
    let Some(ExitCause::StartFailed(first)) = &child.last_cause else {
        panic!("first start did not fail: {:?}", child.last_cause);
    };
    assert!(first.contains(&path_text), "{first}");
    assert!(first.contains(os_text), "{first}");
    assert!(
        first_error_after < Duration::from_millis(500),
        "first error after {first_error_after:?}"
    );

    // Each retry is a typed spawn error with the path and errno.
    let mut supervisor_events = workers(&tree).subscribe();
    let event = wait_event(&mut supervisor_events, BOOT, |e| {
        matches!(e, SupervisorEvent::StartFailed { .. })
    })
    .await
    .unwrap();
    let SupervisorEvent::StartFailed { error, .. } = event else {
        unreachable!()
    };
    let worker_error = error
        .source()
        .and_then(|s| s.downcast_ref::<WorkerError>())
        .unwrap_or_else(|| panic!("start error is not a WorkerError: {error:?}"));
    let WorkerError::Spawn(spawn) = worker_error else {
        panic!("expected WorkerError::Spawn, got {worker_error:?}");
    };
    assert_eq!(spawn.interpreter, path);
    assert_eq!(spawn.source.raw_os_error(), Some(errno), "{spawn}");

    let state = tree.wait_state(BOOT, is_failed).await.unwrap();
    let failed_after = tree.started().elapsed();
    assert!(
        failed_after < BACKOFF_TOTAL + Duration::from_secs(2),
        "Failed after {failed_after:?}"
    );
    let PoolState::Failed(cause) = state else {
        unreachable!()
    };
    assert!(cause.contains(&path_text), "{cause}");
    assert!(cause.contains(&format!("os error {errno}")), "{cause}");

    // Every attempt counted as a restart; none created a process.
    assert_eq!(tree.restarts(), MAX_RESTARTS);
    assert!(tree.spawned_pids().is_empty(), "{:?}", tree.spawned_pids());
    let slowest = later_calls_fail_fast(&tree, 100, &[&path_text, os_text]).await;
    assert!(slowest < Duration::from_millis(50), "{slowest:?}");
    let mut events = tree.worker_events();
    assert_no_spawn(&mut events).await;
    println!(
        "{label}: first error {first_error_after:?} after start; Failed {failed_after:?}; \
         slowest later call {slowest:?}"
    );
    tree.finish().await;
}

/// A caller that is already waiting for a worker when the pool gives up
/// gets what every later caller gets: `Unavailable` with the cause.
#[tokio::test(flavor = "multi_thread")]
async fn caller_waiting_through_the_give_up_gets_unavailable() {
    let tree = TestTree::builder()
        .worker_env("DSPEX_TEST_FAIL_IMPORT", "1")
        .start()
        .await
        .unwrap();
    // Calls wait up to the checkout timeout (5 s) for a ready worker, so this
    // one is still waiting when the budget runs out (~1 s).
    let called = Instant::now();
    let result = tree.command("echo", json!({})).await;
    let waited = called.elapsed();
    assert!(tree.pool().status().state != PoolState::Running);
    match result {
        Err(PoolError::Unavailable { cause, .. }) => {
            assert!(cause.contains("ModuleNotFoundError"), "{cause}");
        }
        other => panic!("expected Unavailable after {waited:?}, got {other:?}"),
    }
    tree.finish().await;
}

/// Scenario 40: a pool `Failed` as in scenario 16, with the revive policy
/// on; the environment is then fixed (the file that makes every worker die
/// at import is removed).
///
/// Pass figure: serving ≤ cool-down + T_boot + 250 ms after the fix (the
/// cool-down here is the attempt due after the fix; asserted with T_boot of
/// slack for a loaded machine); exactly one `Revived` event; calls meanwhile
/// are refused at once with the time to the next attempt.
#[tokio::test(flavor = "multi_thread")]
async fn s40_a_failed_pool_revives_once_the_environment_is_fixed() {
    let t_boot = t_boot().await;
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken");
    std::fs::write(&broken, "").unwrap();
    let cooldown = Backoff {
        initial: Duration::from_millis(300),
        factor: 2,
        max: Duration::from_millis(600),
    };
    let tree = TestTree::builder()
        .worker_env("DSPEX_TEST_FAIL_IMPORT_IF_EXISTS", broken.to_str().unwrap())
        .revive(RevivePolicy { cooldown })
        .start()
        .await
        .unwrap();
    let mut events = tree.events();
    tree.wait_state(BOOT, is_failed).await.unwrap();
    let status = tree.pool().status();
    assert!(
        status.revive_at.is_some(),
        "the next attempt is due: {status:?}"
    );
    // Meanwhile callers are refused at once, told when to come back.
    let called = Instant::now();
    let error = tree.command("echo", json!({})).await.unwrap_err();
    assert!(called.elapsed() < Duration::from_millis(50));
    let PoolError::Unavailable { cause, retry_in } = &error else {
        panic!("{error:?}");
    };
    assert!(cause.contains("ModuleNotFoundError"), "{cause}");
    assert!(retry_in.is_some_and(|d| d <= cooldown.max), "{retry_in:?}");

    // At least one revive attempt fails again while the environment is broken.
    wait_event(&mut events, BOOT, |e| {
        matches!(e, PoolEvent::Reviving { .. })
    })
    .await
    .unwrap();
    wait_event(&mut events, BOOT, |e| {
        matches!(e, PoolEvent::PoolFailed { .. })
    })
    .await
    .unwrap();

    std::fs::remove_file(&broken).unwrap();
    let fixed = Instant::now();
    wait_event(&mut events, BOOT, |e| matches!(e, PoolEvent::Revived))
        .await
        .expect("the pool serves again");
    let serving_after = fixed.elapsed();
    assert_eq!(
        tree.command("echo", json!({"back": true})).await.unwrap(),
        json!({"back": true})
    );
    let budget = cooldown.max + t_boot * 2 + Duration::from_millis(250);
    assert!(
        serving_after <= budget,
        "serving {serving_after:?} after the fix, budget {budget:?} (T_boot {t_boot:?})"
    );
    let status = tree.pool().status();
    assert_eq!(status.state, PoolState::Running);
    assert_eq!(status.revive_at, None);
    assert_eq!(status.counters.revived, 1);
    // Exactly one Revived: nothing more arrives while it keeps serving.
    let more = wait_event(&mut events, Duration::from_millis(500), |e| {
        matches!(e, PoolEvent::Revived)
    })
    .await;
    assert!(more.is_err(), "a second Revived: {more:?}");
    println!("s40: serving {serving_after:?} after the fix (budget {budget:?}, T_boot {t_boot:?})");
    tree.finish().await;
}
