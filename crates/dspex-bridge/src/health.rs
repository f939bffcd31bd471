//! [`HealthMonitor`]: periodic pings of a worker, a health verdict, and a
//! restart after too many consecutive failures.
//!
//! Every `interval` the monitor pings each ready worker of its pool, one ping
//! in flight per worker, each in a task so the monitor's own mailbox never
//! waits on Python. A ping has its own deadline (`timeout`); a ping that
//! misses it, or fails, is a failed check — and only that: the worker actor
//! does not treat a late ping as a hang ([`OnHang::Report`]), so the
//! thresholds alone decide. Consecutive failures of a worker move the
//! verdict from healthy to degraded (`degraded_after`) to unhealthy
//! (`unhealthy_after`); at `restart_after` the monitor has the worker
//! replaced (killed and started again at once, outside the restart budget:
//! it is the monitor's decision, not a crash). A success resets its count.
//! The verdict is the worst over the watched workers.
//! Response times of the last [`LATENCY_WINDOW`] pings are kept for the
//! status.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use dspex_protocol::Command;
use dspex_supervision::{ChildSpec, StartError};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::worker::{CallOptions, OnHang, WorkerHandle};

/// How many recent response times the statistics cover.
pub const LATENCY_WINDOW: usize = 64;

/// Health check settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    /// Time between pings.
    pub interval: Duration,
    /// How long one ping may take; a ping answered later (or not at all)
    /// is a failed check.
    pub timeout: Duration,
    /// Consecutive failures that make the worker degraded.
    pub degraded_after: u32,
    /// Consecutive failures that make the worker unhealthy.
    pub unhealthy_after: u32,
    /// Consecutive failures after which the worker is replaced (`None`:
    /// never).
    pub restart_after: Option<u32>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            degraded_after: 1,
            unhealthy_after: 3,
            restart_after: Some(3),
        }
    }
}

/// The verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Health {
    /// No check has completed yet.
    #[default]
    Unknown,
    /// The last check passed.
    Healthy,
    /// Some consecutive checks failed.
    Degraded,
    /// Too many consecutive checks failed.
    Unhealthy,
}

/// Response-time statistics over the last [`LATENCY_WINDOW`] successful pings.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LatencyStats {
    /// Pings measured.
    pub samples: usize,
    /// The most recent.
    pub last: Duration,
    /// The mean.
    pub mean: Duration,
    /// The median.
    pub p50: Duration,
    /// The 99th percentile.
    pub p99: Duration,
    /// The slowest.
    pub max: Duration,
}

/// What the monitor knows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HealthStatus {
    /// The verdict.
    pub health: Health,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Checks completed.
    pub checks: u64,
    /// Checks failed.
    pub failures: u64,
    /// Workers the monitor had replaced.
    pub restarts: u64,
    /// Response times.
    pub latency: LatencyStats,
}

/// The health monitor actor.
#[derive(Debug, Clone, Copy, Default)]
pub struct HealthMonitor;

impl HealthMonitor {
    /// A permanent child (id `health`) that watches `workers` and publishes
    /// into `status`, started afresh at every restart.
    pub fn child(
        workers: watch::Receiver<Vec<WorkerHandle>>,
        config: HealthConfig,
        status: watch::Sender<HealthStatus>,
    ) -> ChildSpec {
        ChildSpec::new("health", move |supervisor| {
            let args = HealthArgs {
                workers: workers.clone(),
                config,
                status: status.clone(),
            };
            async move {
                let (monitor, _) = Actor::spawn_linked(None, HealthMonitor, args, supervisor)
                    .await
                    .map_err(StartError::from_error)?;
                Ok(monitor.get_cell())
            }
        })
    }
}

/// What the monitor is started with.
#[derive(Debug)]
pub struct HealthArgs {
    /// The workers to watch (the current ones, across restarts).
    pub workers: watch::Receiver<Vec<WorkerHandle>>,
    /// Settings.
    pub config: HealthConfig,
    /// Where the status is published.
    pub status: watch::Sender<HealthStatus>,
}

/// Messages of the monitor (internal).
#[derive(Debug)]
pub struct HealthMsg(Tick);

#[derive(Debug)]
enum Tick {
    Check,
    Result(Result<Duration, String>, u32),
}

/// The monitor's state.
#[derive(Debug)]
pub struct HealthState {
    args: HealthArgs,
    in_flight: HashMap<u32, JoinHandle<()>>,
    failures: HashMap<u32, u32>,
    latencies: VecDeque<Duration>,
    timer: Option<JoinHandle<()>>,
}

impl Drop for HealthState {
    fn drop(&mut self) {
        for (_, task) in self.in_flight.drain() {
            task.abort();
        }
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
    }
}

impl Actor for HealthMonitor {
    type Msg = HealthMsg;
    type State = HealthState;
    type Arguments = HealthArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<HealthMsg>,
        args: HealthArgs,
    ) -> Result<HealthState, ActorProcessingErr> {
        let interval = args.config.interval;
        let me = myself.clone();
        let timer = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await; // the first tick is immediate; the worker is still booting
            loop {
                ticks.tick().await;
                if me.send_message(HealthMsg(Tick::Check)).is_err() {
                    return;
                }
            }
        });
        Ok(HealthState {
            args,
            in_flight: HashMap::new(),
            failures: HashMap::new(),
            latencies: VecDeque::with_capacity(LATENCY_WINDOW),
            timer: Some(timer),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<HealthMsg>,
        HealthMsg(tick): HealthMsg,
        state: &mut HealthState,
    ) -> Result<(), ActorProcessingErr> {
        match tick {
            Tick::Check => state.check(&myself),
            Tick::Result(result, pid) => state.record(result, pid),
        }
        Ok(())
    }
}

impl HealthState {
    fn check(&mut self, myself: &ActorRef<HealthMsg>) {
        self.in_flight.retain(|_, task| !task.is_finished());
        let workers = self.args.workers.borrow().clone();
        // Forget the counts of workers that are gone.
        self.failures
            .retain(|pid, _| workers.iter().any(|w| w.pid() == *pid));
        for worker in workers {
            let pid = worker.pid();
            if self.in_flight.contains_key(&pid)
                || !matches!(worker.state(), crate::WorkerState::Ready(_))
            {
                continue;
            }
            let timeout = self.args.config.timeout;
            let me = myself.clone();
            self.in_flight.insert(
                pid,
                tokio::spawn(async move {
                    let started = Instant::now();
                    let options = CallOptions {
                        timeout: Some(timeout),
                        on_hang: OnHang::Report,
                        ..CallOptions::default()
                    };
                    let result = match worker.call(Command::Ping, options).await {
                        Ok(_) => Ok(started.elapsed()),
                        Err(error) => Err(error.to_string()),
                    };
                    let _ = me.send_message(HealthMsg(Tick::Result(result, pid)));
                }),
            );
        }
    }

    fn record(&mut self, result: Result<Duration, String>, pid: u32) {
        let config = self.args.config;
        let failures = self.failures.entry(pid).or_insert(0);
        let mut kill = None;
        match &result {
            Ok(latency) => {
                *failures = 0;
                if self.latencies.len() == LATENCY_WINDOW {
                    self.latencies.pop_front();
                }
                self.latencies.push_back(*latency);
            }
            Err(error) => {
                *failures += 1;
                tracing::warn!(pid, failures = *failures, %error, "health check failed");
                if config.restart_after.is_some_and(|n| *failures >= n) {
                    *failures = 0;
                    kill = Some(error.clone());
                }
            }
        }
        let worst = self.failures.values().copied().max().unwrap_or(0);
        let latency = stats(&self.latencies);
        self.args.status.send_modify(|status| {
            status.checks += 1;
            if result.is_err() {
                status.failures += 1;
            }
            if kill.is_some() {
                status.restarts += 1;
            }
            status.consecutive_failures = worst;
            status.latency = latency;
            status.health = verdict(worst, &config);
        });
        if let Some(error) = kill
            && let Some(worker) = self.args.workers.borrow().iter().find(|w| w.pid() == pid)
        {
            worker.replace(format!(
                "failed {} health checks in a row; last: {error}",
                config.restart_after.unwrap_or(0)
            ));
        }
    }
}

fn verdict(failures: u32, config: &HealthConfig) -> Health {
    if failures == 0 {
        Health::Healthy
    } else if failures >= config.unhealthy_after {
        Health::Unhealthy
    } else if failures >= config.degraded_after {
        Health::Degraded
    } else {
        Health::Healthy
    }
}

fn stats(samples: &VecDeque<Duration>) -> LatencyStats {
    let mut sorted: Vec<Duration> = samples.iter().copied().collect();
    sorted.sort();
    let Some(&max) = sorted.last() else {
        return LatencyStats::default();
    };
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    let total: Duration = sorted.iter().sum();
    LatencyStats {
        samples: sorted.len(),
        last: samples.back().copied().unwrap_or_default(),
        mean: total / u32::try_from(sorted.len()).unwrap_or(u32::MAX),
        p50: at(0.5),
        p99: at(0.99),
        max,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_follows_consecutive_failures() {
        let config = HealthConfig::default();
        assert_eq!(verdict(0, &config), Health::Healthy);
        assert_eq!(verdict(1, &config), Health::Degraded);
        assert_eq!(verdict(2, &config), Health::Degraded);
        assert_eq!(verdict(3, &config), Health::Unhealthy);
    }

    #[test]
    fn latency_stats_are_order_statistics() {
        let samples: VecDeque<Duration> = (1..=100).map(Duration::from_millis).collect();
        let stats = stats(&samples);
        assert_eq!(stats.samples, 100);
        assert_eq!(stats.max, Duration::from_millis(100));
        assert_eq!(stats.p50, Duration::from_millis(51));
        assert_eq!(stats.p99, Duration::from_millis(99));
        assert_eq!(stats.last, Duration::from_millis(100));
        assert_eq!(stats.mean, Duration::from_micros(50_500));
    }
}
