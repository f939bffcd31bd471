//! Leak checks: tagged processes, zombies, file descriptors.

use std::future::Future;
use std::time::Duration;

use dspex_bridge::process::{FdLedger, OpenFd, RunTag, proc_stat, tagged_processes};

/// What the leak check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeakReport {
    /// Live processes still carrying the tree's run tag.
    pub tagged_alive: Vec<u32>,
    /// Worker pids of the tree left as zombie children of this process.
    pub zombies: Vec<u32>,
    /// Pipes the tree opened that are still open.
    pub open_fds: Vec<OpenFd>,
    /// Open fds above the baseline (only measured when the test owns the process).
    pub extra_fds: Option<isize>,
}

impl LeakReport {
    /// `true` when nothing leaked.
    pub fn is_clean(&self) -> bool {
        self.tagged_alive.is_empty()
            && self.zombies.is_empty()
            && self.open_fds.is_empty()
            && self.extra_fds.is_none_or(|n| n <= 2)
    }
}

/// The number of open file descriptors of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// Those of `pids` that are zombie children of this process.
pub fn zombie_children(pids: &[u32]) -> Vec<u32> {
    let me = std::process::id();
    pids.iter()
        .copied()
        .filter(|&pid| proc_stat(pid).is_some_and(|s| s.state == 'Z' && s.ppid == me))
        .collect()
}

/// Whether this test has the process to itself, so a global fd count means
/// something (nextest runs one test per process).
pub(crate) fn owns_process() -> bool {
    std::env::var("NEXTEST_EXECUTION_MODE").is_ok_and(|m| m == "process-per-test")
}

/// Waits up to `settle` for the processes of the tree with `tag` to be gone
/// and reaped, and the pipes in `fds` closed, then reports what is left.
/// `spawned` are the worker pids the tree ever had; `fd_baseline` the
/// process's fd count before it started (compared only when the test owns
/// the process, under nextest).
pub async fn check(
    tag: &RunTag,
    fds: &FdLedger,
    spawned: &[u32],
    fd_baseline: usize,
    settle: Duration,
) -> LeakReport {
    let clean = crate::poll_until(settle, "leak check", || {
        tagged_processes(tag).is_empty()
            && zombie_children(spawned).is_empty()
            && fds.still_open().is_empty()
            && (!owns_process() || fd_count() <= fd_baseline + 2)
    })
    .await;
    if clean.is_ok() {
        return LeakReport {
            extra_fds: owns_process().then(|| fd_count() as isize - fd_baseline as isize),
            ..LeakReport::default()
        };
    }
    LeakReport {
        tagged_alive: tagged_processes(tag),
        zombies: zombie_children(spawned),
        open_fds: fds.still_open(),
        extra_fds: owns_process().then(|| fd_count() as isize - fd_baseline as isize),
    }
}

/// The leak check of a tree dropped without `finish()`: shut down (on a
/// multi-threaded runtime, blocking this thread) and check; otherwise kill
/// whatever carries the tag. Panics on a leak unless already panicking.
pub(crate) fn check_on_drop(tag: &RunTag, shutdown_and_check: impl Future<Output = LeakReport>) {
    let report = match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| handle.block_on(shutdown_and_check))
        }
        _ => {
            // No runtime to shut down with: kill what is left outright.
            for pid in tagged_processes(tag) {
                let _ = dspex_bridge::process::kill_process(pid);
            }
            LeakReport::default()
        }
    };
    if !std::thread::panicking() {
        assert!(report.is_clean(), "leak check failed: {report:?}");
    }
}

/// The zygotes this process runs for the tree with `tag`: its children
/// whose command line says `--mode zygote` (workers forked from a zygote
/// keep that command line, but are the zygote's children, or orphans).
pub fn zygote_pids(tag: &RunTag) -> Vec<u32> {
    let me = std::process::id();
    tagged_processes(tag)
        .into_iter()
        .filter(|&pid| says_zygote(pid) && proc_stat(pid).is_some_and(|stat| stat.ppid == me))
        .collect()
}

fn says_zygote(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        cmdline
            .split(|&b| b == 0)
            .collect::<Vec<_>>()
            .windows(2)
            .any(|w| w[0] == b"--mode" && w[1] == b"zygote")
    })
}
