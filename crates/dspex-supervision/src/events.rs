//! What a supervisor reports: exit causes, the give-up cause, and the event
//! stream.
//!
//! # Semantics
//!
//! * Every [`SupervisorEvent::ChildStarted`] is followed by exactly one
//!   [`SupervisorEvent::ChildExited`] for the same cell: a child that crashes,
//!   panics or stops on its own reports its own cause; a child the supervisor
//!   stops reports [`ExitCause::Shutdown`], or [`ExitCause::Killed`] if it
//!   outlived its grace.
//! * A start attempt that fails emits [`SupervisorEvent::StartFailed`] (and no
//!   `ChildStarted`/`ChildExited`).
//! * A scheduled restart emits [`SupervisorEvent::ChildRestarting`] for each
//!   child of the restart set, with the backoff delay.
//! * Giving up emits [`SupervisorEvent::Failed`] exactly once, after the
//!   remaining children are down; [`SupervisorEvent::Stopped`] is the last
//!   event of a supervisor that stops (ordered shutdown or escalation).
//! * Events go through a `tokio::sync::broadcast` channel: a receiver that
//!   falls more than the channel capacity behind gets `Lagged`; the status
//!   snapshot ([`crate::SupervisorStatus`]) is always current.

use std::fmt;
use std::time::Duration;

use ractor::ActorCell;

use crate::spec::{ChildId, StartError};

/// How a child went down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitCause {
    /// Stopped without a reason, or with the reason `"normal"`.
    Normal,
    /// Stopped with the reason `"shutdown"` (what the supervisor itself sends).
    Shutdown,
    /// Stopped with any other reason (kept whole).
    Stopped(String),
    /// Killed (ractor's `Signal::Kill`): by the supervisor after the grace, or
    /// by someone else.
    Killed,
    /// Failed: a handler returned an error or panicked (text kept whole).
    Failed(String),
    /// The start factory failed (text kept whole).
    StartFailed(String),
    /// The child stopped so that its supervisor replaces it, by the decision
    /// of whoever owns it (a hung worker killed, a worker recycled): a stop
    /// whose reason starts with [`REPLACE_PREFIX`]. Permanent and transient
    /// children are started again at once, and the restart does **not**
    /// count against the intensity (it is not a crash).
    Replaced(String),
}

/// The stop reason prefix that asks for a replacement ([`ExitCause::Replaced`]).
pub const REPLACE_PREFIX: &str = "replace: ";

/// The stop reason of a child that wants to be replaced, not restarted
/// after a crash (see [`ExitCause::Replaced`]).
///
/// ```
/// use dspex_supervision::replace_reason;
/// assert_eq!(replace_reason("hung"), "replace: hung");
/// ```
pub fn replace_reason(why: &str) -> String {
    format!("{REPLACE_PREFIX}{why}")
}

impl ExitCause {
    /// Classify a ractor `ActorTerminated` exit reason.
    pub(crate) fn from_stop_reason(reason: Option<String>) -> Self {
        match reason.as_deref() {
            None | Some("normal") => Self::Normal,
            Some("shutdown") => Self::Shutdown,
            Some("killed") => Self::Killed,
            Some(text) if text.starts_with(REPLACE_PREFIX) => {
                Self::Replaced(text[REPLACE_PREFIX.len()..].to_owned())
            }
            Some(_) => Self::Stopped(reason.unwrap_or_default()),
        }
    }

    /// `true` unless the exit was `Normal`, `Shutdown` or `Replaced`.
    /// Abnormal exits restart [`crate::Restart::Transient`] children.
    pub fn is_abnormal(&self) -> bool {
        !matches!(self, Self::Normal | Self::Shutdown | Self::Replaced(_))
    }

    /// `true` for [`ExitCause::Replaced`].
    pub fn is_replacement(&self) -> bool {
        matches!(self, Self::Replaced(_))
    }
}

impl fmt::Display for ExitCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Normal => f.write_str("normal"),
            Self::Shutdown => f.write_str("shutdown"),
            Self::Stopped(reason) => write!(f, "stopped: {reason}"),
            Self::Killed => f.write_str("killed"),
            Self::Failed(text) => write!(f, "failed: {text}"),
            Self::StartFailed(text) => write!(f, "start failed: {text}"),
            Self::Replaced(why) => write!(f, "replaced: {why}"),
        }
    }
}

/// Why a supervisor gave up: the child whose failure exceeded the restart
/// intensity and that failure. Also the error a supervisor escalates with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailureCause {
    /// The child whose failure made the supervisor give up.
    pub child: ChildId,
    /// That child's last exit (its failure text, kept whole).
    pub exit: ExitCause,
    /// The intensity that was exceeded: restarts allowed…
    pub max_restarts: u32,
    /// …within this window.
    pub within: Duration,
}

impl fmt::Display for FailureCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "supervisor gave up: child `{}` exceeded {} restart(s) in {:?}; last exit: {}",
            self.child, self.max_restarts, self.within, self.exit
        )
    }
}

impl std::error::Error for FailureCause {}

/// One observable step of a supervisor. See the module docs for ordering.
#[derive(Clone, Debug)]
pub enum SupervisorEvent {
    /// A child was started (its start factory returned).
    ChildStarted {
        /// The child.
        id: ChildId,
        /// Its new actor.
        cell: ActorCell,
    },
    /// A started child went down.
    ChildExited {
        /// The child.
        id: ChildId,
        /// How it went down.
        cause: ExitCause,
    },
    /// A restart of this child is scheduled after `delay`.
    ChildRestarting {
        /// The child.
        id: ChildId,
        /// Which restart this will be for the child (1 for the first; 0 if
        /// the child has not been started yet, e.g. a one-for-all sibling
        /// still waiting for its first start).
        attempt: u32,
        /// Backoff before the start attempt.
        delay: Duration,
    },
    /// A start attempt failed; handled like a crash.
    StartFailed {
        /// The child.
        id: ChildId,
        /// The start factory's error.
        error: StartError,
    },
    /// The supervisor gave up (emitted once); no child is ever started again.
    Failed {
        /// Which child and which failure.
        cause: FailureCause,
    },
    /// The supervisor has stopped; its children are down.
    Stopped,
}
