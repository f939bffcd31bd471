//! Single-bridge mode: one worker and its health monitor under a one_for_one
//! supervisor.
//!
//! ```text
//! BridgeSupervisor (one_for_one, restart intensity + backoff)
//! ├─ Worker "<name>-0"   owns one Python process
//! └─ HealthMonitor       pings it; kills it after too many failures
//! ```
//!
//! [`Bridge::call`] waits (up to the checkout timeout) for a *ready* worker,
//! so callers ride through a restart; once the supervisor has given up every
//! call fails at once with [`BridgeError::Unavailable`], carrying the last
//! failure (exit status and stderr tail).

use std::ffi::OsString;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dspex_protocol::{Command, Value};
use dspex_supervision::{
    Backoff, OnGiveUp, RestartIntensity, Strategy, Supervisor, SupervisorError, SupervisorEvent,
    SupervisorHandle, SupervisorOptions, SupervisorState,
};
use ractor::ActorCell;
use tokio::sync::{broadcast, watch};

use crate::context::{TreeContext, TreeSpec, kill_stragglers};
use crate::health::{HealthConfig, HealthMonitor, HealthStatus};
use crate::process::{RunTag, SpawnStrategy};
use crate::worker::{CallOptions, WorkerConfig, WorkerEvent, WorkerHandle, WorkerState};
use crate::{PythonConfig, PythonEnv, WorkerError};

/// How many times a request that never reached the worker is offered to
/// its replacement.
const REDELIVERIES: u32 = 3;

/// Configuration of a single bridge.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// Prefix of worker ids and the spawner thread's name; give each tree in
    /// a process its own.
    pub name: String,
    /// Where the Python comes from.
    pub python: PythonConfig,
    /// The worker's timeouts and limits.
    pub worker: WorkerConfig,
    /// Restart budget of the bridge supervisor (default 3 in 5 s).
    pub intensity: RestartIntensity,
    /// Delay between restarts (default 100 ms ×2, capped at 5 s).
    pub backoff: Backoff,
    /// Health checks.
    pub health: HealthConfig,
    /// How long a call waits for a ready worker.
    pub checkout_timeout: Duration,
    /// Extra environment variables for workers.
    pub env: Vec<(OsString, OsString)>,
    /// Extra command-line arguments for workers.
    pub args: Vec<OsString>,
    /// Kill tagged workers of dead hosts at start (G9).
    pub sweep_orphans: bool,
    /// How workers are created (default: a [`DirectSpawner`](crate::process::DirectSpawner) per tree).
    pub spawner: Option<Arc<dyn SpawnStrategy>>,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            name: "bridge".to_owned(),
            python: PythonConfig::default(),
            worker: WorkerConfig::default(),
            intensity: RestartIntensity::default(),
            backoff: Backoff::default(),
            health: HealthConfig::default(),
            checkout_timeout: Duration::from_secs(5),
            env: Vec::new(),
            args: Vec::new(),
            sweep_orphans: true,
            spawner: None,
        }
    }
}

/// Why a bridge call or start failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// The worker failed the call.
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// No ready worker within the checkout timeout.
    #[error("no ready worker within {0:?}")]
    CheckoutTimeout(Duration),
    /// The bridge gave up restarting its worker; nothing will serve again.
    #[error("the bridge is unavailable: {cause}")]
    Unavailable {
        /// The last failure (with the worker's exit status and stderr tail).
        cause: String,
    },
    /// The bridge is shutting down or has stopped.
    #[error("the bridge is shutting down")]
    ShuttingDown,
    /// The Python environment could not be resolved.
    #[error(transparent)]
    Environment(Arc<crate::EnvError>),
    /// The tree could not be started.
    #[error("could not start the bridge: {0}")]
    Start(String),
}

/// The bridge's lifecycle, as its supervisor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BridgeState {
    /// Serving (possibly while a worker restarts).
    Running,
    /// Gave up; the text is the last failure.
    Failed(String),
    /// Shutting down or stopped.
    Stopped,
}

/// A snapshot of the bridge.
#[derive(Debug, Clone, PartialEq)]
pub struct BridgeStatus {
    /// Lifecycle.
    pub state: BridgeState,
    /// The current worker: id, pid and state.
    pub worker: Option<(String, u32, WorkerState)>,
    /// Worker restarts so far.
    pub restarts: u32,
    /// The health monitor's view.
    pub health: HealthStatus,
}

/// A running single bridge. Cheap to clone; every clone drives the same tree.
#[derive(Debug, Clone)]
pub struct Bridge {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    supervisor: SupervisorHandle,
    worker: watch::Receiver<Option<WorkerHandle>>,
    health: watch::Receiver<HealthStatus>,
    events: broadcast::Sender<WorkerEvent>,
    run_tag: RunTag,
    python: PythonEnv,
    worker_child: String,
    checkout_timeout: Duration,
    shutdown_requested: AtomicBool,
}

impl Bridge {
    /// Resolves Python, then starts the tree. Returns once the worker process
    /// is spawned (not yet ready: calls wait for it).
    ///
    /// # Cancel safety
    /// Not cancel safe once the tree has started: a dropped future leaves it
    /// running without a handle. Start it from a task that lives as long as
    /// the service.
    ///
    /// # Errors
    /// [`BridgeError::Environment`] when no Python can be resolved,
    /// [`BridgeError::Start`] when the tree cannot start.
    pub async fn start(config: BridgeConfig) -> Result<Self, BridgeError> {
        let python = PythonEnv::resolve_async(config.python.clone())
            .await
            .map_err(|e| BridgeError::Environment(Arc::new(e)))?;
        Self::start_with(config, python, None, OnGiveUp::Remain).await
    }

    /// Starts the tree on an already resolved Python.
    ///
    /// # Cancel safety
    /// As [`Bridge::start`].
    ///
    /// # Errors
    /// [`BridgeError::Start`] when the tree cannot start.
    pub async fn start_on(config: BridgeConfig, python: PythonEnv) -> Result<Self, BridgeError> {
        Self::start_with(config, python, None, OnGiveUp::Remain).await
    }

    /// Starts the tree on a resolved Python, linked under `parent` if given.
    pub(crate) async fn start_with(
        config: BridgeConfig,
        python: PythonEnv,
        parent: Option<ActorCell>,
        on_give_up: OnGiveUp,
    ) -> Result<Self, BridgeError> {
        let ctx = Arc::new(
            TreeContext::start(TreeSpec {
                name: &config.name,
                python: python.clone(),
                spawner: config.spawner.as_ref(),
                sweep_orphans: config.sweep_orphans,
                worker: config.worker,
                env: &config.env,
                args: &config.args,
                event_capacity: 1024,
            })
            .map_err(BridgeError::Start)?,
        );
        let events = ctx.events.clone();
        let (slot, worker) = watch::channel(None);
        let (watched, health_workers) = watch::channel(Vec::new());
        let (health_tx, health) = watch::channel(HealthStatus::default());
        let worker_child = format!("{}-0", config.name);
        let health_config = config.health;

        let supervisor = Supervisor::new(SupervisorOptions {
            strategy: Strategy::OneForOne,
            intensity: config.intensity,
            backoff: config.backoff,
            on_give_up,
            ..SupervisorOptions::default()
        })
        .child(ctx.worker_child(
            worker_child.clone(),
            Arc::new(move |handle: WorkerHandle| {
                watched.send_replace(vec![handle.clone()]);
                slot.send_replace(Some(handle));
            }),
        ))
        .child(HealthMonitor::child(
            health_workers,
            health_config,
            health_tx,
        ));
        let supervisor = match parent {
            Some(parent) => supervisor.spawn_linked(parent).await,
            None => supervisor.spawn().await,
        }
        .map_err(|e| BridgeError::Start(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                supervisor,
                worker,
                health,
                events,
                run_tag: ctx.run_tag.clone(),
                python,
                worker_child,
                checkout_timeout: config.checkout_timeout,
                shutdown_requested: AtomicBool::new(false),
            }),
        })
    }

    /// Sends a command to the worker, waiting up to the checkout timeout for
    /// it to be ready.
    ///
    /// # Cancel safety
    /// As [`WorkerHandle::call`]: a dropped future leaves a sent request
    /// running; its reply is dropped by id and the worker stays in service.
    ///
    /// # Errors
    /// [`BridgeError::Worker`] for the worker's errors,
    /// [`BridgeError::CheckoutTimeout`], [`BridgeError::Unavailable`] once the
    /// bridge has given up, [`BridgeError::ShuttingDown`].
    pub async fn call(&self, command: Command, options: CallOptions) -> Result<Value, BridgeError> {
        let mut attempt = 1;
        loop {
            let worker = self.ready_worker(self.inner.checkout_timeout).await?;
            match worker.call(command.clone(), options.clone()).await {
                // The worker was gone before the request reached it: it did
                // not run, so its replacement takes it.
                Err(WorkerError::NotDelivered { .. }) if attempt < REDELIVERIES => attempt += 1,
                result => return Ok(result?),
            }
        }
    }

    /// The current worker once it is ready.
    ///
    /// # Cancel safety
    /// Cancel safe: it only observes.
    ///
    /// # Errors
    /// As [`Bridge::call`], without the worker's errors.
    pub async fn ready_worker(&self, timeout: Duration) -> Result<WorkerHandle, BridgeError> {
        let wait = async {
            let mut slot = self.inner.worker.clone();
            loop {
                self.check_running()?;
                let current = slot.borrow_and_update().clone();
                if let Some(worker) = current {
                    if matches!(worker.state(), WorkerState::Ready(_)) {
                        return Ok(worker);
                    }
                    tokio::select! {
                        _ = worker.ready() => {}
                        changed = slot.changed() => if changed.is_err() { return Err(BridgeError::ShuttingDown) },
                        _ = self.settled_state() => {}
                    }
                } else {
                    tokio::select! {
                        changed = slot.changed() => if changed.is_err() { return Err(BridgeError::ShuttingDown) },
                        _ = self.settled_state() => {}
                    }
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or(Err(BridgeError::CheckoutTimeout(timeout)))
    }

    fn check_running(&self) -> Result<(), BridgeError> {
        match self.inner.supervisor.status().state {
            SupervisorState::Starting | SupervisorState::Running => Ok(()),
            SupervisorState::Failed(cause) => Err(BridgeError::Unavailable {
                cause: cause.to_string(),
            }),
            // Stopping that nobody asked for is the supervisor giving up:
            // wait for its `Failed` and the cause that comes with it.
            SupervisorState::Stopping if !self.shutdown_requested() => Ok(()),
            SupervisorState::Stopping | SupervisorState::Stopped => Err(BridgeError::ShuttingDown),
        }
    }

    fn shutdown_requested(&self) -> bool {
        self.inner.shutdown_requested.load(Ordering::SeqCst)
    }

    /// Resolves when the supervisor reaches a state a waiting caller must
    /// act on: failed, stopped, or stopping because shutdown was asked for.
    async fn settled_state(&self) {
        let requested = &self.inner.shutdown_requested;
        let _ = self
            .inner
            .supervisor
            .wait_for(|s| match s.state {
                SupervisorState::Failed(_) | SupervisorState::Stopped => true,
                SupervisorState::Stopping => requested.load(Ordering::SeqCst),
                SupervisorState::Starting | SupervisorState::Running => false,
            })
            .await;
    }

    /// A snapshot of the bridge. Never waits on an actor.
    pub fn status(&self) -> BridgeStatus {
        let supervisor = self.inner.supervisor.status();
        let state = match &supervisor.state {
            SupervisorState::Starting | SupervisorState::Running => BridgeState::Running,
            // Giving up (stopping children before `Failed`): not a shutdown.
            SupervisorState::Stopping if !self.shutdown_requested() => BridgeState::Running,
            SupervisorState::Failed(cause) => BridgeState::Failed(cause.to_string()),
            SupervisorState::Stopping | SupervisorState::Stopped => BridgeState::Stopped,
        };
        let worker = self
            .inner
            .worker
            .borrow()
            .as_ref()
            .map(|w| (w.worker_id().to_owned(), w.pid(), w.state()));
        let restarts = supervisor
            .child(&self.inner.worker_child)
            .map_or(0, |c| c.restarts);
        BridgeStatus {
            state,
            worker,
            restarts,
            health: self.inner.health.borrow().clone(),
        }
    }

    /// The current worker handle (it may be booting or dead).
    pub fn worker(&self) -> Option<WorkerHandle> {
        self.inner.worker.borrow().clone()
    }

    /// Worker events (spawned, ready, exited) from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<WorkerEvent> {
        self.inner.events.subscribe()
    }

    /// Supervisor events (child started, exited, restarting, failed) from now on.
    pub fn supervisor_events(&self) -> broadcast::Receiver<SupervisorEvent> {
        self.inner.supervisor.subscribe()
    }

    /// The supervisor, for status and events.
    pub fn supervisor(&self) -> &SupervisorHandle {
        &self.inner.supervisor
    }

    /// The tag every process of this tree carries.
    pub fn run_tag(&self) -> &RunTag {
        &self.inner.run_tag
    }

    /// The Python the workers run on.
    pub fn python(&self) -> &PythonEnv {
        &self.inner.python
    }

    /// Stops the tree in order (health monitor, then the worker with its
    /// escalating stop) and verifies no process of the tree is left, killing
    /// any straggler (G9). Returns how many stragglers there were.
    ///
    /// # Cancel safety
    /// The shutdown proceeds if the future is dropped; only the final
    /// verification is skipped.
    pub async fn shutdown(&self, timeout: Duration) -> usize {
        self.inner.shutdown_requested.store(true, Ordering::SeqCst);
        self.inner.supervisor.stop(timeout).await;
        kill_stragglers(&self.inner.run_tag)
    }
}

/// Aliases the error so `?` works from supervisor calls.
impl From<SupervisorError> for BridgeError {
    fn from(error: SupervisorError) -> Self {
        match error {
            SupervisorError::Failed(cause) => Self::Unavailable {
                cause: cause.to_string(),
            },
            SupervisorError::NotRunning => Self::ShuttingDown,
            other => Self::Start(other.to_string()),
        }
    }
}
