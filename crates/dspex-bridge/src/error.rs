//! [`WorkerError`]: what a call to a worker can end in, besides a result.

use std::sync::Arc;
use std::time::Duration;

use dspex_protocol::{ProtocolError, RemoteError};

use crate::process::{Exit, SpawnError};

/// Why a call to a worker produced no result.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The worker answered with a structured error and stays in service.
    #[error("the worker answered with an error: {0}")]
    Remote(#[from] RemoteError),
    /// No reply by the request's deadline. The worker was told the deadline
    /// and stays in service; it is killed only if it then stays silent for
    /// its hang grace.
    #[error("worker {worker_id} did not answer within {after:?}")]
    RequestTimeout {
        /// The worker that timed out.
        worker_id: String,
        /// The timeout that expired.
        after: Duration,
    },
    /// The worker process ended while the request was in flight (or before it
    /// was ready). No reply is an error even after a clean exit.
    #[error("worker {worker_id} (pid {pid}) exited with {exit} before answering{}", tail_suffix(.stderr_tail))]
    WorkerExited {
        /// The worker that exited.
        worker_id: String,
        /// Its OS pid.
        pid: u32,
        /// How it ended.
        exit: Exit,
        /// The last bytes it wrote to stderr.
        stderr_tail: String,
    },
    /// The worker's stream broke the protocol (oversize, undecodable or
    /// mismatched frame); the worker was killed and will be replaced.
    #[error("worker {worker_id} broke the protocol and was killed: {error}")]
    Protocol {
        /// The worker whose stream is unusable.
        worker_id: String,
        /// What was wrong with it.
        error: Arc<ProtocolError>,
    },
    /// The request never reached the worker: its process had already gone
    /// (the pipe was broken). The request did not run; retrying it elsewhere
    /// is safe.
    #[error("worker {worker_id} was gone before the request reached it; the request did not run")]
    NotDelivered {
        /// The worker.
        worker_id: String,
    },
    /// The request was refused before anything was written (a malformed
    /// command name, a payload above the maximum frame); the worker is
    /// untouched.
    #[error("request refused before sending: {0}")]
    Refused(Arc<ProtocolError>),
    /// The worker process could not be started.
    #[error(transparent)]
    Spawn(Arc<SpawnError>),
    /// The worker did not send its ready handshake in time.
    #[error("worker {worker_id} sent no ready handshake within {after:?}{}", tail_suffix(.stderr_tail))]
    BootTimeout {
        /// The worker.
        worker_id: String,
        /// The boot timeout.
        after: Duration,
        /// The last bytes it wrote to stderr.
        stderr_tail: String,
    },
    /// The worker was killed on purpose (for example by its health monitor).
    #[error("worker {worker_id} was killed: {reason}")]
    Killed {
        /// The worker.
        worker_id: String,
        /// Why.
        reason: String,
    },
    /// The worker actor is gone (stopped, or replaced after a failure).
    #[error("worker {worker_id} is not running")]
    Unavailable {
        /// The worker.
        worker_id: String,
    },
}

fn tail_suffix(tail: &str) -> String {
    let tail = tail.trim_end();
    if tail.is_empty() {
        String::new()
    } else {
        format!("; its stderr ended with:\n{tail}")
    }
}

impl WorkerError {
    /// The worker's exit, when the error is one.
    pub fn exit(&self) -> Option<Exit> {
        match self {
            Self::WorkerExited { exit, .. } => Some(*exit),
            _ => None,
        }
    }

    /// The remote error, when the worker answered with one.
    pub fn remote(&self) -> Option<&RemoteError> {
        match self {
            Self::Remote(error) => Some(error),
            _ => None,
        }
    }
}
