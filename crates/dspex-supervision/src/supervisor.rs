//! The supervisor actor: the one place that starts, watches, restarts and stops
//! children.
//!
//! # Semantics
//!
//! * **Initial start** happens in the actor's `pre_start`, so
//!   [`crate::Supervisor::spawn`] returns once every child has had its first
//!   start attempt. A first start that fails is handled like any crash.
//! * **On child panic or failure** (ractor `ActorFailed`), or any other exit
//!   (`ActorTerminated`): the child is marked down and `ChildExited` is
//!   emitted. If its restart type wants a restart, the intensity is checked
//!   (give up if exhausted), the strategy's other affected children are
//!   stopped in reverse start order, and a `Restart` message is scheduled after
//!   the backoff delay. The handler never sleeps: while backing off the actor
//!   keeps handling messages and exit events.
//! * **On restart**, the restart set is started in start order. A start
//!   failure is handled like a crash of that child (which may re-schedule the
//!   rest of the set or give up).
//! * **On give-up**: pending restarts are cancelled, the remaining children are
//!   stopped in reverse start order (each with its grace: `stop("shutdown")`,
//!   then kill after the grace), the state becomes `Failed`, `Failed` is
//!   emitted once; then either the actor fails with the cause
//!   ([`OnGiveUp::Escalate`]) or stays up answering status
//!   ([`OnGiveUp::Remain`]). Nothing is ever started after that.
//! * **On stop** (ractor `stop`, e.g. [`crate::SupervisorHandle::stop`]): in
//!   `post_stop`, children are stopped in reverse start order, each with its
//!   grace, then `Stopped` is emitted. A *kill* of the supervisor skips
//!   `post_stop`: ractor kills the children at once, unordered.
//! * Exit events of actors the supervisor no longer tracks (a child it stopped
//!   itself, an earlier incarnation) are ignored: ractor actor ids are never
//!   reused.
//! * While a start factory or a child's grace is being awaited, the actor
//!   handles nothing else (as an OTP supervisor); the status snapshot stays
//!   readable because it is published, not queried.

use std::time::Duration;

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use crate::events::{ExitCause, FailureCause, SupervisorEvent};
use crate::handle::SupervisorError;
use crate::intensity::RestartWindow;
use crate::options::{OnGiveUp, Strategy, SupervisorOptions};
use crate::spec::{ChildId, ChildSpec, Restart, StartError};
use crate::status::{ChildStatus, SupervisorState, SupervisorStatus};

/// How long to wait for a kill to take effect before moving on (a child stuck
/// in blocking code cannot be killed by ractor; we log and continue).
const KILL_CONFIRM: Duration = Duration::from_secs(5);

/// The stop reason the supervisor sends its children.
const SHUTDOWN: &str = "shutdown";

/// The ractor actor behind a supervisor.
pub(crate) struct SupervisorActor;

/// Everything the actor needs, handed over by [`crate::Supervisor`].
pub(crate) struct SupervisorArgs {
    pub(crate) options: SupervisorOptions,
    pub(crate) children: Vec<ChildSpec>,
    pub(crate) events: broadcast::Sender<SupervisorEvent>,
    pub(crate) status: watch::Sender<SupervisorStatus>,
}

/// Messages the supervisor handles (exit events arrive on ractor's separate,
/// higher-priority supervision port).
pub(crate) enum SupervisorMsg {
    /// A backoff elapsed: start every child pending with this token.
    Restart { token: u64 },
    /// Add and start a child.
    StartChild {
        spec: ChildSpec,
        reply: RpcReplyPort<Result<ActorCell, SupervisorError>>,
    },
    /// Stop a child (with its grace) and forget it.
    TerminateChild {
        id: ChildId,
        reply: RpcReplyPort<Result<(), SupervisorError>>,
    },
}

struct Slot {
    spec: ChildSpec,
    cell: Option<ActorCell>,
    /// Token of the scheduled restart this child waits for.
    pending: Option<u64>,
    /// Start attempts so far (successful or not).
    starts: u32,
    /// Of those, restarts that replaced the child on its owner's decision.
    replacements: u32,
    last_cause: Option<ExitCause>,
    /// This child's recent restarts, for its backoff exponent.
    backoff: RestartWindow,
}

impl Slot {
    fn new(spec: ChildSpec) -> Self {
        Self {
            spec,
            cell: None,
            pending: None,
            starts: 0,
            replacements: 0,
            last_cause: None,
            backoff: RestartWindow::default(),
        }
    }

    fn status(&self) -> ChildStatus {
        ChildStatus {
            id: self.spec.id.clone(),
            restart: self.spec.restart,
            cell: self.cell.clone(),
            restart_pending: self.pending.is_some(),
            restarts: self.starts.saturating_sub(1 + self.replacements),
            replacements: self.replacements,
            last_cause: self.last_cause.clone(),
        }
    }
}

/// The supervisor's state. `Err(FailureCause)` from its operations means
/// "escalate now".
pub(crate) struct Tree {
    myself: ActorRef<SupervisorMsg>,
    options: SupervisorOptions,
    slots: Vec<Slot>,
    intensity: RestartWindow,
    state: SupervisorState,
    next_token: u64,
    events: broadcast::Sender<SupervisorEvent>,
    status: watch::Sender<SupervisorStatus>,
}

impl Tree {
    fn new(myself: ActorRef<SupervisorMsg>, args: SupervisorArgs) -> Self {
        Self {
            myself,
            options: args.options,
            slots: args.children.into_iter().map(Slot::new).collect(),
            intensity: RestartWindow::default(),
            state: SupervisorState::Starting,
            next_token: 0,
            events: args.events,
            status: args.status,
        }
    }

    fn publish(&self) {
        self.status.send_replace(SupervisorStatus {
            state: self.state.clone(),
            children: self.slots.iter().map(Slot::status).collect(),
        });
    }

    /// Publish the status, then the event (so the status is never behind).
    fn emit(&self, event: SupervisorEvent) {
        self.publish();
        // No receiver is fine: events are best-effort, status is the truth.
        let _ = self.events.send(event);
    }

    fn index_of(&self, id: &ChildId) -> Option<usize> {
        self.slots.iter().position(|s| &s.spec.id == id)
    }

    fn supervising(&self) -> bool {
        matches!(
            self.state,
            SupervisorState::Starting | SupervisorState::Running
        )
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// Start every child waiting for `token`, in start order, until none is
    /// left or the supervisor stops supervising.
    async fn run_starts(&mut self, token: u64) -> Result<(), FailureCause> {
        while self.supervising() {
            let Some(idx) = self.slots.iter().position(|s| s.pending == Some(token)) else {
                break;
            };
            self.slots[idx].pending = None;
            if let Err(error) = self.start_slot(idx).await {
                let id = self.slots[idx].spec.id.clone();
                let cause = ExitCause::StartFailed(error.message().to_owned());
                self.child_down(&id, cause).await?;
            }
        }
        Ok(())
    }

    /// One start attempt of the child at `idx`.
    async fn start_slot(&mut self, idx: usize) -> Result<ActorCell, StartError> {
        let slot = &mut self.slots[idx];
        slot.starts = slot.starts.saturating_add(1);
        let spec = slot.spec.clone();
        let me = self.myself.get_cell();
        let result = spec.start(me.clone()).await;
        let slot = &mut self.slots[idx];
        match result {
            Ok(cell) => {
                if let Some(other) = cell
                    .try_get_supervisor()
                    .filter(|s| s.get_id() != me.get_id())
                {
                    tracing::warn!(child = %spec.id, supervisor = ?other.get_id(),
                        "child is linked to another actor; its exits will not reach this supervisor");
                }
                tracing::debug!(child = %spec.id, actor = ?cell.get_id(), "child started");
                slot.cell = Some(cell.clone());
                self.emit(SupervisorEvent::ChildStarted {
                    id: spec.id,
                    cell: cell.clone(),
                });
                Ok(cell)
            }
            Err(error) => {
                tracing::warn!(child = %spec.id, %error, "child failed to start");
                slot.last_cause = Some(ExitCause::StartFailed(error.message().to_owned()));
                self.kill_orphans(&spec.id).await;
                self.emit(SupervisorEvent::StartFailed {
                    id: spec.id,
                    error: error.clone(),
                });
                Err(error)
            }
        }
    }

    /// A factory that failed after spawning a linked actor leaves it running
    /// but untracked; kill it so nothing outlives its start attempt.
    async fn kill_orphans(&self, id: &ChildId) {
        let orphans: Vec<ActorCell> = self
            .myself
            .get_children()
            .into_iter()
            .filter(|c| {
                !self
                    .slots
                    .iter()
                    .any(|s| s.cell.as_ref().is_some_and(|t| t.get_id() == c.get_id()))
            })
            .collect();
        for orphan in orphans {
            tracing::warn!(child = %id, actor = ?orphan.get_id(), "killing actor left by a failed start");
            shutdown_child(id, &orphan, Duration::ZERO).await;
        }
    }

    /// ractor reported that `actor` exited.
    async fn on_exit(&mut self, actor: ActorId, cause: ExitCause) -> Result<(), FailureCause> {
        let found = self
            .slots
            .iter()
            .position(|s| s.cell.as_ref().is_some_and(|c| c.get_id() == actor));
        let Some(idx) = found else {
            tracing::trace!(?actor, %cause, "exit of an actor no longer supervised; ignored");
            return Ok(());
        };
        let slot = &mut self.slots[idx];
        slot.cell = None;
        slot.last_cause = Some(cause.clone());
        let id = slot.spec.id.clone();
        if cause.is_abnormal() {
            tracing::warn!(child = %id, %cause, "child exited");
        } else {
            tracing::debug!(child = %id, %cause, "child exited");
        }
        self.emit(SupervisorEvent::ChildExited {
            id: id.clone(),
            cause: cause.clone(),
        });
        self.child_down(&id, cause).await
    }

    /// A child is down (exited or failed to start): apply its restart type,
    /// the intensity and the strategy.
    async fn child_down(&mut self, id: &ChildId, cause: ExitCause) -> Result<(), FailureCause> {
        if !self.supervising() {
            return Ok(());
        }
        let Some(idx) = self.index_of(id) else {
            return Ok(());
        };
        let restart = self.slots[idx].spec.restart;
        let wanted = match restart {
            Restart::Permanent => true,
            Restart::Transient => cause.is_abnormal() || cause.is_replacement(),
            Restart::Temporary => false,
        };
        if !wanted {
            if restart == Restart::Temporary {
                self.slots.remove(idx);
                self.publish();
            }
            return Ok(());
        }

        if cause.is_replacement() {
            // Not a crash: at once, outside the budget, and the child alone
            // (its siblings did not fail with it).
            self.slots[idx].replacements = self.slots[idx].replacements.saturating_add(1);
            return self.schedule(vec![id.clone()], Duration::ZERO);
        }
        let now = Instant::now();
        if !self.intensity.try_restart(now, self.options.intensity) {
            return self.give_up(id.clone(), cause).await;
        }

        let set: Vec<ChildId> = match self.options.strategy {
            Strategy::OneForOne => vec![id.clone()],
            Strategy::OneForAll => self.slots.iter().map(|s| s.spec.id.clone()).collect(),
            Strategy::RestForOne => self.slots[idx..]
                .iter()
                .map(|s| s.spec.id.clone())
                .collect(),
        };
        for other in set.iter().rev().filter(|other| *other != id) {
            if let Some(i) = self.index_of(other) {
                self.stop_slot(i).await;
            }
        }
        // Temporary members of the set are stopped and forgotten, never restarted.
        self.slots
            .retain(|s| !(s.spec.restart == Restart::Temporary && set.contains(&s.spec.id)));

        let within = self.options.intensity.within;
        let delay = match self.index_of(id) {
            Some(i) => {
                let window = &mut self.slots[i].backoff;
                let recent = u32::try_from(window.recent(now, within)).unwrap_or(u32::MAX);
                window.record(now);
                match (self.options.immediate_first_restart, recent.checked_sub(1)) {
                    (false, _) => self.options.backoff.delay(recent),
                    (true, None) => Duration::ZERO,
                    (true, Some(repeats)) => self.options.backoff.delay(repeats),
                }
            }
            None => self.options.backoff.initial,
        };

        self.schedule(set, delay)
    }

    /// Marks `set` pending and starts it after `delay`.
    fn schedule(&mut self, set: Vec<ChildId>, delay: Duration) -> Result<(), FailureCause> {
        let token = self.token();
        let mut announced = Vec::with_capacity(set.len());
        for slot in &mut self.slots {
            if set.contains(&slot.spec.id) {
                slot.pending = Some(token);
                announced.push((slot.spec.id.clone(), slot.starts));
            }
        }
        for (child, attempt) in announced {
            tracing::info!(%child, attempt, ?delay, "restart scheduled");
            self.emit(SupervisorEvent::ChildRestarting {
                id: child,
                attempt,
                delay,
            });
        }
        // The timer task only posts a message; a dead supervisor drops it.
        drop(
            self.myself
                .send_after(delay, move || SupervisorMsg::Restart { token }),
        );
        Ok(())
    }

    /// Stop the child at `idx` if it runs (grace, then kill) and report it.
    async fn stop_slot(&mut self, idx: usize) {
        let Some(cell) = self.slots[idx].cell.take() else {
            return;
        };
        let id = self.slots[idx].spec.id.clone();
        let cause = shutdown_child(&id, &cell, self.slots[idx].spec.shutdown).await;
        self.slots[idx].last_cause = Some(cause.clone());
        self.emit(SupervisorEvent::ChildExited { id, cause });
    }

    /// Stop every running child in reverse start order.
    async fn stop_all(&mut self) {
        for slot in &mut self.slots {
            slot.pending = None;
        }
        for idx in (0..self.slots.len()).rev() {
            self.stop_slot(idx).await;
        }
        self.slots.retain(|s| s.spec.restart != Restart::Temporary);
    }

    /// The restart budget is exhausted by `child`'s exit `exit`.
    async fn give_up(&mut self, child: ChildId, exit: ExitCause) -> Result<(), FailureCause> {
        let cause = FailureCause {
            child,
            exit,
            max_restarts: self.options.intensity.max_restarts,
            within: self.options.intensity.within,
        };
        tracing::error!(%cause, "giving up");
        self.state = SupervisorState::Stopping;
        self.publish();
        self.stop_all().await;
        self.state = SupervisorState::Failed(cause.clone());
        self.emit(SupervisorEvent::Failed {
            cause: cause.clone(),
        });
        match self.options.on_give_up {
            OnGiveUp::Remain => Ok(()),
            OnGiveUp::Escalate => Err(cause),
        }
    }

    /// Ordered shutdown (from `post_stop`).
    async fn shutdown(&mut self) {
        let failed = self.state.is_failed();
        if !failed {
            self.state = SupervisorState::Stopping;
            self.publish();
        }
        self.stop_all().await;
        if !failed {
            self.state = SupervisorState::Stopped;
        }
        self.emit(SupervisorEvent::Stopped);
    }

    async fn start_child(&mut self, spec: ChildSpec) -> Result<ActorCell, SupervisorError> {
        match &self.state {
            SupervisorState::Running => {}
            SupervisorState::Failed(cause) => return Err(SupervisorError::Failed(cause.clone())),
            _ => return Err(SupervisorError::NotRunning),
        }
        if self.index_of(&spec.id).is_some() {
            return Err(SupervisorError::DuplicateChild(spec.id));
        }
        let id = spec.id.clone();
        self.slots.push(Slot::new(spec));
        let idx = self.slots.len() - 1;
        match self.start_slot(idx).await {
            Ok(cell) => Ok(cell),
            Err(error) => {
                self.slots.remove(idx);
                self.publish();
                Err(SupervisorError::StartFailed { id, error })
            }
        }
    }

    async fn terminate_child(&mut self, id: ChildId) -> Result<(), SupervisorError> {
        let Some(idx) = self.index_of(&id) else {
            return Err(SupervisorError::UnknownChild(id));
        };
        self.stop_slot(idx).await;
        self.slots.remove(idx);
        self.publish();
        Ok(())
    }

    /// Turn an escalation into the actor's failure.
    fn escalate(&self, outcome: Result<(), FailureCause>) -> Result<(), ActorProcessingErr> {
        outcome.map_err(|cause| {
            self.emit(SupervisorEvent::Stopped);
            Box::new(cause) as ActorProcessingErr
        })
    }
}

/// Stop one child: `stop("shutdown")`, wait `grace`, then kill.
async fn shutdown_child(id: &ChildId, cell: &ActorCell, grace: Duration) -> ExitCause {
    if !grace.is_zero() {
        cell.stop(Some(SHUTDOWN.to_owned()));
        if cell.wait(Some(grace)).await.is_ok() {
            return ExitCause::Shutdown;
        }
        tracing::warn!(child = %id, ?grace, "child did not stop within its grace; killing it");
    }
    cell.kill();
    if cell.wait(Some(KILL_CONFIRM)).await.is_err() {
        tracing::error!(child = %id, "killed child still not down after {KILL_CONFIRM:?}");
    }
    ExitCause::Killed
}

impl Actor for SupervisorActor {
    type Msg = SupervisorMsg;
    type State = Tree;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<Tree, ActorProcessingErr> {
        let mut tree = Tree::new(myself, args);
        tree.publish();
        let token = tree.token();
        for slot in &mut tree.slots {
            slot.pending = Some(token);
        }
        let outcome = tree.run_starts(token).await;
        tree.escalate(outcome)?;
        if tree.state == SupervisorState::Starting {
            tree.state = SupervisorState::Running;
            tree.publish();
        }
        Ok(tree)
    }

    async fn handle(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        message: SupervisorMsg,
        tree: &mut Tree,
    ) -> Result<(), ActorProcessingErr> {
        let outcome = match message {
            SupervisorMsg::Restart { token } => tree.run_starts(token).await,
            SupervisorMsg::StartChild { spec, reply } => {
                let result = tree.start_child(spec).await;
                // The caller may have given up waiting; the child stays either way.
                let _ = reply.send(result);
                Ok(())
            }
            SupervisorMsg::TerminateChild { id, reply } => {
                let result = tree.terminate_child(id).await;
                let _ = reply.send(result);
                Ok(())
            }
        };
        tree.escalate(outcome)
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        tree: &mut Tree,
    ) -> Result<(), ActorProcessingErr> {
        let (actor, cause) = match event {
            SupervisionEvent::ActorFailed(cell, error) => {
                (cell.get_id(), ExitCause::Failed(error.to_string()))
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell.get_id(), ExitCause::from_stop_reason(reason))
            }
            _ => return Ok(()),
        };
        let outcome = tree.on_exit(actor, cause).await;
        tree.escalate(outcome)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        tree: &mut Tree,
    ) -> Result<(), ActorProcessingErr> {
        tree.shutdown().await;
        Ok(())
    }
}
