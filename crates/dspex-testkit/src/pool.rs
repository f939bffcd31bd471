//! [`TestPool`]: one isolated pool of real Python workers per test, and
//! [`TestTree`], the same in single mode (one worker).

use std::collections::hash_map::RandomState;
use std::ffi::OsString;
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dspex_bridge::health::HealthConfig;
use dspex_bridge::pool::{
    Pool, PoolConfig, PoolError, PoolEvent, PoolState, PoolStatus, RecyclePolicy, RequestOptions,
    RevivePolicy,
};
use dspex_bridge::process::StopGrace;
use dspex_bridge::worker::WorkerEvent;
use dspex_bridge::{PythonConfig, PythonEnv, WorkerHandle};
use dspex_protocol::{Command, Value};
use dspex_supervision::{Backoff, RestartIntensity};
use nix::sys::signal::Signal;
use tokio::sync::broadcast;

use crate::leak::{self, LeakReport};

/// How long the leak check waits for processes and pipes to go.
const SETTLE: Duration = Duration::from_secs(2);

/// The managed Python environment (with the test requirements), created on
/// first use under a file lock shared by every test process.
///
/// # Errors
/// When the environment cannot be created.
pub fn managed_python() -> anyhow::Result<PythonEnv> {
    managed_python_for(None)
}

/// [`managed_python`] for a service's Python `project` (its requirements
/// layer installed, `DSPEX_PROJECT_DIR` set for workers).
///
/// # Errors
/// When the environment or the layer cannot be created.
pub fn managed_python_for(project: Option<PathBuf>) -> anyhow::Result<PythonEnv> {
    Ok(PythonEnv::resolve(&PythonConfig {
        managed_only: true,
        test_extras: true,
        project,
        ..PythonConfig::default()
    })?)
}

/// A name unique to one test pool (a per-tree prefix for worker ids).
pub(crate) fn test_name() -> String {
    let nonce = RandomState::new().build_hasher().finish();
    format!("t{:08x}", nonce as u32)
}

/// The workers' environment in tests: fault commands on, DSPy lazy.
pub(crate) fn test_worker_env() -> Vec<(OsString, OsString)> {
    vec![env("DSPEX_TEST_FAULTS", "1"), env("DSPEX_LAZY_DSPY", "1")]
}

fn env(key: &str, value: &str) -> (OsString, OsString) {
    (key.into(), value.into())
}

/// Single mode under test: [`TestTree::builder`] and [`TestTree::start`]
/// build a [`TestPool`] of exactly one worker (single mode is the pool
/// machinery with one worker).
#[derive(Debug, Clone, Copy)]
pub struct TestTree;

impl TestTree {
    /// A builder of a single-mode pool with the test defaults.
    pub fn builder() -> TestPoolBuilder {
        TestPoolBuilder::default().with(|c| {
            c.size = 1;
            c.max_overflow = 0;
        })
    }

    /// Starts a single-mode pool with the test defaults, without waiting
    /// for its worker.
    ///
    /// # Errors
    /// As [`TestPoolBuilder::start`].
    pub async fn start() -> anyhow::Result<TestPool> {
        Self::builder().start().await
    }
}

/// Builds a [`TestPool`]. Defaults: the reliability contract's config under
/// test (4 workers — 1 for [`TestTree::builder`] — one request per worker
/// at a time, 3 restarts in 5 s, backoff 100 ms ×2 for repeats, checkout
/// timeout 5 s), fault commands on, DSPy
/// imported lazily, health checks off (tests that want them turn them on).
#[derive(Debug, Clone)]
pub struct TestPoolBuilder {
    config: PoolConfig,
    interpreter: Option<PathBuf>,
    project: Option<PathBuf>,
}

impl Default for TestPoolBuilder {
    fn default() -> Self {
        Self {
            config: TestPool::config(),
            interpreter: None,
            project: None,
        }
    }
}

impl TestPoolBuilder {
    /// Replaces the whole configuration (its name and test environment are
    /// kept unless the new one sets them).
    #[must_use]
    pub fn config(mut self, config: PoolConfig) -> Self {
        self.config = config;
        self
    }

    /// Changes the configuration in place.
    #[must_use]
    pub fn with(mut self, change: impl FnOnce(&mut PoolConfig)) -> Self {
        change(&mut self.config);
        self
    }

    /// Sets the request timeout.
    #[must_use]
    pub fn request_timeout(self, timeout: Duration) -> Self {
        self.with(|c| c.worker.request_timeout = timeout)
    }

    /// Sets the hang grace.
    #[must_use]
    pub fn hang_grace(self, grace: Duration) -> Self {
        self.with(|c| c.worker.hang_grace = grace)
    }

    /// Sets the boot timeout.
    #[must_use]
    pub fn boot_timeout(self, timeout: Duration) -> Self {
        self.with(|c| c.worker.boot_timeout = timeout)
    }

    /// Sets the checkout timeout.
    #[must_use]
    pub fn checkout_timeout(self, timeout: Duration) -> Self {
        self.with(|c| c.checkout_timeout = timeout)
    }

    /// Sets the restart budget.
    #[must_use]
    pub fn intensity(self, max_restarts: u32, within: Duration) -> Self {
        self.with(|c| {
            c.intensity = RestartIntensity {
                max_restarts,
                within,
            };
        })
    }

    /// Sets the restart backoff.
    #[must_use]
    pub fn backoff(self, backoff: Backoff) -> Self {
        self.with(|c| c.backoff = backoff)
    }

    /// Sets the stop grace periods.
    #[must_use]
    pub fn stop_grace(self, grace: StopGrace) -> Self {
        self.with(|c| c.worker.stop_grace = grace)
    }

    /// Sets the health checks.
    #[must_use]
    pub fn health(self, health: HealthConfig) -> Self {
        self.with(|c| c.health = health)
    }

    /// Sets the recycling limits.
    #[must_use]
    pub fn recycle(self, recycle: RecyclePolicy) -> Self {
        self.with(|c| c.recycle = recycle)
    }

    /// Turns revive on.
    #[must_use]
    pub fn revive(self, revive: RevivePolicy) -> Self {
        self.with(|c| c.revive = Some(revive))
    }

    /// Sets the largest frame.
    #[must_use]
    pub fn max_frame(self, max_frame: usize) -> Self {
        self.with(|c| c.worker.max_frame = max_frame)
    }

    /// Adds an environment variable for the workers.
    #[must_use]
    pub fn worker_env(self, key: &str, value: &str) -> Self {
        self.with(|c| c.env.push(env(key, value)))
    }

    /// Imports DSPy before the handshake (for tests that run programs).
    #[must_use]
    pub fn eager_dspy(self) -> Self {
        self.with(|c| c.env.retain(|(k, _)| k != "DSPEX_LAZY_DSPY"))
    }

    /// Runs workers with this interpreter instead of the managed one (for
    /// spawn-failure tests).
    #[must_use]
    pub fn interpreter(mut self, path: impl Into<PathBuf>) -> Self {
        self.interpreter = Some(path.into());
        self
    }

    /// Gives the workers a Python project directory (see
    /// [`managed_python_for`]).
    #[must_use]
    pub fn project(mut self, dir: impl Into<PathBuf>) -> Self {
        self.project = Some(dir.into());
        self
    }

    /// Starts the pool without waiting for its workers.
    ///
    /// # Errors
    /// When the Python environment or the pool cannot start.
    pub async fn start(self) -> anyhow::Result<TestPool> {
        let project = self.project;
        let mut python = tokio::task::spawn_blocking(move || managed_python_for(project)).await??;
        if let Some(interpreter) = self.interpreter {
            python.interpreter = interpreter;
        }
        TestPool::start_unready(self.config, python).await
    }
}

/// An isolated pool for one test, with a leak check at the end: no process
/// with the pool's run tag alive (descendants included), none of its worker
/// pids a zombie, none of the pipes it opened still open — and, when the
/// test has the process to itself (nextest), the fd count back to baseline.
#[derive(Debug)]
pub struct TestPool {
    pool: Pool,
    spawned: Arc<Mutex<Vec<u32>>>,
    recorder: tokio::task::JoinHandle<()>,
    fd_baseline: usize,
    started: Instant,
    _tmp: tempfile::TempDir,
    finished: bool,
}

impl TestPool {
    /// The config a test starts from; change what the test is about.
    pub fn config() -> PoolConfig {
        let mut config = PoolConfig {
            name: test_name(),
            env: test_worker_env(),
            // Other pools' workers are live, not orphans: never sweep here.
            sweep_orphans: false,
            // The contract's scenarios count a worker busy with one request
            // (tests of concurrency set their own).
            per_worker_concurrency: 1,
            ..PoolConfig::default()
        };
        config.health = HealthConfig {
            interval: Duration::from_secs(3600),
            restart_after: None,
            ..HealthConfig::default()
        };
        config
    }

    /// A builder of a pool with the test defaults.
    pub fn builder() -> TestPoolBuilder {
        TestPoolBuilder::default()
    }

    /// Starts a pool with `config` on the managed Python and waits until
    /// every eager worker is ready.
    ///
    /// # Errors
    /// When the environment or the pool cannot start, or the workers are
    /// not ready within `ready_within`.
    pub async fn start(config: PoolConfig, ready_within: Duration) -> anyhow::Result<Self> {
        let python = tokio::task::spawn_blocking(managed_python).await??;
        let lazy = config.lazy;
        let size = config.size;
        let this = Self::start_unready(config, python).await?;
        if !lazy {
            this.wait_status(ready_within, |s| s.idle == size).await?;
        }
        Ok(this)
    }

    async fn start_unready(mut config: PoolConfig, python: PythonEnv) -> anyhow::Result<Self> {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("dspex-{}-", config.name))
            .tempdir()?;
        config.env.push(("TMPDIR".into(), tmp.path().into()));
        let fd_baseline = leak::fd_count();
        let started = Instant::now();
        let pool = Pool::start_on(config, python).await?;
        let spawned = Arc::new(Mutex::new(Vec::new()));
        // Every pid: from the events (spawns the status never shows, of
        // workers that died at once) and from the status (the workers
        // spawned before this subscription).
        let recorder = {
            let spawned = Arc::clone(&spawned);
            let mut events = pool.worker_events();
            let mut status = pool.status_watch();
            tokio::spawn(async move {
                loop {
                    record(&spawned, status.borrow_and_update().pids());
                    tokio::select! {
                        event = events.recv() => match event {
                            Ok(WorkerEvent::Spawned { pid, .. }) => record(&spawned, [pid]),
                            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                            Err(broadcast::error::RecvError::Closed) => return,
                        },
                        changed = status.changed() => if changed.is_err() { return },
                    }
                }
            })
        };
        Ok(Self {
            pool,
            spawned,
            recorder,
            fd_baseline,
            started,
            _tmp: tmp,
            finished: false,
        })
    }

    /// The pool under test.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// When the pool was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Waits for a ready worker (the first, in slot order).
    ///
    /// # Errors
    /// When none is ready within `timeout`.
    pub async fn ready(&self, timeout: Duration) -> anyhow::Result<WorkerHandle> {
        Ok(self.pool.ready_worker(timeout).await?)
    }

    /// The first worker's pid, if it has one.
    pub fn worker_pid(&self) -> Option<u32> {
        self.pool
            .status()
            .workers
            .first()
            .map(|w| w.pid)
            .filter(|&pid| pid != 0)
    }

    /// Worker restarts counted against the budget so far.
    pub fn restarts(&self) -> u32 {
        self.pool.status().restarts
    }

    /// Waits until the status satisfies `predicate`.
    ///
    /// # Errors
    /// At the deadline (with the last status in the message).
    pub async fn wait_status(
        &self,
        timeout: Duration,
        mut predicate: impl FnMut(&PoolStatus) -> bool,
    ) -> anyhow::Result<PoolStatus> {
        let mut status = self.pool.status_watch();
        match tokio::time::timeout(timeout, status.wait_for(|s| predicate(s))).await {
            Ok(Ok(status)) => Ok(status.clone()),
            Ok(Err(_)) => anyhow::bail!("the pool stopped"),
            Err(_) => anyhow::bail!(
                "status not reached within {timeout:?}; last: {:?}",
                self.pool.status()
            ),
        }
    }

    /// Waits until the pool's state satisfies `predicate`.
    ///
    /// # Errors
    /// At the deadline.
    pub async fn wait_state(
        &self,
        timeout: Duration,
        mut predicate: impl FnMut(&PoolState) -> bool,
    ) -> anyhow::Result<PoolState> {
        Ok(self
            .wait_status(timeout, |s| predicate(&s.state))
            .await?
            .state)
    }

    /// Pool events from now on.
    pub fn events(&self) -> broadcast::Receiver<PoolEvent> {
        self.pool.subscribe()
    }

    /// Worker events (spawned, ready, exited) from now on.
    pub fn worker_events(&self) -> broadcast::Receiver<WorkerEvent> {
        self.pool.worker_events()
    }

    /// Every worker pid this pool has had.
    pub fn spawned_pids(&self) -> Vec<u32> {
        self.spawned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Sends `signal` to one process (a worker pid from the status).
    ///
    /// # Errors
    /// When the signal cannot be sent.
    pub fn signal(&self, pid: u32, signal: Signal) -> anyhow::Result<()> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(pid)?), signal)?;
        Ok(())
    }

    /// Sends `signal` to the first worker's process (not its group).
    ///
    /// # Errors
    /// When there is no worker or the signal cannot be sent.
    pub fn signal_worker(&self, signal: Signal) -> anyhow::Result<u32> {
        let pid = self
            .worker_pid()
            .ok_or_else(|| anyhow::anyhow!("no worker"))?;
        self.signal(pid, signal)?;
        Ok(pid)
    }

    /// Sends a command (a fault command, for example) through the pool.
    ///
    /// # Errors
    /// The pool's error.
    pub async fn command(&self, name: &str, args: Value) -> Result<Value, PoolError> {
        self.pool
            .call(Command::custom(name, args), RequestOptions::default())
            .await
    }

    /// Shuts the pool down and runs the leak check; panics if anything leaked.
    pub async fn finish(mut self) -> LeakReport {
        self.finished = true;
        let report = self.shutdown_and_check().await;
        assert!(report.is_clean(), "leak check failed: {report:?}");
        report
    }

    async fn shutdown_and_check(&self) -> LeakReport {
        let stragglers = self
            .pool
            .shutdown(Duration::from_secs(10), Duration::from_secs(30))
            .await;
        let mut report = leak::check(
            self.pool.run_tag(),
            self.pool.fds(),
            &self.spawned_pids(),
            self.fd_baseline,
            SETTLE,
        )
        .await;
        if stragglers > 0 {
            report
                .tagged_alive
                .extend(std::iter::repeat_n(0, stragglers));
        }
        report
    }
}

fn record(spawned: &Mutex<Vec<u32>>, pids: impl IntoIterator<Item = u32>) {
    let mut seen = spawned
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for pid in pids {
        if pid != 0 && !seen.contains(&pid) {
            seen.push(pid);
        }
    }
}

impl Drop for TestPool {
    fn drop(&mut self) {
        self.recorder.abort();
        if self.finished {
            return;
        }
        leak::check_on_drop(self.pool.run_tag(), self.shutdown_and_check());
    }
}
