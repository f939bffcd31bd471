//! [`Event`]: what a running DSPex instance reports as it happens.

use dspex_bridge::pool::PoolEvent;
use dspex_bridge::process::Exit;

/// Something that happened to the workers serving this instance.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A worker is ready and serves.
    WorkerReady {
        /// Its id.
        id: String,
        /// Its OS pid.
        pid: u32,
    },
    /// A worker's process exited (a replacement follows, within the budget).
    WorkerExited {
        /// Its id.
        id: String,
        /// Its OS pid.
        pid: u32,
        /// How.
        exit: Exit,
    },
    /// A worker was taken out of service.
    WorkerRemoved {
        /// Its id.
        id: String,
        /// Its OS pid.
        pid: u32,
        /// Why.
        reason: String,
    },
    /// A stateful session's worker is gone.
    SessionLost {
        /// The session.
        session_id: String,
    },
    /// A worker was recycled (a limit reached); its replacement serves.
    WorkerRecycled {
        /// Its id.
        id: String,
        /// Its OS pid.
        pid: u32,
        /// Which limit.
        reason: String,
    },
    /// The restart budget is exhausted; nothing serves any more (until a
    /// revive, if the policy is on).
    Failed {
        /// The last failure.
        cause: String,
    },
    /// A failed pool serves again (revive policy).
    Revived,
}

impl Event {
    pub(crate) fn from_pool(event: PoolEvent) -> Option<Self> {
        Some(match event {
            PoolEvent::WorkerReady { id, pid } => Self::WorkerReady { id, pid },
            PoolEvent::WorkerExited { id, pid, exit } => Self::WorkerExited { id, pid, exit },
            PoolEvent::WorkerRemoved { id, pid, reason } => Self::WorkerRemoved { id, pid, reason },
            PoolEvent::SessionLost { session_id } => Self::SessionLost { session_id },
            PoolEvent::PoolFailed { cause } => Self::Failed { cause },
            PoolEvent::WorkerRecycled { id, pid, reason } => {
                Self::WorkerRecycled { id, pid, reason }
            }
            PoolEvent::Revived => Self::Revived,
            _ => return None,
        })
    }
}
