//! Scenario 30 of the reliability contract: kill/respawn cycles leave no
//! resource creep. In a test binary of its own, because it counts this
//! process's open file descriptors and zombie children: no other test may
//! run in the process meanwhile.

use std::time::{Duration, Instant};

use dspex_bridge::pool::{PoolStatus, SlotPhase};
use dspex_bridge::process::{proc_stat, tagged_processes};
use dspex_supervision::{Backoff, RestartIntensity};
use dspex_testkit::{TestPool, fd_count, poll_until};
use nix::sys::signal::Signal;

const BOOT: Duration = Duration::from_secs(30);

/// Zombie children of this process, whoever spawned them.
fn zombie_children() -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| proc_stat(pid).is_some_and(|s| s.ppid == me && s.state == 'Z'))
        .collect()
}

/// Every slot ready, none of them `gone`.
fn full_without(status: &PoolStatus, size: usize, gone: u32) -> bool {
    let ready: Vec<u32> = status
        .workers
        .iter()
        .filter(|w| w.phase == SlotPhase::Ready)
        .map(|w| w.pid)
        .collect();
    ready.len() == size && !ready.contains(&gone)
}

fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

/// Scenario 30: 100 kill/respawn cycles (`DSPEX_SOAK_CYCLES=1000` for the
/// contract's figure), each SIGKILLing one worker of the pool in turn and
/// waiting for the pool to be full again → open fds back to the baseline
/// (≤ baseline + 2), 0 zombie children, only the live workers carry the
/// run tag, and the restart latency of the last cycles within a generous
/// factor of the first ones (the contract: 10 %; asserted: 2× + 50 ms).
///
/// Restarts are immediate (no backoff) and unlimited: the cycles are
/// deliberate, and the figure is the respawn itself.
#[tokio::test(flavor = "multi_thread")]
async fn s30_kill_respawn_cycles_leave_no_resource_creep() {
    let cycles: usize = std::env::var("DSPEX_SOAK_CYCLES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let mut config = TestPool::config();
    config.intensity = RestartIntensity {
        max_restarts: u32::MAX,
        within: Duration::from_secs(1),
    };
    config.backoff = Backoff::NONE;
    let size = config.size;
    let pool = TestPool::start(config, BOOT).await.expect("pool starts");

    let cycle = async |n: usize| {
        let status = pool.pool().status();
        let victim = status.workers[n % size].pid;
        let killed_at = Instant::now();
        pool.signal(victim, Signal::SIGKILL).unwrap();
        pool.wait_status(BOOT, |s| full_without(s, size, victim))
            .await
            .unwrap();
        killed_at.elapsed()
    };
    // A first round warms up what the first restart sets up once.
    for n in 0..size {
        cycle(n).await;
    }
    pool.pool().settled().await;
    let fd_baseline = fd_count();
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(cycles);
    for n in 0..cycles {
        latencies.push(cycle(n).await);
    }
    let took = started.elapsed();
    pool.pool().settled().await;
    let fds = poll_until(Duration::from_secs(2), "fds back to the baseline", || {
        fd_count() <= fd_baseline + 2
    })
    .await;
    let zombies = poll_until(Duration::from_secs(2), "no zombie children", || {
        zombie_children().is_empty()
    })
    .await;
    let window = (cycles / 10).max(1);
    let (first, last) = (
        median(&latencies[..window]),
        median(&latencies[cycles - window..]),
    );
    println!(
        "scenario 30: {cycles} cycles in {took:?}; restart latency median of the first {window} {first:?}, \
         of the last {window} {last:?} ({:.2}×), overall {:?}; fds {} (baseline {fd_baseline})",
        last.as_secs_f64() / first.as_secs_f64(),
        median(&latencies),
        fd_count(),
    );
    assert!(
        fds.is_ok(),
        "fds {} > baseline {fd_baseline} + 2",
        fd_count()
    );
    assert!(zombies.is_ok(), "zombie children: {:?}", zombie_children());
    let status = pool.pool().status();
    let zygotes = dspex_testkit::zygote_pids(pool.pool().run_tag());
    let mut tagged = tagged_processes(pool.pool().run_tag());
    tagged.retain(|pid| !zygotes.contains(pid));
    tagged.sort();
    let mut live = status.pids();
    live.sort();
    assert_eq!(tagged, live, "only the live workers carry the run tag");
    assert_eq!(status.restarts as usize, cycles + size);
    assert!(
        last <= first * 2 + Duration::from_millis(50),
        "restart latency crept from {first:?} to {last:?}"
    );
    pool.finish().await;
}
