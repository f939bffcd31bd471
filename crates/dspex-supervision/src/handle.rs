//! The typed front door: [`Supervisor`] (a tree not yet started) and
//! [`SupervisorHandle`] (a running one).
//!
//! # Semantics
//!
//! * [`Supervisor::subscribe`] works before [`Supervisor::spawn`], so a
//!   subscriber sees every event from the first `ChildStarted` on.
//! * `spawn` returns once every child has had its first start attempt. If
//!   the supervisor gives up during that and its policy is
//!   [`crate::OnGiveUp::Escalate`], `spawn` returns [`SupervisorError::Failed`].
//! * Status and child look-ups read the published snapshot: they never wait
//!   on the supervisor and keep working after it has terminated.
//! * Dropping a handle does nothing to the supervisor; stop it explicitly
//!   ([`SupervisorHandle::stop`]) or through its parent.

use std::time::Duration;

use ractor::{Actor, ActorCell, ActorRef, SpawnErr, rpc::CallResult};
use tokio::sync::{broadcast, watch};

use crate::events::{FailureCause, SupervisorEvent};
use crate::options::SupervisorOptions;
use crate::spec::{ChildId, ChildSpec, StartError};
use crate::status::{ChildStatus, SupervisorState, SupervisorStatus};
use crate::supervisor::{SupervisorActor, SupervisorArgs, SupervisorMsg};

/// Errors of supervisor operations.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SupervisorError {
    /// Two children share an id.
    #[error("duplicate child id `{0}`")]
    DuplicateChild(ChildId),
    /// No child has this id.
    #[error("no child with id `{0}`")]
    UnknownChild(ChildId),
    /// A dynamically added child failed to start (it was not added).
    #[error("child `{id}` failed to start: {error}")]
    StartFailed {
        /// The child.
        id: ChildId,
        /// Its start error.
        error: StartError,
    },
    /// The supervisor has given up.
    #[error("{0}")]
    Failed(FailureCause),
    /// The supervisor is stopping or has terminated.
    #[error("supervisor is not running")]
    NotRunning,
    /// The supervisor actor could not be spawned (e.g. its name is taken).
    #[error("could not spawn the supervisor: {0}")]
    Spawn(String),
}

/// How [`SupervisorHandle::stop`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// Ordered shutdown completed within the timeout.
    Ordered,
    /// The timeout elapsed; the supervisor and its remaining children were killed.
    Killed,
}

/// A supervision tree that is described but not started yet.
///
/// ```
/// use dspex_supervision::{ChildSpec, Supervisor, SupervisorEvent, SupervisorOptions};
/// use ractor::{Actor, ActorProcessingErr, ActorRef};
///
/// struct Worker;
/// impl Actor for Worker {
///     type Msg = ();
///     type State = ();
///     type Arguments = ();
///     async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let supervisor = Supervisor::new(SupervisorOptions::default()).child(ChildSpec::new(
///     "worker",
///     |sup| async move { Ok(Actor::spawn_linked(None, Worker, (), sup).await?.0.get_cell()) },
/// ));
/// let mut events = supervisor.subscribe(); // before spawn: nothing is missed
/// let handle = supervisor.spawn().await?;
/// assert!(matches!(events.recv().await?, SupervisorEvent::ChildStarted { .. }));
///
/// // A crash is restarted after the backoff.
/// let first = handle.child("worker").expect("running");
/// first.kill();
/// let status = handle
///     .wait_for(|s| s.child("worker").and_then(|c| c.cell.as_ref())
///         .is_some_and(|c| c.get_id() != first.get_id()))
///     .await?;
/// assert_eq!(status.child("worker").map(|c| c.restarts), Some(1));
///
/// handle.stop(std::time::Duration::from_secs(5)).await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Supervisor {
    options: SupervisorOptions,
    children: Vec<ChildSpec>,
    events: broadcast::Sender<SupervisorEvent>,
    status_tx: watch::Sender<SupervisorStatus>,
    status_rx: watch::Receiver<SupervisorStatus>,
}

impl Supervisor {
    /// A supervisor with these options and no children yet.
    pub fn new(options: SupervisorOptions) -> Self {
        let (events, _) = broadcast::channel(options.event_capacity.max(1));
        let (status_tx, status_rx) = watch::channel(SupervisorStatus {
            state: SupervisorState::Starting,
            children: Vec::new(),
        });
        Self {
            options,
            children: Vec::new(),
            events,
            status_tx,
            status_rx,
        }
    }

    /// Add a child; children are started in the order they are added and
    /// stopped in reverse.
    #[must_use]
    pub fn child(mut self, spec: ChildSpec) -> Self {
        self.children.push(spec);
        self
    }

    /// Receive every event this supervisor will emit, from its first start on.
    pub fn subscribe(&self) -> broadcast::Receiver<SupervisorEvent> {
        self.events.subscribe()
    }

    /// Start the supervisor (unlinked) and its children.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropping the future while children are starting
    /// aborts the supervisor's start, and ractor kills the children already
    /// started (unordered).
    pub async fn spawn(self) -> Result<SupervisorHandle, SupervisorError> {
        self.spawn_inner(None).await
    }

    /// Start the supervisor linked to `parent` (e.g. a parent supervisor, which
    /// then sees this supervisor's escalation as a failed child).
    ///
    /// # Cancel safety
    ///
    /// As [`Supervisor::spawn`].
    pub async fn spawn_linked(
        self,
        parent: ActorCell,
    ) -> Result<SupervisorHandle, SupervisorError> {
        self.spawn_inner(Some(parent)).await
    }

    async fn spawn_inner(
        self,
        parent: Option<ActorCell>,
    ) -> Result<SupervisorHandle, SupervisorError> {
        for (i, spec) in self.children.iter().enumerate() {
            if self.children[..i].iter().any(|s| s.id == spec.id) {
                return Err(SupervisorError::DuplicateChild(spec.id.clone()));
            }
        }
        let name = self.options.name.clone();
        let args = SupervisorArgs {
            options: self.options,
            children: self.children,
            events: self.events.clone(),
            status: self.status_tx,
        };
        let spawned = match parent {
            Some(parent) => Actor::spawn_linked(name, SupervisorActor, args, parent).await,
            None => Actor::spawn(name, SupervisorActor, args).await,
        };
        match spawned {
            Ok((actor, _join)) => Ok(SupervisorHandle {
                cell: actor.get_cell(),
                actor,
                events: self.events,
                status: self.status_rx,
            }),
            Err(SpawnErr::StartupFailed(error)) => match error.downcast::<FailureCause>() {
                Ok(cause) => Err(SupervisorError::Failed(*cause)),
                Err(other) => Err(SupervisorError::Spawn(other.to_string())),
            },
            Err(other) => Err(SupervisorError::Spawn(other.to_string())),
        }
    }
}

/// A running supervisor. Cheap to clone; dropping it leaves the supervisor
/// running.
#[derive(Clone, Debug)]
pub struct SupervisorHandle {
    actor: ActorRef<SupervisorMsg>,
    cell: ActorCell,
    events: broadcast::Sender<SupervisorEvent>,
    status: watch::Receiver<SupervisorStatus>,
}

impl SupervisorHandle {
    /// The supervisor's actor (to link, monitor, or compare ids).
    pub fn cell(&self) -> &ActorCell {
        &self.cell
    }

    /// Receive the events emitted from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<SupervisorEvent> {
        self.events.subscribe()
    }

    /// The latest status snapshot. Never waits on the supervisor.
    pub fn status(&self) -> SupervisorStatus {
        self.status.borrow().clone()
    }

    /// Restarts of all children so far (what [`SupervisorHandle::status`]
    /// would sum), read without copying the status.
    pub fn restarts(&self) -> u32 {
        self.status
            .borrow()
            .children
            .iter()
            .map(|c| c.restarts)
            .sum()
    }

    /// The current actor of child `id`, or `None` if it is down or unknown.
    /// Never waits on the supervisor; the cell may die right after.
    pub fn child(&self, id: &str) -> Option<ActorCell> {
        self.status
            .borrow()
            .child(id)
            .and_then(|c: &ChildStatus| c.cell.clone())
    }

    /// Wait until the status satisfies `predicate` (checked on the current
    /// snapshot first, then on every change) and return that snapshot.
    /// Fails with [`SupervisorError::NotRunning`] if the supervisor terminates
    /// first. Wrap it in `tokio::time::timeout` for a deadline.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes.
    pub async fn wait_for(
        &self,
        mut predicate: impl FnMut(&SupervisorStatus) -> bool,
    ) -> Result<SupervisorStatus, SupervisorError> {
        let mut rx = self.status.clone();
        let found = rx.wait_for(|s| predicate(s)).await;
        match found {
            Ok(status) => Ok(status.clone()),
            Err(_) => Err(SupervisorError::NotRunning),
        }
    }

    /// Add a child at the end of the start order and start it. A start
    /// failure is returned (and the child not added); it does not count
    /// against the restart intensity. Refused once the supervisor has failed.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once sent, the request runs to completion; dropping the
    /// future loses the result, and the child, if started, stays supervised.
    pub async fn start_child(&self, spec: ChildSpec) -> Result<ActorCell, SupervisorError> {
        match self
            .actor
            .call(|reply| SupervisorMsg::StartChild { spec, reply }, None)
            .await
        {
            Ok(CallResult::Success(result)) => result,
            _ => Err(SupervisorError::NotRunning),
        }
    }

    /// Stop child `id` (its grace, then kill) and remove it from the tree.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: once sent, the child is stopped and removed even if
    /// the future is dropped.
    pub async fn terminate_child(&self, id: &str) -> Result<(), SupervisorError> {
        let id = ChildId::from(id);
        match self
            .actor
            .call(|reply| SupervisorMsg::TerminateChild { id, reply }, None)
            .await
        {
            Ok(CallResult::Success(result)) => result,
            _ => Err(SupervisorError::NotRunning),
        }
    }

    /// Ordered shutdown: the supervisor stops its children in reverse start
    /// order, each with its own grace, then stops itself. Returns when the
    /// supervisor is down. If that takes longer than `timeout`, the supervisor
    /// is killed — ractor then kills every remaining child at once — and this
    /// waits for those kills to take effect.
    ///
    /// Stopping a supervisor that has already terminated returns `Ordered`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe in the sense that the shutdown, once requested, proceeds
    /// without the future; dropping it only skips the kill fallback.
    pub async fn stop(&self, timeout: Duration) -> StopOutcome {
        self.cell.stop(Some("shutdown".to_owned()));
        if self.cell.wait(Some(timeout)).await.is_ok() {
            return StopOutcome::Ordered;
        }
        tracing::warn!(
            ?timeout,
            "supervisor shutdown exceeded its timeout; killing it"
        );
        let children = self.cell.get_children();
        self.cell.kill();
        let _ = self.cell.wait(None).await;
        for child in children {
            let _ = child.wait(None).await;
        }
        StopOutcome::Killed
    }

    /// Wait until the supervisor actor has terminated (stopped, or failed
    /// with [`crate::OnGiveUp::Escalate`]).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes.
    pub async fn wait_stopped(&self) {
        let _ = self.cell.wait(None).await;
    }
}
