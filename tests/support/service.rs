//! A DSPex service on real Python workers, driven through the public
//! `Dspex` API, with the same leak check as `TestPool`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dspex::adapter::PoolAdapter;
use dspex::bridge::pool::Pool;
use dspex::bridge::worker::WorkerEvent;
use dspex::{Config, Dspex, LmConfig, ModeSetting};
use dspex_testkit::{LeakReport, check_leaks, fd_count, managed_python};
use tokio::sync::broadcast;

/// A configuration for tests: real workers on the managed Python, fault
/// commands on, DSPy imported before the handshake (programs run at once),
/// health checks rare, a name of its own.
pub fn config(mode: ModeSetting) -> Config {
    let python = managed_python().expect("managed python");
    let mut config = Config {
        name: format!("svc{:08x}", rand_u32()),
        mode,
        ..Config::default()
    };
    config.python.interpreter = Some(python.interpreter);
    config
        .worker_env
        .push(("DSPEX_TEST_FAULTS".into(), "1".into()));
    config.health.interval_ms = 3_600_000;
    config.health.restart_after = None;
    config
}

/// The offline LM with `latency_ms` of simulated latency.
pub fn slow_lm(latency_ms: u64) -> LmConfig {
    let mut lm = LmConfig::dummy();
    lm.extra.insert("latency_ms".into(), latency_ms.into());
    lm
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish() as u32
}

/// A running service and what its leak check needs.
#[derive(Debug)]
pub struct Service {
    /// The handle under test.
    pub dspex: Dspex,
    adapter: Arc<PoolAdapter>,
    spawned: Arc<Mutex<Vec<u32>>>,
    recorder: tokio::task::JoinHandle<()>,
    fd_baseline: usize,
    finished: bool,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.recorder.abort();
        if !self.finished {
            // A test that failed before `finish`: leave nothing running.
            for pid in dspex::bridge::process::tagged_processes(self.pool().run_tag()) {
                let _ = dspex::bridge::process::kill_process(pid);
            }
        }
    }
}

impl Service {
    /// Starts the Python adapter `config` describes, and a `Dspex` on it.
    ///
    /// # Errors
    /// When the service cannot start.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let fd_baseline = fd_count();
        let adapter = Arc::new(PoolAdapter::python(config.tree_config()).await?);
        let pool = adapter.pool().expect("a pool").clone();
        let spawned = Arc::new(Mutex::new(pool.status().pids()));
        let recorder = {
            let spawned = Arc::clone(&spawned);
            let mut events = pool.worker_events();
            tokio::spawn(async move {
                loop {
                    match events.recv().await {
                        Ok(WorkerEvent::Spawned { pid, .. }) => spawned.lock().unwrap().push(pid),
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            })
        };
        let dspex = Dspex::builder()
            .config(config)
            .with_adapter(Arc::clone(&adapter) as Arc<dyn dspex::adapter::Adapter>)
            .start()
            .await?;
        Ok(Self {
            dspex,
            adapter,
            spawned,
            recorder,
            fd_baseline,
            finished: false,
        })
    }

    /// The pool under the handle.
    pub fn pool(&self) -> &Pool {
        self.adapter.pool().expect("a pool")
    }

    /// Every worker pid the service has had.
    pub fn spawned_pids(&self) -> Vec<u32> {
        self.spawned.lock().unwrap().clone()
    }

    /// Shuts the service down through `Dspex::shutdown` and checks nothing
    /// leaked; panics if something did.
    pub async fn finish(mut self) -> LeakReport {
        self.finished = true;
        self.dspex.shutdown().await;
        let pool = self.pool().clone();
        let report = check_leaks(
            pool.run_tag(),
            pool.fds(),
            &self.spawned_pids(),
            self.fd_baseline,
            Duration::from_secs(3),
        )
        .await;
        assert!(report.is_clean(), "leak check failed: {report:?}");
        report
    }
}

/// Creates the program `qa` (`q: str -> a: str`, `predict`) the service
/// tests run.
pub async fn create_qa(dspex: &Dspex) {
    let signature = dspex::Signature::parse("q: str -> a: str").expect("a signature");
    dspex
        .create_program("qa", signature, dspex::Module::Predict)
        .await
        .expect("program qa");
}

/// Starts `n` calls of `qa` in the background (inputs `q0`, `q1`, ...).
pub fn spawn_calls(
    dspex: &Dspex,
    n: usize,
    options: &dspex::ExecuteOptions,
) -> Vec<tokio::task::JoinHandle<dspex::Result<dspex::Prediction>>> {
    (0..n)
        .map(|i| {
            let dspex = dspex.clone();
            let options = options.clone();
            tokio::spawn(async move {
                dspex
                    .execute("qa", serde_json::json!({"q": format!("q{i}")}), options)
                    .await
            })
        })
        .collect()
}

/// Waits (polling the handle's status, with a deadline) until `n` calls are
/// in flight through it.
pub async fn wait_in_flight(dspex: &Dspex, n: usize) {
    dspex_testkit::poll_until(Duration::from_secs(10), "calls in flight", || {
        dspex.status().in_flight >= n
    })
    .await
    .expect("calls in flight");
}
