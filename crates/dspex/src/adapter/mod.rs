//! Adapters: what actually serves a call, behind one small trait.
//!
//! Like tower's `Service`, [`Adapter`] is a tiny core kept apart from what is
//! built on it (validation, retries, the circuit breaker, typed programs live
//! in [`crate::Dspex`]). Three adapters, one shape of result:
//!
//! | layer | adapter | what runs |
//! |---|---|---|
//! | 1 | [`MockAdapter`] | pure Rust: deterministic outputs from the signature, error injection |
//! | 2 | `BridgeMock` ([`PoolAdapter`] on fake workers) | the real codec, worker actors, supervisors and pool against in-process fake workers |
//! | 3 | `Python` ([`PoolAdapter`] or [`SingleAdapter`]) | real Python workers running DSPy |
//!
//! Which one runs is whatever the configuration says ([`crate::AdapterKind`]),
//! resolved in one place ([`crate::DspexBuilder::start`]).

mod mock;
mod pool;
mod single;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use dspex_bridge::pool::{PoolStatus, Session};
use dspex_bridge::{BridgeStatus, EnvironmentReport, Mode};
use dspex_protocol::{LmConfig, Map, ProgramDefinition, Value};
use futures::future::BoxFuture;
use tokio::sync::broadcast;

pub use mock::{Injector, MockAdapter};
pub use pool::PoolAdapter;
pub use single::SingleAdapter;

use crate::config::AdapterKind;
use crate::error::Result;
use crate::event::Event;

/// One operation for an adapter.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Operation {
    /// Set the LM every later execution uses.
    ConfigureLm(LmConfig),
    /// Make a program known (and validate its definition).
    CreateProgram(Arc<ProgramDefinition>),
    /// Forget a program.
    DeleteProgram(String),
    /// Run a program.
    Execute(Box<Execution>),
}

/// The arguments of [`Operation::Execute`].
#[derive(Debug, Clone)]
pub struct Execution {
    /// The program (its full definition: any worker can run it).
    pub program: Arc<ProgramDefinition>,
    /// The inputs, already validated against the signature.
    pub inputs: Map<String, Value>,
    /// The session, if any.
    pub session: Option<Session>,
    /// The request timeout, if not the default.
    pub timeout: Option<Duration>,
    /// An LM for this call only.
    pub lm: Option<LmConfig>,
}

/// What an adapter reports about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterStatus {
    /// Which adapter.
    pub kind: AdapterKind,
    /// The supervision mode (absent for the pure mock).
    pub mode: Option<Mode>,
    /// Set once the adapter can serve nothing any more.
    pub failed: Option<String>,
    /// The pool, in pool mode.
    pub pool: Option<PoolStatus>,
    /// The single bridge, in single mode.
    pub bridge: Option<BridgeStatus>,
    /// The Python environment check, for the Python adapter.
    pub environment: Option<EnvironmentReport>,
}

/// Serves operations. See the module docs.
pub trait Adapter: Send + Sync + fmt::Debug + 'static {
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

    /// Stops everything the adapter runs.
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}
