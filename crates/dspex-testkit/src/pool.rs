//! [`TestPool`]: one isolated pool of real Python workers per test.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dspex_bridge::pool::{Pool, PoolConfig, PoolEvent, PoolStatus};
use nix::sys::signal::Signal;

use crate::leak::{self, LeakReport};
use crate::tree::{managed_python, test_name, test_worker_env};

/// An isolated pool for one test, with a leak check at the end.
///
/// Defaults follow the reliability contract's config under test (4 workers,
/// 3 restarts in 5 s, backoff 100 ms ×2, checkout timeout 5 s), with the
/// fault commands on and DSPy imported lazily. Health pings are off unless
/// the test sets them.
#[derive(Debug)]
pub struct TestPool {
    pool: Pool,
    spawned: Arc<Mutex<Vec<u32>>>,
    recorder: tokio::task::JoinHandle<()>,
    fd_baseline: usize,
    _tmp: tempfile::TempDir,
    finished: bool,
}

impl TestPool {
    /// The config a test starts from; change what the test is about.
    pub fn config() -> PoolConfig {
        let mut config = PoolConfig {
            name: test_name(),
            env: test_worker_env(),
            sweep_orphans: false,
            ..PoolConfig::default()
        };
        config.health.interval = Duration::from_secs(3600);
        config.health.restart_after = None;
        config
    }

    /// Starts a pool with `config` on the managed Python and waits until
    /// every eager worker is ready.
    ///
    /// # Errors
    /// When the environment or the pool cannot start, or the workers are
    /// not ready within `ready_within`.
    pub async fn start(mut config: PoolConfig, ready_within: Duration) -> anyhow::Result<Self> {
        let python = tokio::task::spawn_blocking(managed_python).await??;
        let tmp = tempfile::Builder::new()
            .prefix(&format!("dspex-{}-", config.name))
            .tempdir()?;
        config.env.push(("TMPDIR".into(), tmp.path().into()));
        let fd_baseline = leak::fd_count();
        let lazy = config.lazy;
        let size = config.size;
        let pool = Pool::start_on(config, python).await?;
        let spawned = Arc::new(Mutex::new(Vec::new()));
        let recorder = {
            let spawned = Arc::clone(&spawned);
            let mut status = pool.status_watch();
            tokio::spawn(async move {
                loop {
                    let pids = status.borrow_and_update().pids();
                    {
                        let mut seen = spawned
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        for pid in pids {
                            if !seen.contains(&pid) {
                                seen.push(pid);
                            }
                        }
                    }
                    if status.changed().await.is_err() {
                        return;
                    }
                }
            })
        };
        let this = Self {
            pool,
            spawned,
            recorder,
            fd_baseline,
            _tmp: tmp,
            finished: false,
        };
        if !lazy {
            this.wait_status(ready_within, |s| s.idle == size).await?;
        }
        Ok(this)
    }

    /// The pool under test.
    pub fn pool(&self) -> &Pool {
        &self.pool
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

    /// Pool events from now on.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<PoolEvent> {
        self.pool.subscribe()
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

    /// Shuts the pool down and runs the leak check; panics if anything leaked.
    pub async fn finish(mut self) -> LeakReport {
        self.finished = true;
        let report = self.shutdown_and_check().await;
        assert!(report.is_clean(), "leak check failed: {report:?}");
        report
    }

    async fn shutdown_and_check(&self) -> LeakReport {
        let stragglers = self.pool.shutdown(Duration::from_secs(30)).await;
        let mut report = leak::check(
            self.pool.run_tag(),
            &self.spawned_pids(),
            self.fd_baseline,
            Duration::from_secs(2),
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

impl Drop for TestPool {
    fn drop(&mut self) {
        self.recorder.abort();
        if self.finished {
            return;
        }
        leak::check_on_drop(self.pool.run_tag(), self.shutdown_and_check());
    }
}
