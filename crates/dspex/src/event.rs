//! [`Event`]: what a running DSPex instance reports as it happens.

use dspex_bridge::pool::PoolEvent;
use dspex_bridge::process::Exit;
use dspex_bridge::worker::WorkerEvent;

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
    /// The restart budget is exhausted; nothing serves any more.
    Failed {
        /// The last failure.
        cause: String,
    },
}

impl Event {
    pub(crate) fn from_pool(event: PoolEvent) -> Option<Self> {
        Some(match event {
            PoolEvent::WorkerReady { id, pid } => Self::WorkerReady { id, pid },
            PoolEvent::WorkerExited { id, pid, exit } => Self::WorkerExited { id, pid, exit },
            PoolEvent::WorkerRemoved { id, pid, reason } => Self::WorkerRemoved { id, pid, reason },
            PoolEvent::SessionLost { session_id } => Self::SessionLost { session_id },
            PoolEvent::PoolFailed { cause } => Self::Failed { cause },
            _ => return None,
        })
    }

    pub(crate) fn from_worker(event: WorkerEvent) -> Option<Self> {
        Some(match event {
            WorkerEvent::Ready { worker_id, pid } => Self::WorkerReady { id: worker_id, pid },
            WorkerEvent::Exited {
                worker_id,
                pid,
                exit,
                requested: false,
            } => Self::WorkerExited {
                id: worker_id,
                pid,
                exit,
            },
            _ => return None,
        })
    }
}
