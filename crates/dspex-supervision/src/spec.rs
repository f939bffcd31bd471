//! Child specifications: what a supervisor starts, how, and when it restarts it.
//!
//! # Semantics
//!
//! * A child is started by its [`ChildSpec`]'s async start factory, which
//!   receives the supervisor's [`ActorCell`] and must spawn the child *linked* to
//!   it (`Actor::spawn_linked(.., supervisor)`), so that ractor reports the
//!   child's exit to the supervisor. It returns the child's [`ActorCell`] or a
//!   [`StartError`]. If it fails after spawning a linked actor (say, a
//!   handshake timed out), the supervisor kills that actor. If it names the
//!   child, the name must carry a caller-supplied prefix (ractor names are
//!   process-global); a restart reuses it safely because ractor unregisters a
//!   name before it reports the exit.
//! * A start error — including ractor's `SpawnErr::StartupFailed` when the
//!   child's `pre_start` returns an error or panics — is handled like a crash
//!   of the child: it counts against the restart intensity and is retried with
//!   backoff, so a child that can never start ends in `Failed` (OTP semantics).
//! * [`Restart`] decides which exits are restarted: `Permanent` always,
//!   `Transient` only after an abnormal exit (a failure, a panic, a kill, or a
//!   stop whose reason is not `normal`/`shutdown`), `Temporary` never (and the
//!   child is forgotten once it is down, as in OTP).
//! * `shutdown` is the grace the supervisor gives the child to stop when it
//!   stops it (strategy restarts, give-up, ordered shutdown): it sends
//!   `stop("shutdown")`, waits `shutdown`, then kills the child. A zero grace
//!   kills immediately (OTP's `brutal_kill`).

use std::borrow::Borrow;
use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ractor::{ActorCell, SpawnErr};

/// Identifier of a child inside one supervisor (unique among its siblings).
///
/// Cheap to clone; compares equal to `&str`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChildId(Arc<str>);

impl ChildId {
    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ChildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ChildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for ChildId {
    fn from(value: &str) -> Self {
        Self(value.into())
    }
}

impl From<String> for ChildId {
    fn from(value: String) -> Self {
        Self(value.into())
    }
}

impl Borrow<str> for ChildId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for ChildId {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for ChildId {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

/// When a child is restarted (OTP restart types).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Restart {
    /// Always restarted, whatever the exit.
    Permanent,
    /// Restarted only after an abnormal exit (see [`crate::ExitCause::is_abnormal`]).
    Transient,
    /// Never restarted; forgotten once down.
    Temporary,
}

/// Why a child could not be started. Cloneable so it can travel in events.
///
/// The message is kept whole (for a Python worker it carries the exit status
/// and the stderr tail).
#[derive(Clone)]
pub struct StartError {
    message: String,
    source: Option<Arc<dyn Error + Send + Sync + 'static>>,
}

impl StartError {
    /// A start error with a plain message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// Wrap any error; its `Display` becomes the message and it stays
    /// reachable through [`Error::source`].
    pub fn from_error<E: Error + Send + Sync + 'static>(error: E) -> Self {
        Self {
            message: error.to_string(),
            source: Some(Arc::new(error)),
        }
    }

    /// The full error text.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<SpawnErr> for StartError {
    /// `StartupFailed` keeps the child's own `pre_start` error text whole.
    fn from(error: SpawnErr) -> Self {
        let message = match &error {
            SpawnErr::StartupFailed(inner) => format!("startup failed: {inner}"),
            other => other.to_string(),
        };
        Self {
            message,
            source: Some(Arc::new(error)),
        }
    }
}

impl fmt::Debug for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StartError")
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error for StartError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

/// The future returned by a start factory.
pub type StartFuture = Pin<Box<dyn Future<Output = Result<ActorCell, StartError>> + Send>>;

type StartFn = Arc<dyn Fn(ActorCell) -> StartFuture + Send + Sync>;

/// Default grace for a worker child: OTP's 5 s.
pub const DEFAULT_SHUTDOWN: Duration = Duration::from_secs(5);

/// Default grace for a child that is itself a supervisor: long enough for its
/// own ordered shutdown.
pub const DEFAULT_SUPERVISOR_SHUTDOWN: Duration = Duration::from_secs(60);

/// Describes one child: its id, restart type, shutdown grace and start factory.
///
/// ```
/// use dspex_supervision::{ChildSpec, Restart};
/// use ractor::{Actor, ActorProcessingErr, ActorRef};
/// use std::time::Duration;
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
/// let spec = ChildSpec::new("worker-1", |supervisor| async move {
///     let (child, _) = Actor::spawn_linked(None, Worker, (), supervisor).await?;
///     Ok(child.get_cell())
/// })
/// .restart(Restart::Transient)
/// .shutdown(Duration::from_secs(2));
/// assert_eq!(spec.id, "worker-1");
/// ```
#[derive(Clone)]
pub struct ChildSpec {
    /// Unique id among the supervisor's children.
    pub id: ChildId,
    /// Restart type (default [`Restart::Permanent`]).
    pub restart: Restart,
    /// Grace between `stop` and `kill` when the supervisor stops this child
    /// (default [`DEFAULT_SHUTDOWN`]; zero kills at once).
    pub shutdown: Duration,
    start: StartFn,
}

impl ChildSpec {
    /// A permanent child with the default shutdown grace, started by `start`.
    ///
    /// `start` is called with the supervisor's [`ActorCell`] for every (re)start
    /// and must link the child to it.
    pub fn new<F, Fut>(id: impl Into<ChildId>, start: F) -> Self
    where
        F: Fn(ActorCell) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ActorCell, StartError>> + Send + 'static,
    {
        Self {
            id: id.into(),
            restart: Restart::Permanent,
            shutdown: DEFAULT_SHUTDOWN,
            start: Arc::new(move |supervisor| Box::pin(start(supervisor))),
        }
    }

    /// A child that is itself a supervisor, built afresh by `make` at every
    /// (re)start and linked to the parent. Permanent, with
    /// [`DEFAULT_SUPERVISOR_SHUTDOWN`]. When the nested supervisor gives up with
    /// [`crate::OnGiveUp::Escalate`], the parent sees it fail like any child.
    pub fn supervisor<F>(id: impl Into<ChildId>, make: F) -> Self
    where
        F: Fn() -> crate::Supervisor + Send + Sync + 'static,
    {
        let make = Arc::new(make);
        let mut spec = Self::new(id, move |parent| {
            let make = Arc::clone(&make);
            async move {
                let handle = make()
                    .spawn_linked(parent)
                    .await
                    .map_err(StartError::from_error)?;
                Ok(handle.cell().clone())
            }
        });
        spec.shutdown = DEFAULT_SUPERVISOR_SHUTDOWN;
        spec
    }

    /// Set the restart type.
    #[must_use]
    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }

    /// Set the shutdown grace.
    #[must_use]
    pub fn shutdown(mut self, grace: Duration) -> Self {
        self.shutdown = grace;
        self
    }

    /// Run the start factory once.
    pub(crate) fn start(&self, supervisor: ActorCell) -> StartFuture {
        (self.start)(supervisor)
    }
}

impl fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildSpec")
            .field("id", &self.id)
            .field("restart", &self.restart)
            .field("shutdown", &self.shutdown)
            .finish_non_exhaustive()
    }
}
