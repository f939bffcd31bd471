//! The status snapshot a supervisor publishes after every change.
//!
//! # Semantics
//!
//! The supervisor replaces its snapshot (a `tokio::sync::watch` value) before
//! it emits the event describing the same change, so a subscriber that has
//! seen an event and then reads the status sees that change or a later one.
//! Reading the snapshot never messages the supervisor: it is answered even
//! while the supervisor is busy starting or stopping a child, backing off, or
//! after it has terminated (the last snapshot stays readable).

use ractor::ActorCell;

use crate::events::{ExitCause, FailureCause};
use crate::spec::{ChildId, Restart};

/// Lifecycle of a supervisor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SupervisorState {
    /// Starting its initial children (inside `spawn`).
    Starting,
    /// Supervising (possibly with restarts pending).
    Running,
    /// Gave up; children are down and nothing is ever restarted. Final.
    Failed(FailureCause),
    /// Ordered shutdown in progress.
    Stopping,
    /// Shut down; children are down. Final.
    Stopped,
}

impl SupervisorState {
    /// `true` for `Failed`.
    pub fn is_failed(&self) -> bool {
        matches!(self, Self::Failed(_))
    }
}

/// One child, as the supervisor sees it.
#[derive(Clone, Debug)]
pub struct ChildStatus {
    /// The child's id.
    pub id: ChildId,
    /// Its restart type.
    pub restart: Restart,
    /// Its current actor, or `None` while it is down.
    pub cell: Option<ActorCell>,
    /// `true` while a restart is scheduled (backing off).
    pub restart_pending: bool,
    /// Start attempts after the first (successful or not), replacements
    /// excluded.
    pub restarts: u32,
    /// Restarts that replaced the child on its owner's decision
    /// ([`crate::ExitCause::Replaced`]); they do not count against the
    /// intensity.
    pub replacements: u32,
    /// How it last went down, if it ever did.
    pub last_cause: Option<ExitCause>,
}

/// A snapshot of a supervisor and its children, in start order.
#[derive(Clone, Debug)]
pub struct SupervisorStatus {
    /// Lifecycle state.
    pub state: SupervisorState,
    /// Children in start order.
    pub children: Vec<ChildStatus>,
}

impl SupervisorStatus {
    /// The child with this id.
    pub fn child(&self, id: &str) -> Option<&ChildStatus> {
        self.children.iter().find(|c| c.id == id)
    }

    /// Number of children that currently have a live actor.
    pub fn running(&self) -> usize {
        self.children.iter().filter(|c| c.cell.is_some()).count()
    }
}
