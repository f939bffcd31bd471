//! What a dead host leaves behind (scenario 26, and the orphan sweep of G9).
//!
//! A real host process (`dspex-test-host`, tests/bin/host.rs) starts single
//! bridges and reports their run tags and worker pids; the test SIGKILLs it —
//! nothing of the host runs after that — and watches the tagged processes
//! vanish: workers by their parent-death signal (G4), their descendants by
//! the group kill or their own EOF. The orphan sweep is the backstop for
//! whatever a dead host leaves anyway.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::os::unix::process::CommandExt as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use dspex_bridge::process::{RUN_TAG_ENV, kill_process, proc_stat, sweep_orphans};
use dspex_testkit::{TestTree, poll_until};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

/// The figure of scenario 26: no tagged process ≤ 2 s after the host's death.
const FIGURE: Duration = Duration::from_secs(2);

/// How long the host may take to report ready (it may create the managed
/// Python environment on a fresh machine).
const HOST_READY: Duration = Duration::from_secs(180);

/// The tests of this file run one at a time: the sweep must not do the work
/// the parent-death signal is being tested for.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Live (non-zombie) processes whose environment carries run tag `tag`.
///
/// (`RunTag` cannot be rebuilt from the text another process printed, so
/// this reads `/proc` like `tagged_processes` does.)
fn tagged(tag: &str) -> Vec<u32> {
    let needle = format!("{RUN_TAG_ENV}={tag}");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                environ
                    .split(|&b| b == 0)
                    .any(|var| var == needle.as_bytes())
            })
        })
        .filter(|&pid| proc_stat(pid).is_some_and(|s| s.state != 'Z'))
        .collect()
}

fn alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|s| s.state != 'Z')
}

/// Whether `pid` is a zygote: its command line says `--mode zygote` and its
/// parent's does not (forked workers keep the zygote's command line).
fn is_zygote(pid: u32) -> bool {
    let says = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|cmdline| cmdline.contains("--mode\0zygote"))
    };
    says(pid) && proc_stat(pid).is_some_and(|stat| !says(stat.ppid))
}

/// Kills whatever still carries one of the tags, even when the test fails,
/// so a failing run leaves nothing behind either.
struct KillTagged(Vec<String>);

impl Drop for KillTagged {
    fn drop(&mut self) {
        for tag in &self.0 {
            for pid in tagged(tag) {
                let _ = kill_process(pid);
            }
        }
    }
}

/// What the host reported once its workers were ready.
struct Host {
    child: tokio::process::Child,
    tags: Vec<String>,
    workers: Vec<u32>,
    grandchildren: Vec<u32>,
}

/// Starts `dspex-test-host` and waits for its ready line.
async fn start_host(bridges: usize, grandchildren: usize, spawn: &str) -> Host {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dspex-test-host"))
        .args([
            bridges.to_string(),
            grandchildren.to_string(),
            spawn.to_owned(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the host starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(HOST_READY, lines.next_line())
        .await
        .expect("the host reports ready in time")
        .unwrap()
        .expect("the host printed its ready line");
    let report: Value = serde_json::from_str(&line).unwrap();
    let pids = |key: &str| -> Vec<u32> {
        report[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| u32::try_from(p.as_u64().unwrap()).unwrap())
            .collect()
    };
    let tags: Vec<String> = report["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    Host {
        child,
        workers: pids("workers"),
        grandchildren: pids("grandchildren"),
        tags,
    }
}

/// SIGKILLs the host, reaps it, and returns the instant of the kill.
async fn kill_host(host: &mut Host) -> Instant {
    let pid = host.child.id().unwrap();
    let killed_at = Instant::now();
    nix::sys::signal::kill(Pid::from_raw(i32::try_from(pid).unwrap()), Signal::SIGKILL).unwrap();
    let status = host.child.wait().await.unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    killed_at
}

/// Scenario 26: a host SIGKILLed with ready workers leaves no worker alive.
///
/// Pass figure: 0 tagged processes ≤ 2 s after the kill (the parent-death
/// signal makes it near-immediate).
///
/// Forked workers (the default) have no parent-death signal tied to the
/// host: their zygote dies of its own, the tree's watchdog kills the rest,
/// and each worker would also leave on its stdin's EOF.
#[tokio::test(flavor = "multi_thread")]
async fn s26_sigkilled_host_leaves_no_worker() {
    sigkilled_host_leaves_no_worker("zygote").await;
}

/// Scenario 26 with directly spawned workers.
#[tokio::test(flavor = "multi_thread")]
async fn s26_sigkilled_host_leaves_no_worker_direct() {
    sigkilled_host_leaves_no_worker("direct").await;
}

async fn sigkilled_host_leaves_no_worker(spawn: &str) {
    let _serial = SERIAL.lock().await;
    let mut host = start_host(3, 0, spawn).await;
    let _cleanup = KillTagged(host.tags.clone());
    assert_eq!(host.workers.len(), 3);
    for (tag, &worker) in host.tags.iter().zip(&host.workers) {
        let (zygotes, workers): (Vec<u32>, Vec<u32>) =
            tagged(tag).into_iter().partition(|&pid| is_zygote(pid));
        assert_eq!(workers, vec![worker], "tag {tag} before the kill");
        assert_eq!(zygotes.len(), usize::from(spawn == "zygote"), "{spawn}");
    }

    let killed_at = kill_host(&mut host).await;
    let gone = poll_until(
        FIGURE + Duration::from_secs(1),
        "host's tagged processes gone",
        // A process that is exiting has no environment left to read but is
        // not a zombie yet: wait for the worker pids themselves too.
        || {
            host.tags.iter().all(|tag| tagged(tag).is_empty())
                && host.workers.iter().all(|&pid| !alive(pid))
        },
    )
    .await;
    let elapsed = killed_at.elapsed();
    let left: Vec<(String, Vec<u32>)> = host.tags.iter().map(|t| (t.clone(), tagged(t))).collect();
    let workers_alive: Vec<u32> = host.workers.iter().copied().filter(|&p| alive(p)).collect();
    assert!(
        gone.is_ok(),
        "still alive {elapsed:?} after the kill: {left:?}, workers {workers_alive:?}"
    );
    assert!(
        elapsed <= FIGURE,
        "workers gone only {elapsed:?} after the kill"
    );
    println!(
        "s26 ({spawn}): 3 workers gone {elapsed:?} after the host's SIGKILL (figure {FIGURE:?})"
    );
}

/// Scenario 26 with a descendant: a worker ran `spawn_grandchild` (`sleep`)
/// before the host was SIGKILLed.
///
/// Pass figure: 0 tagged processes, the grandchild included, ≤ 2 s after the
/// kill.
///
/// The worker dies of its parent-death signal; the grandchild (`sleep`, which
/// reads no input and so never sees an EOF) is killed by the tree's watchdog,
/// which wakes when the dead host's end of its pipe closes.
#[tokio::test(flavor = "multi_thread")]
async fn s26_sigkilled_host_leaves_no_grandchild() {
    sigkilled_host_leaves_no_grandchild("zygote").await;
}

/// The same with directly spawned workers.
#[tokio::test(flavor = "multi_thread")]
async fn s26_sigkilled_host_leaves_no_grandchild_direct() {
    sigkilled_host_leaves_no_grandchild("direct").await;
}

async fn sigkilled_host_leaves_no_grandchild(spawn: &str) {
    let _serial = SERIAL.lock().await;
    let mut host = start_host(2, 1, spawn).await;
    let _cleanup = KillTagged(host.tags.clone());
    let grandchild = host.grandchildren[0];
    assert!(alive(grandchild));
    assert!(tagged(&host.tags[0]).contains(&grandchild));

    let killed_at = kill_host(&mut host).await;
    let gone = poll_until(
        FIGURE + Duration::from_secs(1),
        "host's tagged processes gone",
        || {
            host.tags.iter().all(|tag| tagged(tag).is_empty())
                && host.workers.iter().all(|&pid| !alive(pid))
                && !alive(grandchild)
        },
    )
    .await;
    let elapsed = killed_at.elapsed();
    let left: Vec<(String, Vec<u32>)> = host.tags.iter().map(|t| (t.clone(), tagged(t))).collect();
    assert!(
        host.workers.iter().all(|&pid| !alive(pid)),
        "a worker survived its host"
    );
    assert!(
        gone.is_ok(),
        "still alive {elapsed:?} after the kill (grandchild {grandchild}): {left:?}"
    );
    assert!(elapsed <= FIGURE, "gone only {elapsed:?} after the kill");
    println!("s26 ({spawn}): workers and grandchild gone {elapsed:?} after the host's SIGKILL");
}

/// G9: `sweep_orphans` kills a tagged process whose host is gone and leaves
/// the workers of a live tree alone.
///
/// The stray is a `sleep` carrying the tag of a host that really existed and
/// is dead: a child of this test, reaped, named by its pid and start time
/// (so pid reuse cannot bring it back to life).
#[tokio::test(flavor = "multi_thread")]
async fn sweep_kills_workers_of_dead_hosts_only() {
    let _serial = SERIAL.lock().await;
    let tree = TestTree::start().await.unwrap();
    let worker = tree.ready(Duration::from_secs(30)).await.unwrap();

    // A host that lived and died.
    let mut dead = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    let dead_pid = dead.id();
    let dead_start = proc_stat(dead_pid).unwrap().start_time;
    dead.kill().unwrap();
    dead.wait().unwrap();
    let nonce = RandomState::new().build_hasher().finish();
    let tag = format!("dspex.{dead_pid}.{dead_start}.{nonce:016x}");

    // Its stray worker, leading its own group like a real one.
    let mut stray = std::process::Command::new("sleep")
        .arg("1000")
        .env(RUN_TAG_ENV, &tag)
        .process_group(0)
        .spawn()
        .unwrap();
    let _cleanup = KillTagged(vec![tag.clone()]);
    let stray_pid = stray.id();
    assert_eq!(tagged(&tag), vec![stray_pid]);

    let swept_at = Instant::now();
    let killed = tokio::task::spawn_blocking(sweep_orphans).await.unwrap();
    let status = stray.wait().unwrap();
    let took = swept_at.elapsed();
    assert!(killed >= 1, "the sweep killed nothing");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert!(tagged(&tag).is_empty());

    // The live tree's worker is untouched and serving.
    assert_eq!(tree.worker_pid(), Some(worker.pid()));
    assert!(alive(worker.pid()));
    assert_eq!(
        tree.command("echo", json!({"after": "sweep"}))
            .await
            .unwrap(),
        json!({"after": "sweep"})
    );
    assert_eq!(tree.restarts(), 0);
    println!("sweep: killed {killed} orphan(s) in {took:?}; live worker untouched");
    tree.finish().await;
}
