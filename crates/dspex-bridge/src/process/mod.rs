//! Owning a Python worker process, whatever created it.
//!
//! A [`SpawnStrategy`] turns a [`WorkerCommand`] into a [`Spawned`] process:
//! its pid, its three pipes and a [`ProcessControl`] to signal and reap it.
//! [`WorkerProcess`] then owns that process for its whole life: it drains
//! stderr continuously into tracing and a bounded tail, and stops it with the
//! escalation `close stdin → grace → SIGTERM to the group → grace → SIGKILL →
//! reap`. Nothing about the owner depends on how the process was made: the
//! [`DirectSpawner`] starts each worker as its own interpreter, the
//! [`ZygoteSpawner`] forks it from a zygote, and the owner is the same.
//!
//! The guarantees (numbered as in the reliability contract):
//! - G1: pipes are close-on-exec (std's default), so no sibling holds another
//!   worker's stdin open and EOF reaches the worker.
//! - G2: every process is reaped by [`WorkerProcess::stop`] or
//!   [`WorkerProcess::wait`]; `kill_on_drop` is only the backstop for a
//!   dropped owner.
//! - G3: each worker leads its own process group, and kills go to the group.
//! - G4: the parent-death signal is set from the spawner's dedicated thread
//!   (it follows the creating *thread*), with a `getppid` re-check, for
//!   direct children (workers and the zygote). Forked workers have none (it
//!   would follow the zygote): the host's death reaches them as EOF and
//!   through the watchdog.
//! - G5/G6: escalating stop; exits are reported as [`Exit`] with the stderr tail.
//! - G8: stderr drained into a ring buffer of [`STDERR_TAIL_BYTES`] and
//!   rate-limited log lines carrying the worker id and pid.
//! - G9: every worker carries the tree's [`RunTag`]; [`sweep_orphans`] kills
//!   tagged workers whose host is gone, and each tree's [`Watchdog`] kills
//!   whatever carries its tag the moment the host is gone (descendants of
//!   workers included, which the parent-death signal does not reach).

mod fds;
mod owner;
mod spawner;
mod stderr;
mod tag;
mod watchdog;
mod zygote;

use std::ffi::OsString;
use std::fmt;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncWrite};

pub use fds::{FdLedger, OpenFd, rss_bytes};
pub use owner::WorkerProcess;
pub use spawner::DirectSpawner;
pub use stderr::{STDERR_TAIL_BYTES, StderrTail};
pub use watchdog::Watchdog;
pub use zygote::{ZYGOTE_FD_ENV, ZYGOTE_PRELOAD_ENV, ZygoteOptions, ZygoteSpawner};

pub use tag::{
    ProcStat, RUN_TAG_ENV, RunTag, kill_process, proc_stat, sweep_orphans, tagged_processes,
};

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Exit {
    /// It exited with this status code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

impl Exit {
    /// The exit of a [`std::process::ExitStatus`].
    pub fn from_status(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => Self::Code(code),
            (None, Some(signal)) => Self::Signal(signal),
            (None, None) => Self::Code(-1),
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Code(code) => write!(f, "exit code {code}"),
            Self::Signal(signal) => {
                let name = nix::sys::signal::Signal::try_from(*signal)
                    .map(|s| s.as_str())
                    .unwrap_or("unknown");
                write!(f, "signal {signal} ({name})")
            }
        }
    }
}

/// Everything needed to start one worker.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    /// The Python interpreter.
    pub interpreter: PathBuf,
    /// `PYTHONPATH` for the worker (must reach `dspex_bridge`).
    pub python_path: OsString,
    /// The worker's id, passed as `--worker-id` and used in every log line.
    pub worker_id: String,
    /// Extra command-line arguments after `-m dspex_bridge --worker-id ID`.
    pub args: Vec<OsString>,
    /// Extra environment variables.
    pub env: Vec<(OsString, OsString)>,
    /// The tag of the tree that owns the worker.
    pub run_tag: RunTag,
    /// Where the spawner records the pipes it opens to the worker.
    pub fds: FdLedger,
    /// Descriptors the process inherits under their own numbers (all
    /// others are close-on-exec); the zygote's control socket.
    pub inherit_fds: Vec<Arc<OwnedFd>>,
}

/// Why a process could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot start `{}` for worker {worker_id}: {source}", interpreter.display())]
pub struct SpawnError {
    /// The worker the process was for.
    pub worker_id: String,
    /// The interpreter that was to be run.
    pub interpreter: PathBuf,
    /// The OS error (its errno is in `raw_os_error()`).
    #[source]
    pub source: std::io::Error,
}

/// Sends signals to a worker's process group.
///
/// For real processes this is `killpg` on the group the worker leads; an
/// in-process fake worker supplies its own. It must stay harmless after the
/// process is gone (a group that no longer exists is not an error).
#[derive(Clone)]
pub struct Signaller(Arc<dyn Fn(Signal) -> std::io::Result<()> + Send + Sync>);

impl Signaller {
    /// Signals the process group `pgid` (never group 0 or 1).
    pub fn process_group(pgid: u32) -> Self {
        Self(Arc::new(move |signal| spawner::signal_group(pgid, signal)))
    }

    /// Signals through `send`.
    pub fn new(send: impl Fn(Signal) -> std::io::Result<()> + Send + Sync + 'static) -> Self {
        Self(Arc::new(send))
    }

    /// Sends `signal`.
    ///
    /// # Errors
    /// The OS error, other than "no such process".
    pub fn send(&self, signal: Signal) -> std::io::Result<()> {
        (self.0)(signal)
    }
}

impl fmt::Debug for Signaller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Signaller")
    }
}

/// Reaps one process, however it was created.
pub trait ProcessControl: Send + fmt::Debug {
    /// Waits for the process to exit and reaps it.
    ///
    /// Cancel safe: a dropped wait can be started again.
    fn wait(&mut self) -> BoxFuture<'_, std::io::Result<Exit>>;
}

/// A started process, handed from a [`SpawnStrategy`] to its owner.
pub struct Spawned {
    /// The OS process id; the process leads a group of the same id.
    pub pid: u32,
    /// The worker's stdin: requests go here; dropping it is EOF.
    pub stdin: Box<dyn AsyncWrite + Send + Unpin>,
    /// The worker's private protocol stream.
    pub stdout: Box<dyn AsyncRead + Send + Unpin>,
    /// The worker's log stream.
    pub stderr: Box<dyn AsyncRead + Send + Unpin>,
    /// Reaps the process.
    pub control: Box<dyn ProcessControl>,
    /// Signals the process's group.
    pub signaller: Signaller,
}

impl fmt::Debug for Spawned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spawned")
            .field("pid", &self.pid)
            .field("control", &self.control)
            .finish_non_exhaustive()
    }
}

/// Creates worker processes. One instance serves one supervision tree.
pub trait SpawnStrategy: Send + Sync + fmt::Debug + 'static {
    /// Starts the process for `command`.
    ///
    /// # Cancel safety
    /// Implementations must not leak a process when the future is dropped:
    /// a process created for a dropped call is killed and reaped.
    fn spawn(&self, command: WorkerCommand) -> BoxFuture<'static, Result<Spawned, SpawnError>>;

    /// Stops what the strategy runs besides the workers (a zygote), once
    /// the tree's workers have stopped. The default has nothing to stop.
    ///
    /// # Cancel safety
    /// A dropped shutdown leaves the rest to the strategy's drop.
    fn shutdown(&self, grace: StopGrace) -> BoxFuture<'static, ()> {
        let _ = grace;
        Box::pin(std::future::ready(()))
    }
}

/// Grace periods of the escalating stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopGrace {
    /// How long to wait after closing stdin before SIGTERM.
    pub after_eof: Duration,
    /// How long to wait after SIGTERM before SIGKILL.
    pub after_term: Duration,
}

impl Default for StopGrace {
    fn default() -> Self {
        Self {
            after_eof: Duration::from_secs(2),
            after_term: Duration::from_secs(2),
        }
    }
}
