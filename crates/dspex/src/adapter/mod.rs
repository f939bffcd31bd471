//! Adapters: what actually serves a call, behind one small trait.
//!
//! Like tower's `Service`, [`Adapter`] is a tiny core kept apart from what is
//! built on it (validation, the resilience layers, typed programs live in
//! [`crate::Dspex`] and [`crate::resilience`]): `readiness` (backpressure:
//! can a call be taken now?), `call`, `status`, `events`, `shutdown`.
//! [`AdapterService`] makes any adapter a [`tower::Service`] of
//! [`ExecuteRequest`]s, its `poll_ready` driven by the adapter's readiness.
//! Three adapters, one shape of result:
//!
//! | layer | adapter | what runs |
//! |---|---|---|
//! | 1 | [`MockAdapter`] | pure Rust: deterministic outputs from the signature, error injection |
//! | 2 | `BridgeMock` ([`PoolAdapter`] on fake workers) | the real codec, worker actors, supervisors and pool against in-process fake workers |
//! | 3 | `Python` ([`PoolAdapter`] in pool, single or disabled mode) | real Python workers running DSPy |
//!
//! Which one runs is whatever the configuration says ([`crate::AdapterKind`]),
//! resolved in one place ([`crate::DspexBuilder::start`]).

mod mock;
mod pool;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use dspex_bridge::pool::{PoolStatus, ProgramVersion, Run, Session};
use dspex_bridge::{EnvironmentReport, Hooks, Mode};
use dspex_protocol::{LmConfig, Value};
use futures::future::BoxFuture;
use tokio::sync::broadcast;
use tokio::time::Instant;

pub use mock::{Injector, MockAdapter};
pub use pool::PoolAdapter;

use crate::config::AdapterKind;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::resilience::RetryPolicy;

/// One operation for an adapter.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Operation {
    /// Set the LM every later execution uses.
    ConfigureLm(LmConfig),
    /// Check a program's definition (a worker builds it) before it is
    /// stored; the handle keeps the one store of programs.
    CreateProgram(ProgramVersion),
    /// A program was deleted from the handle's store.
    DeleteProgram(String),
    /// Run a program (once, or on a batch).
    Execute(Box<Execution>),
}

/// The arguments of [`Operation::Execute`].
#[derive(Debug, Clone)]
pub struct Execution {
    /// The program version (its full definition: any worker can run it).
    pub program: ProgramVersion,
    /// What to run: one call (inputs already validated against the
    /// signature, streaming, LM history) or a batch.
    pub run: Run,
    /// The session, if any.
    pub session: Option<Session>,
    /// What is left of the call's time budget when it reaches the adapter.
    pub timeout: Option<Duration>,
    /// An LM for this call only.
    pub lm: Option<LmConfig>,
    /// The program's callbacks (its tools, its reward) and where the
    /// call's events go.
    pub hooks: Hooks,
}

/// A call on the execute path, as the resilience layers see it.
#[derive(Debug, Clone)]
pub struct ExecuteRequest {
    /// What to run.
    pub execution: Execution,
    /// The call's time budget (`None`: the handle's request timeout).
    pub timeout: Option<Duration>,
    /// The call's deadline, fixed by the deadline layer.
    pub deadline: Option<Instant>,
    /// Whether the call may run twice without harm.
    pub idempotent: bool,
    /// A retry policy for this call only.
    pub retry: Option<RetryPolicy>,
    /// Which attempt this is (1 for the first).
    pub attempt: u32,
}

impl ExecuteRequest {
    /// A request for `execution`, with the defaults.
    pub fn new(execution: Execution) -> Self {
        Self {
            execution,
            timeout: None,
            deadline: None,
            idempotent: false,
            retry: None,
            attempt: 1,
        }
    }

    /// Sets the time budget.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Marks the call idempotent.
    #[must_use]
    pub fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }

    /// A request for a tiny program, for tests of the layers.
    #[cfg(test)]
    pub(crate) fn test() -> Self {
        use dspex_protocol::{FieldSpec, Map, ProgramDefinition, SignatureSpec};
        Self::new(Execution {
            program: ProgramVersion::new(ProgramDefinition {
                program_id: "p".into(),
                signature: SignatureSpec {
                    name: "S".into(),
                    instructions: String::new(),
                    inputs: vec![FieldSpec::new("q", "str")],
                    outputs: vec![FieldSpec::new("a", "str")],
                },
                module: "predict".into(),
                ..ProgramDefinition::default()
            }),
            run: Run::once(Map::new()),
            session: None,
            timeout: None,
            lm: None,
            hooks: Hooks::default(),
        })
    }
}

/// What the execute path returns: the adapter's reply and how many attempts
/// it took.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Executed {
    /// `{"program_id", "outputs": {...}, ...}` on every adapter.
    pub reply: Value,
    /// Attempts it took (1 unless retried).
    pub attempts: u32,
}

/// What an adapter reports about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterStatus {
    /// Which adapter.
    pub kind: AdapterKind,
    /// The supervision mode (absent for the pure mock).
    pub mode: Option<Mode>,
    /// Set once the adapter can serve nothing any more (or, with a revive
    /// policy, until it serves again).
    pub failed: Option<String>,
    /// The pool (of one worker in single mode).
    pub pool: Option<PoolStatus>,
    /// The Python environment check, for the Python adapter.
    pub environment: Option<EnvironmentReport>,
}

/// Resolves when an adapter's readiness may have changed.
pub type Changed = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

/// Whether an adapter can take a call now.
pub enum Readiness {
    /// Yes.
    Ready,
    /// No, and waiting will not help soon: refuse with this error.
    Refuse(Error),
    /// Not now (no room): resolves when it may have changed.
    Busy(Changed),
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ready => f.write_str("Ready"),
            Self::Refuse(error) => f.debug_tuple("Refuse").field(error).finish(),
            Self::Busy(_) => f.write_str("Busy"),
        }
    }
}

/// Serves operations. See the module docs.
pub trait Adapter: Send + Sync + fmt::Debug + 'static {
    /// Whether a call would be taken now (backpressure, in the
    /// `poll_ready` sense). The default: always.
    fn readiness(&self) -> Readiness {
        Readiness::Ready
    }

    /// Runs one operation. The result of `Execute` is
    /// `{"program_id", "outputs": {...}, ...}` on every adapter.
    ///
    /// Cancel safety: as the underlying layer's — dropping the future while
    /// queued leaves the queue; while a request runs, its reply is drained by
    /// request id and reaches nobody.
    fn call(&self, operation: Operation) -> BoxFuture<'_, Result<Value>>;

    /// A snapshot. Never waits on an actor.
    fn status(&self) -> AdapterStatus;

    /// Events from now on.
    fn events(&self) -> broadcast::Receiver<Event>;

    /// Stops everything the adapter runs, letting what is in flight finish
    /// within `grace`.
    fn shutdown(&self, grace: Duration) -> BoxFuture<'_, ()>;
}

/// An [`Adapter`] as a [`tower::Service`] of [`ExecuteRequest`]s: its
/// readiness is the adapter's, and each call is given what is left of its
/// deadline. Cheap to clone.
pub struct AdapterService {
    adapter: Arc<dyn Adapter>,
    busy: Option<Changed>,
}

impl AdapterService {
    /// Serves through `adapter`.
    pub fn new(adapter: Arc<dyn Adapter>) -> Self {
        Self {
            adapter,
            busy: None,
        }
    }
}

impl Clone for AdapterService {
    fn clone(&self) -> Self {
        Self::new(Arc::clone(&self.adapter))
    }
}

impl fmt::Debug for AdapterService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdapterService")
            .field("adapter", &self.adapter)
            .finish_non_exhaustive()
    }
}

impl tower::Service<ExecuteRequest> for AdapterService {
    type Response = Executed;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Executed>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        loop {
            if let Some(busy) = &mut self.busy {
                if busy.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.busy = None;
            }
            match self.adapter.readiness() {
                Readiness::Ready => return Poll::Ready(Ok(())),
                Readiness::Refuse(error) => return Poll::Ready(Err(error)),
                Readiness::Busy(changed) => self.busy = Some(changed),
            }
        }
    }

    fn call(&mut self, request: ExecuteRequest) -> Self::Future {
        let adapter = Arc::clone(&self.adapter);
        let mut execution = request.execution;
        execution.timeout = request
            .deadline
            .map(|deadline| deadline.saturating_duration_since(Instant::now()))
            .or(request.timeout);
        let attempts = request.attempt;
        Box::pin(async move {
            let reply = adapter
                .call(Operation::Execute(Box::new(execution)))
                .await?;
            Ok(Executed { reply, attempts })
        })
    }
}
