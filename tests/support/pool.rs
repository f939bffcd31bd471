//! Helpers shared by the pool scenario tests.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use dspex_bridge::pool::{
    CheckoutOptions, Lease, PoolConfig, PoolError, PoolStatus, RequestOptions, Session, SlotPhase,
};
use dspex_protocol::{Command, Value};
use dspex_testkit::TestPool;

/// How long a pool may take to be ready.
pub const BOOT: Duration = Duration::from_secs(30);

/// Starts a pool with `config`; returns it with T_boot.
pub async fn start(config: PoolConfig) -> (TestPool, Duration) {
    let started = Instant::now();
    let pool = TestPool::start(config, BOOT).await.expect("pool starts");
    (pool, started.elapsed())
}

/// An `echo` fault command.
pub fn echo(args: Value) -> Command {
    Command::custom("echo", args)
}

/// The pids of the workers that are ready.
pub fn ready_pids(status: &PoolStatus) -> Vec<u32> {
    status
        .workers
        .iter()
        .filter(|w| w.phase == SlotPhase::Ready)
        .map(|w| w.pid)
        .collect()
}

/// Every slot ready, none of them `gone`.
pub fn full_without(status: &PoolStatus, size: usize, gone: u32) -> bool {
    let ready = ready_pids(status);
    ready.len() == size && !ready.contains(&gone)
}

/// A random index below `n`.
pub fn random_below(n: usize) -> usize {
    (RandomState::new().build_hasher().finish() % n as u64) as usize
}

/// The `p`-th percentile of sorted durations.
pub fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p).div_ceil(100).max(1) - 1]
}

/// An environment variable's number, or `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// This process's resident set, in bytes.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Checks out every worker of the pool and holds them.
pub async fn hold_all(pool: &TestPool, size: usize) -> Vec<Lease> {
    let mut leases = Vec::with_capacity(size);
    for _ in 0..size {
        leases.push(
            pool.pool()
                .checkout(CheckoutOptions::default())
                .await
                .unwrap(),
        );
    }
    leases
}

/// Request options for a call in `session`.
pub fn in_session(session: &Session) -> RequestOptions {
    RequestOptions {
        checkout: CheckoutOptions {
            session: Some(session.clone()),
            ..CheckoutOptions::default()
        },
        ..RequestOptions::default()
    }
}

/// The pid of the worker that answers a `ping` in `session`.
pub async fn ping_pid(pool: &TestPool, session: &Session) -> Result<u32, PoolError> {
    let reply = pool.pool().call(Command::Ping, in_session(session)).await?;
    Ok(reply["pid"].as_u64().expect("ping has the pid") as u32)
}
