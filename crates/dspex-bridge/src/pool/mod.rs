//! Pool mode: a supervised set of workers behind a checkout queue.
//!
//! ```text
//! PoolSupervisor (rest_for_one)
//! ├─ SessionJanitor    program definitions and sessions (SessionStore), TTL sweeps
//! ├─ Pool              checkout queue; supervises its workers (one_for_one, intensity, backoff)
//! │    └─ Worker 0..N  each owns one Python process
//! └─ HealthMonitor     pings the ready workers; kills one after N failures
//! ```
//!
//! The checkout contract is typed ([`CheckoutDecision`],
//! [`CheckinDecision`]); a [`Lease`] is a checked-out worker and its drop is
//! the check-in. Two deadlines apply: waiting for a worker
//! ([`PoolError::CheckoutTimeout`]) and the request itself
//! ([`WorkerError::RequestTimeout`]). Waiting is FIFO; with `max_queue`, a
//! caller over the bound is refused at once ([`PoolError::Overloaded`]).
//!
//! Races closed by construction:
//! - a worker handed to a caller that has just given up goes straight back
//!   (the hand-off fails and the pool takes the lease back);
//! - a caller dropped while queued leaves the queue (its guard tells the pool);
//! - a caller dropped while its request runs leaves the reply to be drained
//!   by request id; the worker serves nobody else until it is in;
//! - a caller that panics holding a worker gets the worker removed.
//!
//! Programs live in the [`SessionStore`]; a worker is sent a definition only
//! when it lacks that exact version. Sessions prefer the worker that served
//! them; a *stateful* session runs only there, and gets
//! [`PoolError::SessionLost`] once that worker is gone. The LM configuration
//! is pool state: each worker receives it before it first serves and again
//! (before its next request) after every change.

mod actor;
mod contract;
mod lease;
mod sessions;
mod status;
mod workers;

use std::ffi::OsString;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dspex_protocol::{Command, LmConfig, Map, ProgramDefinition, Value};
use dspex_supervision::{
    Backoff, ChildSpec, OnGiveUp, RestartIntensity, StartError, Strategy, Supervisor,
    SupervisorHandle, SupervisorOptions,
};
use ractor::{Actor, ActorRef};
use tokio::sync::{broadcast, oneshot, watch};

pub use actor::PoolMsg;
pub use contract::{CheckinDecision, CheckoutDecision, SkipReason};
pub use lease::Lease;
pub use sessions::{SessionStore, StoredProgram, program_hash};
pub use status::{PoolCounters, PoolEvent, PoolState, PoolStatus, SlotPhase, SlotStatus};

use crate::context::{TreeContext, TreeSpec, kill_stragglers};
use crate::health::{HealthConfig, HealthMonitor, HealthStatus};
use crate::process::{RunTag, SpawnStrategy};
use crate::worker::{CallOptions, WorkerConfig, WorkerHandle};
use crate::{EnvError, PythonConfig, PythonEnv, WorkerError};
use actor::{Inner, PoolActor, PoolArgs, SessionRequest, Waiter};
use sessions::{JanitorArgs, SessionJanitor};

/// Configuration of a pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Prefix of worker ids and the spawner thread's name.
    pub name: String,
    /// Where the Python comes from.
    pub python: PythonConfig,
    /// Each worker's timeouts and limits (`request_timeout` is the default
    /// request deadline).
    pub worker: WorkerConfig,
    /// Workers kept in service.
    pub size: usize,
    /// Extra workers started while callers wait and every worker is busy;
    /// stopped again once idle.
    pub max_overflow: usize,
    /// Start workers on demand instead of all at once at start.
    pub lazy: bool,
    /// Leases one worker serves at once (1: one request per worker at a
    /// time; more lets an LM-bound worker overlap requests).
    pub per_worker_concurrency: usize,
    /// How long a caller waits for a worker.
    pub checkout_timeout: Duration,
    /// Callers allowed to wait at once (`None`: unbounded).
    pub max_queue: Option<usize>,
    /// The workers' restart budget (default 3 in 5 s).
    pub intensity: RestartIntensity,
    /// Delay between restarts (default 100 ms ×2, capped at 5 s).
    pub backoff: Backoff,
    /// Health checks of ready workers.
    pub health: HealthConfig,
    /// How long an unused session is kept.
    pub session_ttl: Duration,
    /// Extra environment variables for workers.
    pub env: Vec<(OsString, OsString)>,
    /// Extra command-line arguments for workers.
    pub args: Vec<OsString>,
    /// Kill tagged workers of dead hosts at start.
    pub sweep_orphans: bool,
    /// How workers are created (default: a [`DirectSpawner`](crate::process::DirectSpawner) per pool).
    pub spawner: Option<Arc<dyn SpawnStrategy>>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            name: "pool".into(),
            python: PythonConfig::default(),
            worker: WorkerConfig::default(),
            size: 4,
            max_overflow: 0,
            lazy: false,
            per_worker_concurrency: 1,
            checkout_timeout: Duration::from_secs(5),
            max_queue: None,
            intensity: RestartIntensity::default(),
            backoff: Backoff::default(),
            health: HealthConfig::default(),
            session_ttl: Duration::from_secs(30 * 60),
            env: Vec::new(),
            args: Vec::new(),
            sweep_orphans: true,
            spawner: None,
        }
    }
}

/// Why a pool call produced no result.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The worker failed the call.
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// No worker became free within the checkout timeout; no worker was touched.
    #[error("no worker became free within {0:?}")]
    CheckoutTimeout(Duration),
    /// The wait queue is full.
    #[error("the pool is overloaded: {max_queue} callers are already waiting")]
    Overloaded {
        /// The queue bound.
        max_queue: usize,
    },
    /// The pool gave up restarting its workers.
    #[error("the pool is unavailable: {cause}")]
    Unavailable {
        /// The last failure.
        cause: String,
    },
    /// The stateful session's worker is gone, and its state with it.
    #[error("session {session_id} was lost with its worker; start a new session")]
    SessionLost {
        /// The session.
        session_id: String,
    },
    /// No such program in the pool's store.
    #[error("no program {program_id:?} in this pool")]
    ProgramNotFound {
        /// The program id asked for.
        program_id: String,
    },
    /// The pool is shutting down or has stopped.
    #[error("the pool is shutting down")]
    ShuttingDown,
    /// The Python environment could not be resolved.
    #[error(transparent)]
    Environment(Arc<EnvError>),
    /// The pool could not start.
    #[error("could not start the pool: {0}")]
    Start(String),
}

/// How to check a worker out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckoutOptions {
    /// Overrides the pool's checkout timeout.
    pub timeout: Option<Duration>,
    /// The session, for affinity.
    pub session: Option<Session>,
}

/// A session: affinity to one worker; a stateful session runs only there.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Session {
    /// The session id.
    pub id: String,
    /// Whether the session keeps state on its worker (then it never runs
    /// elsewhere, and fails with [`PoolError::SessionLost`] if that worker dies).
    pub stateful: bool,
}

impl Session {
    /// A session that prefers its worker but may move.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            stateful: false,
        }
    }

    /// A session pinned to its worker.
    pub fn stateful(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            stateful: true,
        }
    }
}

/// Per-request options of [`Pool::call`] and [`Pool::execute`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestOptions {
    /// The checkout options.
    pub checkout: CheckoutOptions,
    /// Overrides the request timeout.
    pub timeout: Option<Duration>,
    /// An LM for this request only (`execute` only).
    pub lm: Option<LmConfig>,
}

/// A running pool. Cheap to clone; every clone drives the same pool.
#[derive(Debug, Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

#[derive(Debug)]
struct PoolInner {
    actor: watch::Receiver<Option<ActorRef<PoolMsg>>>,
    status: watch::Receiver<PoolStatus>,
    health: watch::Receiver<HealthStatus>,
    events: broadcast::Sender<PoolEvent>,
    store: SessionStore,
    supervisor: SupervisorHandle,
    run_tag: RunTag,
    checkout_timeout: Duration,
    tickets: AtomicU64,
}

impl Pool {
    /// Resolves Python, then starts the pool. Returns at once; workers start
    /// concurrently and the pool serves as soon as the first is ready.
    ///
    /// # Cancel safety
    /// Not cancel safe once the tree has started: a dropped future leaves it
    /// running without a handle.
    ///
    /// # Errors
    /// [`PoolError::Environment`], [`PoolError::Start`].
    pub async fn start(config: PoolConfig) -> Result<Self, PoolError> {
        let python = PythonEnv::resolve_async(config.python.clone())
            .await
            .map_err(|e| PoolError::Environment(Arc::new(e)))?;
        Self::start_on(config, python).await
    }

    /// Starts the pool on an already resolved Python.
    ///
    /// # Cancel safety
    /// As [`Pool::start`].
    ///
    /// # Errors
    /// [`PoolError::Start`].
    pub async fn start_on(config: PoolConfig, python: PythonEnv) -> Result<Self, PoolError> {
        Self::start_linked(config, python, None).await
    }

    /// Starts the pool, its supervisor linked under `parent` if given.
    pub(crate) async fn start_linked(
        config: PoolConfig,
        python: PythonEnv,
        parent: Option<ractor::ActorCell>,
    ) -> Result<Self, PoolError> {
        let ctx = Arc::new(
            TreeContext::start(TreeSpec {
                name: &config.name,
                python,
                spawner: config.spawner.as_ref(),
                sweep_orphans: config.sweep_orphans,
                worker: config.worker,
                env: &config.env,
                args: &config.args,
                event_capacity: 4096,
            })
            .map_err(PoolError::Start)?,
        );
        let (actor_tx, actor) = watch::channel(None);
        let (status_tx, status) = watch::channel(PoolStatus::empty());
        let (health_tx, health) = watch::channel(HealthStatus::default());
        let (ready_tx, ready_workers) = watch::channel(Vec::<WorkerHandle>::new());
        let (events, _) = broadcast::channel(1024);
        let store = SessionStore::default();

        let janitor_args = {
            let store = store.clone();
            let pool = actor.clone();
            let ttl = config.session_ttl;
            move || JanitorArgs {
                store: store.clone(),
                ttl,
                pool: pool.clone(),
            }
        };
        let pool_args = {
            let config = config.clone();
            let ctx = Arc::clone(&ctx);
            let events = events.clone();
            move || PoolArgs {
                config: config.clone(),
                ctx: Arc::clone(&ctx),
                status: status_tx.clone(),
                events: events.clone(),
                ready_workers: ready_tx.clone(),
            }
        };
        let health_config = config.health;
        let supervisor = Supervisor::new(SupervisorOptions {
            strategy: Strategy::RestForOne,
            on_give_up: OnGiveUp::Remain,
            ..SupervisorOptions::default()
        })
        .child(ChildSpec::new("sessions", move |sup| {
            let args = janitor_args();
            async move {
                let (actor, _) = Actor::spawn_linked(None, SessionJanitor, args, sup)
                    .await
                    .map_err(StartError::from_error)?;
                Ok(actor.get_cell())
            }
        }))
        .child(
            ChildSpec::new("pool", move |sup| {
                let args = pool_args();
                let actor_tx = actor_tx.clone();
                async move {
                    let (actor, _) = Actor::spawn_linked(None, PoolActor, args, sup)
                        .await
                        .map_err(StartError::from_error)?;
                    actor_tx.send_replace(Some(actor.clone()));
                    Ok(actor.get_cell())
                }
            })
            .shutdown(Duration::from_secs(40)),
        )
        .child(HealthMonitor::child(
            ready_workers,
            health_config,
            health_tx,
        ));
        let supervisor = match parent {
            Some(parent) => supervisor.spawn_linked(parent).await,
            None => supervisor.spawn().await,
        }
        .map_err(|e| PoolError::Start(e.to_string()))?;

        Ok(Self {
            inner: Arc::new(PoolInner {
                actor,
                status,
                health,
                events,
                store,
                supervisor,
                run_tag: ctx.run_tag.clone(),
                checkout_timeout: config.checkout_timeout,
                tickets: AtomicU64::new(1),
            }),
        })
    }

    fn actor(&self) -> Result<ActorRef<PoolMsg>, PoolError> {
        self.inner
            .actor
            .borrow()
            .clone()
            .ok_or(PoolError::ShuttingDown)
    }

    /// Checks a worker out: waits (FIFO, up to the checkout timeout) for a
    /// free worker and returns a [`Lease`] on it.
    ///
    /// # Cancel safety
    /// Cancel safe. Dropping the future while queued removes the caller from
    /// the queue; if a worker was handed over at that very moment, it goes
    /// straight back to the pool.
    ///
    /// # Errors
    /// [`PoolError::CheckoutTimeout`], [`PoolError::Overloaded`],
    /// [`PoolError::Unavailable`], [`PoolError::SessionLost`],
    /// [`PoolError::ShuttingDown`].
    pub async fn checkout(&self, options: CheckoutOptions) -> Result<Lease, PoolError> {
        self.checkout_for(options, None).await
    }

    async fn checkout_for(
        &self,
        options: CheckoutOptions,
        program: Option<String>,
    ) -> Result<Lease, PoolError> {
        let timeout = options.timeout.unwrap_or(self.inner.checkout_timeout);
        if let PoolState::Failed(cause) = &self.inner.status.borrow().state {
            return Err(PoolError::Unavailable {
                cause: cause.clone(),
            });
        }
        if let Some(session) = &options.session {
            self.inner
                .store
                .touch_session(&session.id, session.stateful);
        }
        let actor = self.actor()?;
        let ticket = self.inner.tickets.fetch_add(1, Ordering::Relaxed);
        let (reply, lease) = oneshot::channel();
        let waiter = Waiter {
            ticket,
            session: options.session.map(|s| SessionRequest {
                id: s.id,
                stateful: s.stateful,
            }),
            program,
            reply,
        };
        actor
            .send_message(PoolMsg(Inner::Checkout(Box::new(waiter))))
            .map_err(|_| PoolError::ShuttingDown)?;
        let mut guard = LeaveQueueOnDrop {
            actor,
            ticket,
            armed: true,
        };
        let result = tokio::time::timeout(timeout, lease).await;
        guard.armed = result.is_err();
        match result {
            Ok(Ok(lease)) => lease,
            Ok(Err(_)) => Err(PoolError::ShuttingDown),
            Err(_) => Err(PoolError::CheckoutTimeout(timeout)),
        }
    }

    /// Checks a worker out, runs `f` with the lease, and checks it in.
    ///
    /// If `f` panics, the panic propagates to the caller and the worker is
    /// removed (killed and replaced): its state is not trusted.
    ///
    /// # Cancel safety
    /// As [`Lease::call`]: dropping the future mid-request drains the reply.
    ///
    /// # Errors
    /// The checkout's errors.
    pub async fn with_worker<T>(
        &self,
        options: CheckoutOptions,
        f: impl AsyncFnOnce(&mut Lease) -> T,
    ) -> Result<T, PoolError> {
        let mut lease = self.checkout(options).await?;
        Ok(f(&mut lease).await)
    }

    /// Runs one command on a worker.
    ///
    /// # Cancel safety
    /// Dropping the future while queued leaves the queue; while the request
    /// runs, its reply is drained by id and reaches nobody.
    ///
    /// # Errors
    /// The checkout's errors, or the worker's ([`PoolError::Worker`]).
    pub async fn call(
        &self,
        command: Command,
        options: RequestOptions,
    ) -> Result<Value, PoolError> {
        let mut attempt = 1;
        loop {
            let mut lease = self.checkout(options.checkout.clone()).await?;
            match lease.call(command.clone(), call_options(&options)).await {
                // It never reached that worker (gone a moment ago): it did
                // not run, so another worker may take it.
                Err(WorkerError::NotDelivered { .. }) if attempt < REDELIVERIES => attempt += 1,
                result => return Ok(result?),
            }
        }
    }

    /// Validates a program on a worker and stores it in the pool, so any
    /// worker can run it. A definition the worker rejects (a bad signature)
    /// is an error and changes nothing.
    ///
    /// # Cancel safety
    /// If dropped before the worker answered, nothing is stored.
    ///
    /// # Errors
    /// The checkout's errors, or the worker's (`SignatureError`, ...).
    pub async fn create_program(&self, definition: ProgramDefinition) -> Result<Value, PoolError> {
        let hash = program_hash(&definition);
        let mut lease = self
            .checkout_for(CheckoutOptions::default(), Some(hash))
            .await?;
        let reply = lease
            .call(
                Command::CreateProgram(definition.clone()),
                CallOptions::default(),
            )
            .await?;
        let stored = self.inner.store.put_program(definition);
        lease.mark_loaded(&stored.hash);
        Ok(reply)
    }

    /// Runs a stored program. The definition goes along only to a worker
    /// that lacks it.
    ///
    /// # Cancel safety
    /// As [`Pool::call`].
    ///
    /// # Errors
    /// [`PoolError::ProgramNotFound`] (nothing sent), the checkout's errors,
    /// or the worker's.
    pub async fn execute(
        &self,
        program_id: &str,
        inputs: Map<String, Value>,
        options: RequestOptions,
    ) -> Result<Value, PoolError> {
        let stored =
            self.inner
                .store
                .program(program_id)
                .ok_or_else(|| PoolError::ProgramNotFound {
                    program_id: program_id.to_owned(),
                })?;
        let mut attempt = 1;
        loop {
            let mut lease = self
                .checkout_for(options.checkout.clone(), Some(stored.hash.clone()))
                .await?;
            let call = call_options(&options);
            let lm = options.lm.clone();
            match lease
                .execute(&stored.definition, &stored.hash, inputs.clone(), lm, call)
                .await
            {
                Err(WorkerError::NotDelivered { .. }) if attempt < REDELIVERIES => attempt += 1,
                result => return Ok(result?),
            }
        }
    }

    /// Removes a program from the pool's store (workers forget it lazily).
    pub fn delete_program(&self, program_id: &str) -> bool {
        self.inner.store.delete_program(program_id)
    }

    /// The programs in the pool's store.
    pub fn programs(&self) -> &SessionStore {
        &self.inner.store
    }

    /// Sets the pool's LM. It is validated on one worker first: a bad
    /// configuration is an error and changes nothing. Then every worker gets
    /// it before its next request, and every new worker before it serves.
    ///
    /// # Cancel safety
    /// If dropped before validation finished, the pool's LM is unchanged.
    ///
    /// # Errors
    /// The checkout's errors, or the worker's rejection of the configuration.
    pub async fn configure_lm(&self, config: LmConfig) -> Result<u64, PoolError> {
        let mut lease = self.checkout(CheckoutOptions::default()).await?;
        lease
            .call(Command::ConfigureLm(config.clone()), CallOptions::default())
            .await?;
        let (reply, generation) = oneshot::channel();
        self.actor()?
            .send_message(PoolMsg(Inner::SetLm(Arc::new(config), reply)))
            .map_err(|_| PoolError::ShuttingDown)?;
        let generation = generation.await.map_err(|_| PoolError::ShuttingDown)?;
        lease.mark_lm(generation);
        Ok(generation)
    }

    /// Ends a session: its affinity is forgotten.
    pub fn end_session(&self, session_id: &str) {
        self.inner.store.end_session(session_id);
        if let Ok(actor) = self.actor() {
            let _ = actor.send_message(PoolMsg(Inner::ForgetSession(session_id.to_owned())));
        }
    }

    /// The latest status. Never waits on an actor.
    pub fn status(&self) -> PoolStatus {
        self.inner.status.borrow().clone()
    }

    /// A receiver of every status change.
    pub fn status_watch(&self) -> watch::Receiver<PoolStatus> {
        self.inner.status.clone()
    }

    /// The health monitor's view.
    pub fn health(&self) -> HealthStatus {
        self.inner.health.borrow().clone()
    }

    /// Pool events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<PoolEvent> {
        self.inner.events.subscribe()
    }

    /// The pool's supervisor (rest_for_one over store, pool, health monitor).
    pub fn supervisor(&self) -> &SupervisorHandle {
        &self.inner.supervisor
    }

    /// The tag every process of this pool carries.
    pub fn run_tag(&self) -> &RunTag {
        &self.inner.run_tag
    }

    /// Waits until the pool actor has handled every message sent to it
    /// before this call (check-ins of leases dropped earlier, for example), so
    /// that [`Pool::status`] reflects them.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn settled(&self) {
        let (done, settled) = oneshot::channel();
        if let Ok(actor) = self.actor()
            && actor.send_message(PoolMsg(Inner::Barrier(done))).is_ok()
        {
            let _ = settled.await;
        }
    }

    /// Test hook: holds the pool actor still until the returned sender is
    /// dropped or used (to let deadlines pass while it cannot answer).
    ///
    /// # Errors
    /// [`PoolError::ShuttingDown`].
    pub fn pause(&self) -> Result<oneshot::Sender<()>, PoolError> {
        let (resume, paused) = oneshot::channel();
        self.actor()?
            .send_message(PoolMsg(Inner::Pause(paused)))
            .map_err(|_| PoolError::ShuttingDown)?;
        Ok(resume)
    }

    /// Shuts the pool down gracefully: new callers are refused at once
    /// ([`PoolError::ShuttingDown`]); requests in flight get up to half of
    /// `timeout` to finish; then everything stops in order (health monitor,
    /// the pool with its workers' EOF → SIGTERM → SIGKILL, the store) and no
    /// process of the pool is left — stragglers are killed. Returns how many
    /// stragglers there were.
    ///
    /// # Cancel safety
    /// The shutdown proceeds if the future is dropped after the drain.
    pub async fn shutdown(&self, timeout: Duration) -> usize {
        if let Ok(actor) = self.actor() {
            let (done, closed) = oneshot::channel();
            if actor.send_message(PoolMsg(Inner::Close(done))).is_ok() {
                let _ = closed.await;
                let mut status = self.inner.status.clone();
                let drained = status.wait_for(|s| s.leases == 0);
                let _ = tokio::time::timeout(timeout / 2, drained).await;
            }
        }
        self.inner.supervisor.stop(timeout).await;
        kill_stragglers(&self.inner.run_tag)
    }
}

/// How many times a request that never reached a worker (its process had
/// just died) is offered to a worker.
const REDELIVERIES: u32 = 3;

fn call_options(options: &RequestOptions) -> CallOptions {
    CallOptions {
        session_id: options.checkout.session.as_ref().map(|s| s.id.clone()),
        timeout: options.timeout,
    }
}

/// Tells the pool a waiting caller has gone (timeout or dropped future).
struct LeaveQueueOnDrop {
    actor: ActorRef<PoolMsg>,
    ticket: u64,
    armed: bool,
}

impl Drop for LeaveQueueOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.actor.send_message(PoolMsg(Inner::Cancel(self.ticket)));
        }
    }
}
