//! [`WorkerProcess`]: the one owner of a worker process.

use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::stderr::{StderrTail, drain};
use super::{Exit, Signaller, Spawned, StopGrace};

/// How long the exit report waits for the last stderr bytes after the group
/// has been killed.
const TAIL_SETTLE: Duration = Duration::from_millis(250);

/// Owns one worker process: its pipes, its stderr drain and its exit.
///
/// A background task reaps the process the moment it exits, then kills
/// whatever is left of its process group (descendants) and publishes the
/// [`Exit`]. Dropping the owner SIGKILLs the group; the task still reaps.
pub struct WorkerProcess {
    worker_id: String,
    pid: u32,
    stdin: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    stdout: Option<Box<dyn AsyncRead + Send + Unpin>>,
    tail: StderrTail,
    exit: watch::Receiver<Option<Exit>>,
    reaper: JoinHandle<()>,
    signaller: Signaller,
}

impl std::fmt::Debug for WorkerProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerProcess")
            .field("worker_id", &self.worker_id)
            .field("pid", &self.pid)
            .field("exit", &self.try_exit())
            .finish_non_exhaustive()
    }
}

impl WorkerProcess {
    /// Takes ownership of a spawned process. Must be called inside a tokio
    /// runtime (it starts the stderr drain and the reaper).
    pub fn new(spawned: Spawned, worker_id: impl Into<String>) -> Self {
        let worker_id = worker_id.into();
        let Spawned {
            pid,
            stdin,
            stdout,
            stderr,
            mut control,
            signaller,
        } = spawned;
        let tail = StderrTail::default();
        let drainer = tokio::spawn(drain(stderr, tail.clone(), worker_id.clone(), pid));
        let (report, exit) = watch::channel(None);
        let group = signaller.clone();
        let reaper = tokio::spawn(async move {
            let exit = match control.wait().await {
                Ok(exit) => exit,
                Err(error) => {
                    tracing::error!(pid, %error, "waiting for a worker failed");
                    Exit::Code(-1)
                }
            };
            // G3: nothing the worker started outlives it.
            let _ = group.send(Signal::SIGKILL);
            let _ = tokio::time::timeout(TAIL_SETTLE, drainer).await;
            let _ = report.send(Some(exit));
        });
        Self {
            worker_id,
            pid,
            stdin: Some(stdin),
            stdout: Some(stdout),
            tail,
            exit,
            reaper,
            signaller,
        }
    }

    /// The worker id.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// The OS process id (and process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Takes the write end of the worker's stdin (once).
    pub fn take_stdin(&mut self) -> Option<Box<dyn AsyncWrite + Send + Unpin>> {
        self.stdin.take()
    }

    /// Takes the read end of the worker's protocol stream (once).
    pub fn take_stdout(&mut self) -> Option<Box<dyn AsyncRead + Send + Unpin>> {
        self.stdout.take()
    }

    /// The last bytes the worker wrote to stderr.
    pub fn stderr_tail(&self) -> &StderrTail {
        &self.tail
    }

    /// The exit, once the process has exited and been reaped.
    pub fn try_exit(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// A receiver that sees the exit once the process has been reaped.
    pub fn exit_watch(&self) -> watch::Receiver<Option<Exit>> {
        self.exit.clone()
    }

    /// Waits until the process has exited and been reaped.
    ///
    /// # Cancel safety
    /// Cancel safe: the reaping happens in a background task either way.
    pub fn wait(&self) -> impl Future<Output = Exit> + Send + 'static {
        let mut exit = self.exit.clone();
        async move {
            match exit.wait_for(Option::is_some).await {
                Ok(exit) => exit.unwrap_or(Exit::Code(-1)),
                // The reaper is gone only if the runtime is shutting down.
                Err(_) => Exit::Code(-1),
            }
        }
    }

    /// Sends SIGKILL to the worker's process group now.
    pub fn kill(&self) {
        if self.try_exit().is_none() {
            let _ = self.signaller.send(Signal::SIGKILL);
        }
    }

    /// Sends a signal to the worker's process group.
    ///
    /// # Errors
    /// The OS error, other than "no such process".
    pub fn signal(&self, signal: Signal) -> std::io::Result<()> {
        if self.try_exit().is_some() {
            return Ok(());
        }
        self.signaller.send(signal)
    }

    /// Stops the worker: close stdin → `grace.after_eof` → SIGTERM to the
    /// group → `grace.after_term` → SIGKILL → reap (G5).
    ///
    /// # Cancel safety
    /// If the future is dropped midway, the owner is still in charge: a later
    /// `stop`, [`WorkerProcess::kill`] or drop finishes the job.
    pub async fn stop(&mut self, grace: StopGrace) -> Exit {
        self.stdin.take();
        if let Ok(exit) = tokio::time::timeout(grace.after_eof, self.wait()).await {
            return exit;
        }
        tracing::debug!(worker = %self.worker_id, pid = self.pid, "no exit after EOF; sending SIGTERM");
        let _ = self.signal(Signal::SIGTERM);
        if let Ok(exit) = tokio::time::timeout(grace.after_term, self.wait()).await {
            return exit;
        }
        tracing::warn!(worker = %self.worker_id, pid = self.pid, "no exit after SIGTERM; sending SIGKILL");
        self.kill();
        self.wait().await
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        // The reaper task keeps running and reaps the killed process.
        self.kill();
        let _ = &self.reaper;
    }
}
