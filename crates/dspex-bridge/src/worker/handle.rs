//! [`WorkerHandle`]: the typed API of one worker actor.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dspex_protocol::{CallError, Command, Ready, Value};
use futures::future::BoxFuture;
use ractor::{Actor, ActorCell, ActorRef};
use tokio::sync::{mpsc, oneshot, watch};

use super::actor::{Call, Inner, Status};
use super::{Worker, WorkerArgs, WorkerConfig, WorkerEvent, WorkerInfo, WorkerMsg, WorkerState};
use crate::WorkerError;
use crate::process::{SpawnStrategy, WorkerCommand};

/// Per-call options.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// The session the request belongs to.
    pub session_id: Option<String>,
    /// The deadline (default: the worker's `request_timeout`).
    pub timeout: Option<Duration>,
    /// What a worker that stays silent past the deadline and the hang grace
    /// means.
    pub on_hang: OnHang,
    /// Where the request's callbacks run and its events go.
    pub hooks: Hooks,
}

/// The host side of a request (Protocol 2): the handlers of the callbacks
/// the worker makes while serving it (its tools, its reward function), and
/// where its events go. Without handlers a callback is answered
/// `ToolError`; without a sink the request does not ask for events.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Runs the request's callbacks.
    pub callbacks: Option<Arc<dyn Callbacks>>,
    /// Receives the request's events.
    pub events: Option<mpsc::UnboundedSender<RequestEvent>>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("callbacks", &self.callbacks.is_some())
            .field("events", &self.events.is_some())
            .finish()
    }
}

/// The host side of a request's callbacks (Protocol 2): the worker actor
/// runs each in a task of its own (never in the actor) and writes its
/// answer back; a panic becomes a `ToolError` answer with the panic's text.
pub trait Callbacks: Send + Sync + 'static {
    /// Runs handler `name` with `args` (a map).
    ///
    /// Cancel safety: the future is dropped when the request ends or its
    /// caller goes away; the worker is then answered `Cancelled`.
    fn call(&self, name: &str, args: Value) -> BoxFuture<'static, Result<Value, CallError>>;
}

/// An event of a request (a streamed chunk, progress).
#[derive(Debug, Clone, PartialEq)]
pub struct RequestEvent {
    /// Its kind (`chunk`, `progress`, ...).
    pub event: String,
    /// Its data.
    pub data: Value,
}

/// A request sent with [`WorkerHandle::send_tracked`]: where its reply
/// arrives, when the worker is done with it, and how to abandon it.
#[derive(Debug)]
pub struct Tracked {
    /// The reply.
    pub reply: Reply,
    /// Resolves once the worker owes no reply for it.
    pub settled: Settled,
    /// Tells the worker its caller has gone.
    pub abandon: Abandon,
}

/// Tells a worker a request's caller has gone: its callbacks are answered
/// `Cancelled`, and the worker is sent `cancel` so it ends the work.
#[derive(Debug, Clone)]
pub struct Abandon {
    actor: ActorRef<WorkerMsg>,
    id: Arc<AtomicU64>,
}

impl Abandon {
    /// Abandons the request (nothing happens if it already ended).
    pub fn abandon(&self) {
        let id = self.id.load(Ordering::Acquire);
        if id != 0 {
            let _ = self.actor.send_message(WorkerMsg(Inner::Abandon(id)));
        }
    }
}

/// What the worker actor concludes when a request is still unanswered a hang
/// grace after its deadline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum OnHang {
    /// The worker is hung: kill and replace it.
    #[default]
    Kill,
    /// Nothing: the caller got its timeout and judges the silence itself
    /// (the health monitor counts a missed ping toward its thresholds).
    Report,
}

/// Where a call's reply arrives.
pub type Reply = oneshot::Receiver<Result<Value, WorkerError>>;

/// Resolves once the worker owes no reply for a request: `Ok` when it
/// answered, `Err` when it never will.
pub type Settled = oneshot::Receiver<()>;

/// A cloneable handle to one worker actor.
#[derive(Debug, Clone)]
pub struct WorkerHandle {
    actor: ActorRef<WorkerMsg>,
    worker_id: Arc<str>,
    status: watch::Receiver<Status>,
}

impl WorkerHandle {
    /// Starts a worker actor (and its process), linked to `supervisor` if
    /// given. Returns once the process is spawned; see [`WorkerHandle::ready`].
    ///
    /// # Cancel safety
    /// If the future is dropped after the actor started, the actor keeps
    /// running unsupervised by this caller; stop it through its supervisor.
    ///
    /// # Errors
    /// [`WorkerError::Spawn`] if the process could not be started.
    pub async fn spawn(
        command: WorkerCommand,
        spawner: Arc<dyn SpawnStrategy>,
        config: WorkerConfig,
        events: Option<tokio::sync::broadcast::Sender<WorkerEvent>>,
        supervisor: Option<ActorCell>,
    ) -> Result<Self, WorkerError> {
        let worker_id: Arc<str> = command.worker_id.as_str().into();
        let (status_tx, status) = watch::channel(Status {
            pid: 0,
            state: WorkerState::Booting,
        });
        let args = WorkerArgs {
            command,
            spawner,
            config,
            events,
            status: status_tx,
        };
        let started = match supervisor {
            Some(supervisor) => Actor::spawn_linked(None, Worker, args, supervisor).await,
            None => Actor::spawn(None, Worker, args).await,
        };
        let (actor, _join) = started.map_err(|error| spawn_error(&worker_id, error))?;
        Ok(Self {
            actor,
            worker_id,
            status,
        })
    }

    /// The worker id.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// The OS pid of the worker's process.
    pub fn pid(&self) -> u32 {
        self.status.borrow().pid
    }

    /// The worker's state as last published.
    pub fn state(&self) -> WorkerState {
        self.status.borrow().state.clone()
    }

    /// The actor, for linking and supervision.
    pub fn actor(&self) -> &ActorRef<WorkerMsg> {
        &self.actor
    }

    /// Waits for the ready handshake.
    ///
    /// # Cancel safety
    /// Cancel safe: it only observes.
    ///
    /// # Errors
    /// [`WorkerError::Unavailable`] if the worker exits or stops first.
    pub async fn ready(&self) -> Result<Ready, WorkerError> {
        let mut status = self.status.clone();
        let seen = status
            .wait_for(|s| !matches!(s.state, WorkerState::Booting))
            .await
            .map(|s| s.state.clone());
        match seen {
            Ok(WorkerState::Ready(ready)) => Ok(ready),
            _ => Err(self.unavailable()),
        }
    }

    /// Sends a command and waits for its reply.
    ///
    /// # Cancel safety
    /// Dropping the future after the request was sent leaves the request
    /// running on the worker; its reply is dropped by request id when it comes
    /// back and the worker stays in service. The request timeout still applies
    /// on the worker's side.
    ///
    /// # Errors
    /// [`WorkerError::Remote`] for a structured error reply (worker kept);
    /// [`WorkerError::RequestTimeout`] at the deadline (worker kept unless it
    /// turns out hung); [`WorkerError::WorkerExited`] or
    /// [`WorkerError::Protocol`] when the worker failed (it is replaced);
    /// [`WorkerError::Refused`] for a malformed command or a request too
    /// large to send;
    /// [`WorkerError::Unavailable`] if the actor is gone.
    pub async fn call(&self, command: Command, options: CallOptions) -> Result<Value, WorkerError> {
        let answer = self.send(command, options)?;
        answer.await.unwrap_or_else(|_| Err(self.unavailable()))
    }

    /// Sends a command and returns the receiver of its reply, without
    /// waiting. The pool uses this to keep a reply it must drain after its
    /// caller has gone.
    ///
    /// # Errors
    /// [`WorkerError::Unavailable`] if the actor is gone.
    pub fn send(
        &self,
        command: Command,
        options: CallOptions,
    ) -> Result<oneshot::Receiver<Result<Value, WorkerError>>, WorkerError> {
        self.submit(command, options, None, None)
    }

    /// As [`WorkerHandle::send`], and also returns a receiver that resolves
    /// once the worker no longer owes a reply for this request (`Ok` when
    /// the worker answered, even after the deadline; `Err` when it never
    /// will: the request never went out, or the process is gone), and the
    /// [`Abandon`] that tells the worker its caller has gone. The pool uses
    /// them to keep a worker out of service while it still works for a
    /// caller that has gone, and to end that work early.
    ///
    /// # Errors
    /// [`WorkerError::NotDelivered`] if the actor is gone.
    pub fn send_tracked(
        &self,
        command: Command,
        options: CallOptions,
    ) -> Result<Tracked, WorkerError> {
        let (settled_tx, settled) = oneshot::channel();
        let assigned = Arc::new(AtomicU64::new(0));
        let reply = self.submit(
            command,
            options,
            Some(settled_tx),
            Some(Arc::clone(&assigned)),
        )?;
        Ok(Tracked {
            reply,
            settled,
            abandon: Abandon {
                actor: self.actor.clone(),
                id: assigned,
            },
        })
    }

    fn submit(
        &self,
        command: Command,
        options: CallOptions,
        settled: Option<oneshot::Sender<()>>,
        assigned: Option<Arc<AtomicU64>>,
    ) -> Result<oneshot::Receiver<Result<Value, WorkerError>>, WorkerError> {
        let (reply, answer) = oneshot::channel();
        let call = Call {
            command,
            session_id: options.session_id,
            timeout: options.timeout,
            on_hang: options.on_hang,
            callbacks: options.hooks.callbacks,
            events: options.hooks.events,
            span: tracing::Span::current(),
            settled,
            assigned,
            reply,
        };
        // An actor that is gone never saw the request: it did not run.
        self.actor
            .send_message(WorkerMsg(Inner::Call(Box::new(call))))
            .map_err(|_| WorkerError::NotDelivered {
                worker_id: self.worker_id.to_string(),
            })?;
        Ok(answer)
    }

    /// A snapshot of the worker.
    ///
    /// # Cancel safety
    /// Cancel safe.
    ///
    /// # Errors
    /// [`WorkerError::Unavailable`] if the actor is gone.
    pub async fn info(&self) -> Result<WorkerInfo, WorkerError> {
        let (reply, answer) = oneshot::channel();
        self.actor
            .send_message(WorkerMsg(Inner::Info(reply.into())))
            .map_err(|_| self.unavailable())?;
        answer.await.map_err(|_| self.unavailable())
    }

    /// Closes the worker's stdin (the worker should exit on the EOF). A test
    /// hook for the EOF guarantee; in service, stop the worker instead.
    pub fn close_stdin(&self) {
        let _ = self.actor.send_message(WorkerMsg(Inner::CloseStdin));
    }

    /// Kills the worker's process group now; the worker fails with `reason`
    /// (a crash: it counts against the restart budget) and its supervisor
    /// replaces it. In-flight callers get [`WorkerError::WorkerExited`].
    pub fn kill(&self, reason: impl Into<String>) {
        let _ = self
            .actor
            .send_message(WorkerMsg(Inner::Kill(reason.into())));
    }

    /// Kills the worker's process group now on its owner's decision (it
    /// failed its health checks, say): the supervisor replaces it at once,
    /// and the replacement does not count against the restart budget.
    /// In-flight callers get [`WorkerError::WorkerExited`].
    pub fn replace(&self, reason: impl Into<String>) {
        let _ = self
            .actor
            .send_message(WorkerMsg(Inner::Replace(reason.into())));
    }

    /// Stops the worker (escalating stop of its process) and waits until the
    /// actor is gone and the process reaped.
    ///
    /// # Cancel safety
    /// The stop proceeds even if the future is dropped.
    pub async fn stop(&self) {
        let _ = self
            .actor
            .stop_and_wait(Some("stop requested".into()), None)
            .await;
    }

    pub(crate) fn unavailable(&self) -> WorkerError {
        WorkerError::Unavailable {
            worker_id: self.worker_id.to_string(),
        }
    }
}

fn spawn_error(worker_id: &str, error: ractor::SpawnErr) -> WorkerError {
    let source = match error {
        ractor::SpawnErr::StartupFailed(inner) => {
            match inner.downcast::<crate::process::SpawnError>() {
                Ok(spawn) => return WorkerError::Spawn(Arc::new(*spawn)),
                Err(other) => std::io::Error::other(other.to_string()),
            }
        }
        other => std::io::Error::other(other.to_string()),
    };
    WorkerError::Spawn(Arc::new(crate::process::SpawnError {
        worker_id: worker_id.to_owned(),
        interpreter: Default::default(),
        source,
    }))
}
