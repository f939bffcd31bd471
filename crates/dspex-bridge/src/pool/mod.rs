//! Pool mode — and single mode, which is this pool with one worker.
//!
//! ```text
//! PoolSupervisor (rest_for_one)
//! ├─ SessionJanitor    sessions (SessionStore), TTL sweeps
//! ├─ Pool              checkout queue; supervises its workers (one_for_one, intensity, backoff)
//! │    └─ Worker 0..N  each owns one Python process
//! └─ HealthMonitor     pings the ready workers; replaces one after N failures
//! ```
//!
//! The checkout contract is typed ([`CheckoutDecision`],
//! [`CheckinDecision`]); a [`Lease`] is a checked-out worker and its drop is
//! the check-in. Two deadlines apply: waiting for a worker
//! ([`PoolError::CheckoutTimeout`]) and the request itself
//! ([`WorkerError::RequestTimeout`]); a request's timeout covers both, so
//! the worker gets what is left of it. Waiting is FIFO; with `max_queue`, a
//! caller over the bound is refused at once ([`PoolError::Overloaded`]).
//!
//! Races closed by construction:
//! - a worker handed to a caller that has just given up goes straight back
//!   (the hand-off fails and the pool takes the lease back);
//! - a caller dropped while queued leaves the queue (its guard tells the pool);
//! - a caller dropped while its request runs, or whose request passed its
//!   deadline, leaves the worker out of service until the worker has
//!   answered (or died): its late reply reaches nobody;
//! - a caller that panics holding a worker gets the worker replaced.
//!
//! Programs are given with each call as a [`ProgramVersion`] (the store is
//! the caller's); a worker is sent a definition only when it lacks that
//! exact version, and an LM override only when it has not registered it.
//! Sessions prefer the worker that served them; a *stateful* session runs
//! only there, and gets [`PoolError::SessionLost`] once that worker is gone.
//! The LM configuration is pool state: each worker receives it before it
//! first serves and again (before its next request) after every change.
//!
//! Lifecycle policies: workers are *recycled* (a replacement started first,
//! the old one retired once idle, so capacity never drops) after
//! [`RecyclePolicy`] limits; a pool whose restart budget is exhausted is
//! `Failed`, and with a [`RevivePolicy`] tries again after a cool-down.

mod actor;
mod config;
mod contract;
mod lease;
mod lifecycle;
mod request;
mod sessions;
mod status;
mod workers;

use std::ffi::OsString;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dspex_protocol::{Command, LmConfig, ProgramDefinition, Value};
use dspex_supervision::{
    ChildSpec, OnGiveUp, StartError, Strategy, Supervisor, SupervisorHandle, SupervisorOptions,
};
use ractor::{Actor, ActorRef};
use tokio::sync::{broadcast, oneshot, watch};
use tokio::time::Instant;

pub use actor::PoolMsg;
pub use config::{
    DEFAULT_PER_WORKER_CONCURRENCY, PoolConfig, RecyclePolicy, RevivePolicy, SpawnMode,
};
pub use contract::{CheckinDecision, CheckoutDecision, SkipReason};
pub use lease::Lease;
pub use request::{CheckoutOptions, ProgramVersion, RequestOptions, Run, Session};
pub use sessions::SessionStore;
pub use status::{PoolCounters, PoolEvent, PoolState, PoolStatus, SlotPhase, SlotStatus};

use crate::context::{TreeContext, TreeSpec, kill_stragglers};
use crate::health::{HealthMonitor, HealthStatus};
use crate::process::{FdLedger, RunTag, SpawnStrategy, StopGrace};
use crate::worker::{CallOptions, WorkerEvent, WorkerHandle};
use crate::{EnvError, PythonEnv, WorkerError};
use actor::{Inner, PoolActor, PoolArgs, SessionRequest, Waiter};
use sessions::{JanitorArgs, SessionJanitor};

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
        /// When the pool tries again (with a revive policy).
        retry_in: Option<Duration>,
    },
    /// The stateful session's worker is gone, and its state with it.
    #[error("session {session_id} was lost with its worker; start a new session")]
    SessionLost {
        /// The session.
        session_id: String,
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
    ready_workers: watch::Receiver<Vec<WorkerHandle>>,
    workers: watch::Receiver<Option<SupervisorHandle>>,
    events: broadcast::Sender<PoolEvent>,
    worker_events: broadcast::Sender<WorkerEvent>,
    store: SessionStore,
    supervisor: SupervisorHandle,
    run_tag: RunTag,
    fds: FdLedger,
    spawner: Arc<dyn SpawnStrategy>,
    stop_grace: StopGrace,
    checkout_timeout: Duration,
    request_timeout: Duration,
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
        if config.size == 0 {
            return Err(PoolError::Start("a pool needs at least one worker".into()));
        }
        // The worker's thread pool serves exactly the leases it is given.
        let args: Vec<OsString> = [
            OsString::from("--max-concurrency"),
            config.per_worker_concurrency.max(1).to_string().into(),
        ]
        .into_iter()
        .chain(config.args.iter().cloned())
        .collect();
        let ctx = Arc::new(
            TreeContext::start(TreeSpec {
                name: &config.name,
                python,
                spawner: config.spawner.as_ref(),
                spawn: &config.spawn,
                sweep_orphans: config.sweep_orphans,
                worker: config.worker,
                env: &config.env,
                args: &args,
                event_capacity: 4096,
            })
            .map_err(PoolError::Start)?,
        );
        let (actor_tx, actor) = watch::channel(None);
        let (status_tx, status) = watch::channel(PoolStatus::empty());
        let (health_tx, health) = watch::channel(HealthStatus::default());
        let (ready_tx, ready_workers) = watch::channel(Vec::<WorkerHandle>::new());
        let (workers_tx, workers) = watch::channel(None);
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
                workers: workers_tx.clone(),
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
            ready_workers.clone(),
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
                ready_workers,
                workers,
                events,
                worker_events: ctx.events.clone(),
                store,
                supervisor,
                run_tag: ctx.run_tag.clone(),
                fds: ctx.fds.clone(),
                spawner: Arc::clone(&ctx.spawner),
                stop_grace: ctx.worker.stop_grace,
                checkout_timeout: config.checkout_timeout,
                request_timeout: config.worker.request_timeout,
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

    /// Whether a caller would be admitted now: `Err` at once while the pool
    /// is `Failed` (with when it tries again) or shutting down. A full queue
    /// is not an error here; [`Pool::has_room`] tells.
    ///
    /// # Errors
    /// [`PoolError::Unavailable`], [`PoolError::ShuttingDown`].
    pub fn admission(&self) -> Result<(), PoolError> {
        let status = self.inner.status.borrow();
        match &status.state {
            PoolState::Running => Ok(()),
            PoolState::Failed(cause) => Err(PoolError::Unavailable {
                cause: cause.clone(),
                retry_in: status
                    .revive_at
                    .map(|at| at.saturating_duration_since(std::time::Instant::now())),
            }),
            PoolState::Draining | PoolState::Stopped => Err(PoolError::ShuttingDown),
        }
    }

    /// Whether a new caller would be served or queued rather than refused
    /// as overloaded (the queue has room, or a worker is free), as of the
    /// latest status.
    pub fn has_room(&self) -> bool {
        let status = self.inner.status.borrow();
        match status.max_queue {
            None => true,
            Some(max) => status.queued < max || status.idle > 0,
        }
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
        self.checkout_for(options, Wants::default()).await
    }

    async fn checkout_for(
        &self,
        options: CheckoutOptions,
        wants: Wants,
    ) -> Result<Lease, PoolError> {
        let timeout = options.timeout.unwrap_or(self.inner.checkout_timeout);
        self.admission()?;
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
            program: wants.program,
            lm: wants.lm,
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
    /// replaced: its state is not trusted.
    ///
    /// # Cancel safety
    /// As [`Lease::call`]: dropping the future mid-request keeps the worker
    /// out of service until its reply is in.
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

    /// Runs one command on a worker, within the request's time budget.
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
        let budget = Budget::new(&options, self.inner.request_timeout);
        let mut redelivery = Redelivery::default();
        loop {
            let mut lease = self
                .checkout_for(budget.checkout(&options.checkout)?, Wants::default())
                .await?;
            let result = lease
                .call(command.clone(), budget.call_options(&options)?)
                .await;
            if let Some(outcome) = redelivery.settle(result) {
                return outcome;
            }
        }
    }

    /// Validates a program on a worker (which keeps it loaded) and returns
    /// its version, which any worker can then run. A definition the worker
    /// rejects (a bad signature) is an error.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping it only loses the answer.
    ///
    /// # Errors
    /// The checkout's errors, or the worker's (`SignatureError`, ...).
    pub async fn create_program(
        &self,
        definition: ProgramDefinition,
    ) -> Result<ProgramVersion, PoolError> {
        let program = ProgramVersion::new(definition);
        let wants = Wants {
            program: Some(program.hash.clone()),
            lm: None,
        };
        let mut lease = self.checkout_for(CheckoutOptions::default(), wants).await?;
        lease
            .call(
                Command::CreateProgram((*program.definition).clone()),
                CallOptions::default(),
            )
            .await?;
        lease.mark_loaded(&program.hash);
        Ok(program)
    }

    /// Runs a program version: once, or on a batch ([`Run`]). The
    /// definition goes along only to a worker that lacks it, an LM override
    /// only to one that has not registered it. The request's callbacks run
    /// and its events go where `options.hooks` says.
    ///
    /// # Cancel safety
    /// As [`Pool::call`]; besides, a request dropped while the worker runs
    /// it is cancelled on the worker (Protocol 2 `cancel`) and its
    /// callbacks are ended.
    ///
    /// # Errors
    /// The checkout's errors, or the worker's.
    pub async fn execute(
        &self,
        program: &ProgramVersion,
        run: Run,
        options: RequestOptions,
    ) -> Result<Value, PoolError> {
        let budget = Budget::new(&options, self.inner.request_timeout);
        let lm = options.lm.as_ref().map(|config| (config.id(), config));
        let mut redelivery = Redelivery::default();
        loop {
            let wants = Wants {
                program: Some(program.hash.clone()),
                lm: lm.as_ref().map(|(id, _)| id.clone()),
            };
            let mut lease = self
                .checkout_for(budget.checkout(&options.checkout)?, wants)
                .await?;
            // The caller's span (`dspex.call`, when it has the fields) says
            // which worker served.
            tracing::Span::current()
                .record("worker", lease.worker_id())
                .record("pid", lease.pid());
            let call = budget.call_options(&options)?;
            let lm = lm.as_ref().map(|(id, config)| (id.as_str(), *config));
            let result = lease.execute(program, &run, lm, call).await;
            if let Some(outcome) = redelivery.settle(result) {
                return outcome;
            }
        }
    }

    /// Sets the pool's LM. It is validated on one worker first: a bad
    /// configuration is an error and changes nothing. Then every worker gets
    /// it before its next request, and every new worker before it serves:
    /// the configuration (and its key) crosses each pipe once per change.
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

    /// The sessions of this pool.
    pub fn sessions(&self) -> &SessionStore {
        &self.inner.store
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

    /// Worker events (spawned, ready, exited) from now on.
    pub fn worker_events(&self) -> broadcast::Receiver<WorkerEvent> {
        self.inner.worker_events.subscribe()
    }

    /// The workers that are ready and serving, as last published.
    pub fn ready_workers(&self) -> Vec<WorkerHandle> {
        self.inner.ready_workers.borrow().clone()
    }

    /// Waits until a worker is ready and returns it (the first one, in slot
    /// order).
    ///
    /// # Cancel safety
    /// Cancel safe: it only observes.
    ///
    /// # Errors
    /// [`PoolError::CheckoutTimeout`] after `timeout`; the admission errors
    /// ([`Pool::admission`]) as soon as they apply.
    pub async fn ready_worker(&self, timeout: Duration) -> Result<WorkerHandle, PoolError> {
        let wait = async {
            let mut ready = self.inner.ready_workers.clone();
            let mut status = self.inner.status.clone();
            loop {
                self.admission()?;
                if let Some(worker) = ready.borrow_and_update().first().cloned() {
                    return Ok(worker);
                }
                tokio::select! {
                    changed = ready.changed() => changed.map_err(|_| PoolError::ShuttingDown)?,
                    changed = status.changed() => changed.map_err(|_| PoolError::ShuttingDown)?,
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or(Err(PoolError::CheckoutTimeout(timeout)))
    }

    /// The pool's supervisor (rest_for_one over sessions, pool, health monitor).
    pub fn supervisor(&self) -> &SupervisorHandle {
        &self.inner.supervisor
    }

    /// The supervisor of the workers themselves (one_for_one, the restart
    /// budget), for its status and events. A revive starts a new one.
    pub fn workers_supervisor(&self) -> Option<SupervisorHandle> {
        self.inner.workers.borrow().clone()
    }

    /// The tag every process of this pool carries.
    pub fn run_tag(&self) -> &RunTag {
        &self.inner.run_tag
    }

    /// The pipes this pool opened to its processes (for leak checks: none
    /// may stay open once the pool has stopped).
    pub fn fds(&self) -> &FdLedger {
        &self.inner.fds
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

    /// Stops admitting callers: new ones are refused at once
    /// ([`PoolError::ShuttingDown`]), those waiting for a worker are told so,
    /// and leases already out finish. Then waits up to `grace` for them to
    /// come back. Returns whether they all did.
    ///
    /// # Cancel safety
    /// The pool stays closed if the future is dropped; only the wait is cut.
    pub async fn drain(&self, grace: Duration) -> bool {
        let Ok(actor) = self.actor() else {
            return true;
        };
        let (done, closed) = oneshot::channel();
        if actor.send_message(PoolMsg(Inner::Close(done))).is_err() || closed.await.is_err() {
            return true;
        }
        let mut status = self.inner.status.clone();
        let drained = status.wait_for(|s| s.leases == 0);
        matches!(tokio::time::timeout(grace, drained).await, Ok(Ok(_)))
    }

    /// Shuts the pool down gracefully: [`Pool::drain`] with `grace` (in-flight
    /// requests finish), then everything stops in order (health monitor, the
    /// pool with its workers' EOF → SIGTERM → SIGKILL, the sessions) within
    /// `stop_timeout`, and no process of the pool is left — stragglers are
    /// killed. Returns how many stragglers there were.
    ///
    /// # Cancel safety
    /// The shutdown proceeds if the future is dropped after the drain.
    pub async fn shutdown(&self, grace: Duration, stop_timeout: Duration) -> usize {
        if !self.drain(grace).await {
            tracing::warn!(
                ?grace,
                "shutdown: requests still in flight after the grace; stopping anyway"
            );
        }
        self.inner.supervisor.stop(stop_timeout).await;
        self.stop_spawner().await;
        kill_stragglers(&self.inner.run_tag)
    }

    /// Stops what the spawn strategy runs besides the workers (the zygote),
    /// once the workers have stopped.
    ///
    /// # Cancel safety
    /// A dropped stop leaves the rest to the strategy's drop.
    pub(crate) async fn stop_spawner(&self) {
        self.inner.spawner.shutdown(self.inner.stop_grace).await;
    }
}

/// What a checkout's call will need from its worker (a program version, a
/// registered LM): the lease learns whether that worker has them, so it
/// sends only what is missing.
#[derive(Debug, Default)]
struct Wants {
    program: Option<String>,
    lm: Option<String>,
}

/// A request's time budget, fixed when it arrives: waiting for a worker
/// and the request itself share it.
struct Budget {
    deadline: Instant,
    total: Duration,
}

impl Budget {
    fn new(options: &RequestOptions, default: Duration) -> Self {
        let total = options.timeout.unwrap_or(default);
        Self {
            deadline: Instant::now() + total,
            total,
        }
    }

    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Checkout options that wait no longer than what is left.
    fn checkout(&self, options: &CheckoutOptions) -> Result<CheckoutOptions, PoolError> {
        let remaining = self.remaining();
        if remaining.is_zero() {
            return Err(PoolError::CheckoutTimeout(self.total));
        }
        let mut options = options.clone();
        options.timeout = Some(options.timeout.map_or(remaining, |t| t.min(remaining)));
        Ok(options)
    }

    /// The call's options with what is left of the budget as its timeout.
    fn call_options(&self, options: &RequestOptions) -> Result<CallOptions, PoolError> {
        let remaining = self.remaining();
        if remaining.is_zero() {
            return Err(PoolError::CheckoutTimeout(self.total));
        }
        Ok(CallOptions {
            session_id: options.checkout.session.as_ref().map(|s| s.id.clone()),
            timeout: Some(remaining),
            hooks: options.hooks.clone(),
            ..CallOptions::default()
        })
    }
}

/// How many times a request that never reached a worker (its process had
/// just died) is offered to a worker.
const REDELIVERIES: u32 = 3;

/// The one rule of redelivery: a [`WorkerError::NotDelivered`] means the
/// request did not run, so another worker (or the replacement) may take
/// it, up to [`REDELIVERIES`] times in all.
#[derive(Debug, Default)]
struct Redelivery {
    tries: u32,
}

impl Redelivery {
    /// The outcome of an attempt, or `None` to offer the request again.
    fn settle(&mut self, result: Result<Value, WorkerError>) -> Option<Result<Value, PoolError>> {
        self.tries += 1;
        match result {
            Err(WorkerError::NotDelivered { .. }) if self.tries < REDELIVERIES => None,
            result => Some(result.map_err(PoolError::from)),
        }
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
