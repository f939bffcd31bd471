//! The worker actor: one ractor actor owning one Python process.
//!
//! Semantics:
//! - **Start.** `pre_start` spawns the process through the tree's
//!   [`SpawnStrategy`] and returns at once; a spawn failure fails the start
//!   (the supervisor counts it as a restart). The worker becomes *ready* when
//!   the handshake frame arrives; calls made before are queued and sent then.
//!   No handshake within `boot_timeout` kills the process and fails the actor.
//! - **Calls.** Each call gets a fresh request id and its own reply port;
//!   replies are matched by id only. A reply whose id is not pending (its
//!   caller gave up) is dropped and logged, so it never reaches anyone else.
//!   A request larger than `max_frame` is refused before anything is written
//!   and the worker is untouched. Several requests may be in flight at once.
//! - **Deadline.** Every request carries its deadline (`deadline_ms`), and a
//!   worker speaking Protocol 2 answers `DeadlineExceeded` at it on its own,
//!   abandoning the work and staying in service. The caller gets
//!   [`WorkerError::RequestTimeout`] at the deadline; the worker stays in
//!   service, and its late reply is dropped by id. Only a worker that does
//!   not answer at all within `hang_grace` after the deadline is *hung*: it
//!   is killed (SIGKILL to its group) and replaced — outside the restart
//!   budget, since the kill was this side's decision — and its other
//!   in-flight callers get [`WorkerError::WorkerExited`] (their requests may
//!   have run). A call made with [`OnHang::Report`] (a health check) only
//!   reports the timeout and leaves the verdict to its caller.
//! - **Timers.** Deadlines, hang graces and the boot timeout of one worker
//!   are one ordered set woken by one task: a request costs no timer task.
//! - **Exit.** When the process exits, every pending caller gets
//!   [`WorkerError::WorkerExited`] with the exit and the stderr tail, and the
//!   actor fails with the same text (a clean exit nobody asked for is a
//!   failure too).
//! - **Bad stream (G7).** An oversize, undecodable or mismatched frame marks
//!   the stream unusable: the process is killed and the actor fails. A
//!   `ProtocolError` reply with id 0 that names a pending request (the
//!   worker could not decode that frame but stayed in step) goes to that
//!   caller instead, and the worker stays.
//! - **Refused.** A command with an empty or malformed name, or a request
//!   above `max_frame`, is refused before anything is written
//!   ([`WorkerError::Refused`]); the worker is untouched.
//! - **Replace.** [`WorkerHandle::replace`] kills the process on its owner's
//!   decision (a failed health check): the actor stops asking its
//!   supervisor for a replacement, which does not count as a crash.
//! - **Stop.** Stopping the actor stops the process with the escalation of
//!   [`WorkerProcess::stop`] and reaps it before the actor is gone; pending
//!   callers get [`WorkerError::WorkerExited`].

mod actor;
mod handle;
mod timers;

use std::time::Duration;

use dspex_protocol::{DEFAULT_MAX_FRAME, Ready};

pub use actor::{Worker, WorkerArgs, WorkerMsg, panic_message, run_callback};
pub use handle::{
    Abandon, CallOptions, Callbacks, Hooks, OnHang, Reply, RequestEvent, Settled, Tracked,
    WorkerHandle,
};

use crate::process::{Exit, StopGrace};

#[allow(unused_imports)] // for the module docs
use crate::{WorkerError, process::SpawnStrategy, process::WorkerProcess};

/// Timeouts and limits of one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerConfig {
    /// The default timeout of a request.
    pub request_timeout: Duration,
    /// How long after a request's deadline the worker may still stay silent
    /// before it is judged hung and killed (it should have answered
    /// `DeadlineExceeded` at the deadline).
    pub hang_grace: Duration,
    /// How long the worker may take to send its ready handshake.
    pub boot_timeout: Duration,
    /// The largest frame body accepted or sent.
    pub max_frame: usize,
    /// The grace periods of a stop.
    pub stop_grace: StopGrace,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            hang_grace: Duration::from_secs(2),
            boot_timeout: Duration::from_secs(60),
            max_frame: DEFAULT_MAX_FRAME,
            stop_grace: StopGrace::default(),
        }
    }
}

/// Where a worker is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerState {
    /// The process is starting; no handshake yet.
    Booting,
    /// The handshake arrived; the worker serves requests.
    Ready(Ready),
    /// The worker is being stopped.
    Stopping,
    /// The process has exited.
    Exited(Exit),
}

/// A snapshot of one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    /// The worker id.
    pub worker_id: String,
    /// The OS pid of its process.
    pub pid: u32,
    /// Its state.
    pub state: WorkerState,
    /// Requests sent and not yet answered, whose callers still wait.
    pub in_flight: usize,
    /// Requests past their deadline (their callers have their timeout)
    /// whose late reply has not come yet.
    pub overdue: usize,
    /// Requests answered since start.
    pub served: u64,
    /// Callbacks of the worker whose handlers are running on this side.
    pub callbacks: usize,
}

/// Something that happened to a worker, for observers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerEvent {
    /// The process was started.
    Spawned {
        /// The worker id.
        worker_id: String,
        /// Its OS pid.
        pid: u32,
    },
    /// The handshake arrived.
    Ready {
        /// The worker id.
        worker_id: String,
        /// Its OS pid.
        pid: u32,
    },
    /// The process exited and was reaped.
    Exited {
        /// The worker id.
        worker_id: String,
        /// Its OS pid.
        pid: u32,
        /// How it ended.
        exit: Exit,
        /// Whether the worker's owner asked for it (a stop), rather than a crash.
        requested: bool,
    },
}
