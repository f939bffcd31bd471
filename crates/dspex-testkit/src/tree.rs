//! [`TestTree`]: one isolated single-bridge tree per test.

use std::collections::hash_map::RandomState;
use std::ffi::OsString;
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dspex_bridge::health::HealthConfig;
use dspex_bridge::process::StopGrace;
use dspex_bridge::worker::WorkerEvent;
use dspex_bridge::{
    Bridge, BridgeConfig, BridgeError, BridgeState, CallOptions, PythonConfig, PythonEnv,
    WorkerHandle,
};
use dspex_protocol::{Command, Value};
use dspex_supervision::{Backoff, RestartIntensity};
use nix::sys::signal::Signal;
use tokio::sync::broadcast;

use crate::leak::{self, LeakReport};

/// How long the leak check waits for processes to go.
const SETTLE: Duration = Duration::from_secs(2);

/// The managed Python environment (with the test requirements), created on
/// first use under a file lock shared by every test process.
///
/// # Errors
/// When the environment cannot be created.
pub fn managed_python() -> anyhow::Result<PythonEnv> {
    Ok(PythonEnv::resolve(&PythonConfig {
        managed_only: true,
        test_extras: true,
        ..PythonConfig::default()
    })?)
}

/// Builds a [`TestTree`]. Defaults: the reliability contract's config
/// (3 restarts in 5 s, backoff 100 ms ×2), fault commands on, lazy DSPy,
/// health checks off (tests that want them turn them on).
#[derive(Debug, Clone)]
pub struct TestTreeBuilder {
    config: BridgeConfig,
    interpreter: Option<PathBuf>,
}

/// A name unique to one test tree (a per-tree prefix for worker ids).
pub(crate) fn test_name() -> String {
    let nonce = RandomState::new().build_hasher().finish();
    format!("t{:08x}", nonce as u32)
}

/// The workers' environment in tests: fault commands on, DSPy lazy.
pub(crate) fn test_worker_env() -> Vec<(OsString, OsString)> {
    vec![env("DSPEX_TEST_FAULTS", "1"), env("DSPEX_LAZY_DSPY", "1")]
}

impl Default for TestTreeBuilder {
    fn default() -> Self {
        let config = BridgeConfig {
            name: test_name(),
            health: HealthConfig {
                interval: Duration::from_secs(3600),
                restart_after: None,
                ..HealthConfig::default()
            },
            env: test_worker_env(),
            // Other trees' workers are live, not orphans: never sweep here.
            sweep_orphans: false,
            ..BridgeConfig::default()
        };
        Self {
            config,
            interpreter: None,
        }
    }
}

fn env(key: &str, value: &str) -> (OsString, OsString) {
    (key.into(), value.into())
}

impl TestTreeBuilder {
    /// Sets the request timeout.
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.worker.request_timeout = timeout;
        self
    }

    /// Sets the boot timeout.
    #[must_use]
    pub fn boot_timeout(mut self, timeout: Duration) -> Self {
        self.config.worker.boot_timeout = timeout;
        self
    }

    /// Sets the checkout timeout.
    #[must_use]
    pub fn checkout_timeout(mut self, timeout: Duration) -> Self {
        self.config.checkout_timeout = timeout;
        self
    }

    /// Sets the restart budget.
    #[must_use]
    pub fn intensity(mut self, max_restarts: u32, within: Duration) -> Self {
        self.config.intensity = RestartIntensity {
            max_restarts,
            within,
        };
        self
    }

    /// Sets the restart backoff.
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// Sets the stop grace periods.
    #[must_use]
    pub fn stop_grace(mut self, grace: StopGrace) -> Self {
        self.config.worker.stop_grace = grace;
        self
    }

    /// Sets the health checks.
    #[must_use]
    pub fn health(mut self, health: HealthConfig) -> Self {
        self.config.health = health;
        self
    }

    /// Sets the largest frame.
    #[must_use]
    pub fn max_frame(mut self, max_frame: usize) -> Self {
        self.config.worker.max_frame = max_frame;
        self
    }

    /// Adds an environment variable for the workers.
    #[must_use]
    pub fn worker_env(mut self, key: &str, value: &str) -> Self {
        self.config.env.push(env(key, value));
        self
    }

    /// Imports DSPy before the handshake (for tests that run programs).
    #[must_use]
    pub fn eager_dspy(mut self) -> Self {
        self.config.env.retain(|(k, _)| k != "DSPEX_LAZY_DSPY");
        self
    }

    /// Runs workers with this interpreter instead of the managed one (for
    /// spawn-failure tests).
    #[must_use]
    pub fn interpreter(mut self, path: impl Into<PathBuf>) -> Self {
        self.interpreter = Some(path.into());
        self
    }

    /// Starts the tree.
    ///
    /// # Errors
    /// When the Python environment or the tree cannot start.
    pub async fn start(self) -> anyhow::Result<TestTree> {
        let mut python = tokio::task::spawn_blocking(managed_python).await??;
        if let Some(interpreter) = self.interpreter {
            python.interpreter = interpreter;
        }
        let tmp = tempfile::Builder::new()
            .prefix(&format!("dspex-{}-", self.config.name))
            .tempdir()?;
        let mut config = self.config;
        config.env.push(("TMPDIR".into(), tmp.path().into()));
        let fd_baseline = leak::fd_count();
        let started = Instant::now();
        let bridge = Bridge::start_on(config, python).await?;
        let spawned = Arc::new(Mutex::new(Vec::new()));
        let mut events = bridge.subscribe();
        if let Some(worker) = bridge.worker() {
            record(&spawned, worker.pid());
        }
        let recorder = {
            let spawned = Arc::clone(&spawned);
            tokio::spawn(async move {
                loop {
                    match events.recv().await {
                        Ok(WorkerEvent::Spawned { pid, .. }) => record(&spawned, pid),
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            })
        };
        Ok(TestTree {
            bridge,
            spawned,
            recorder,
            fd_baseline,
            started,
            _tmp: tmp,
            finished: false,
        })
    }
}

fn record(spawned: &Mutex<Vec<u32>>, pid: u32) {
    if pid == 0 {
        return;
    }
    let mut pids = spawned
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !pids.contains(&pid) {
        pids.push(pid);
    }
}

/// An isolated single-bridge tree for one test, with a leak check at the end.
#[derive(Debug)]
pub struct TestTree {
    bridge: Bridge,
    spawned: Arc<Mutex<Vec<u32>>>,
    recorder: tokio::task::JoinHandle<()>,
    fd_baseline: usize,
    started: Instant,
    _tmp: tempfile::TempDir,
    finished: bool,
}

impl TestTree {
    /// A builder with the test defaults.
    pub fn builder() -> TestTreeBuilder {
        TestTreeBuilder::default()
    }

    /// Starts a tree with the test defaults.
    ///
    /// # Errors
    /// As [`TestTreeBuilder::start`].
    pub async fn start() -> anyhow::Result<Self> {
        Self::builder().start().await
    }

    /// The bridge under test.
    pub fn bridge(&self) -> &Bridge {
        &self.bridge
    }

    /// When the tree was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Waits for a ready worker.
    ///
    /// # Errors
    /// When none is ready within `timeout`.
    pub async fn ready(&self, timeout: Duration) -> anyhow::Result<WorkerHandle> {
        Ok(self.bridge.ready_worker(timeout).await?)
    }

    /// The current worker's pid, if there is a worker.
    pub fn worker_pid(&self) -> Option<u32> {
        self.bridge
            .worker()
            .map(|w| w.pid())
            .filter(|&pid| pid != 0)
    }

    /// Every worker pid this tree has spawned so far.
    pub fn spawned_pids(&self) -> Vec<u32> {
        self.spawned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Sends `signal` to the current worker's process (not its group).
    ///
    /// # Errors
    /// When there is no worker or the signal cannot be sent.
    pub fn signal_worker(&self, signal: Signal) -> anyhow::Result<u32> {
        let pid = self
            .worker_pid()
            .ok_or_else(|| anyhow::anyhow!("no worker"))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(pid)?), signal)?;
        Ok(pid)
    }

    /// Sends a command (a fault command, for example) through the bridge.
    ///
    /// # Errors
    /// The bridge's error.
    pub async fn command(&self, name: &str, args: Value) -> Result<Value, BridgeError> {
        self.bridge
            .call(Command::custom(name, args), CallOptions::default())
            .await
    }

    /// Worker events from now on.
    pub fn events(&self) -> broadcast::Receiver<WorkerEvent> {
        self.bridge.subscribe()
    }

    /// Waits until the bridge state satisfies `predicate`.
    ///
    /// # Errors
    /// At the deadline.
    pub async fn wait_state(
        &self,
        timeout: Duration,
        mut predicate: impl FnMut(&BridgeState) -> bool,
    ) -> anyhow::Result<BridgeState> {
        let bridge = self.bridge.clone();
        let status = self
            .bridge
            .supervisor()
            .wait_for(move |_| predicate(&bridge.status().state));
        tokio::time::timeout(timeout, status)
            .await
            .map_err(|_| anyhow::anyhow!("bridge state not reached within {timeout:?}"))??;
        Ok(self.bridge.status().state)
    }

    /// Shuts the tree down and runs the leak check; panics if anything leaked.
    pub async fn finish(mut self) -> LeakReport {
        self.finished = true;
        let report = self.shutdown_and_check().await;
        assert!(report.is_clean(), "leak check failed: {report:?}");
        report
    }

    async fn shutdown_and_check(&self) -> LeakReport {
        let stragglers = self.bridge.shutdown(Duration::from_secs(10)).await;
        let report = leak::check(
            self.bridge.run_tag(),
            &self.spawned_pids(),
            self.fd_baseline,
            SETTLE,
        )
        .await;
        if stragglers > 0 {
            return LeakReport {
                tagged_alive: vec![0; stragglers],
                ..report
            };
        }
        report
    }
}

impl Drop for TestTree {
    fn drop(&mut self) {
        self.recorder.abort();
        if self.finished {
            return;
        }
        leak::check_on_drop(self.bridge.run_tag(), self.shutdown_and_check());
    }
}
