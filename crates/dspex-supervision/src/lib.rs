//! OTP-style supervisors on [ractor].
//!
//! ractor has no supervisor behaviour of its own: an actor's default
//! `handle_supervisor_evt` stops the parent when a child fails. This crate adds
//! the OTP one: restart strategies ([`Strategy::OneForOne`],
//! [`Strategy::OneForAll`], [`Strategy::RestForOne`]), child restart types
//! ([`Restart::Permanent`], [`Restart::Transient`], [`Restart::Temporary`]),
//! restart intensity with exponential backoff, a terminal `Failed` state, and
//! ordered shutdown.
//!
//! # Semantics in one place
//!
//! * **A child panics or fails** (a handler returns `Err` or panics, or its
//!   `post_start` does): ractor reports `ActorFailed` to the supervisor, which
//!   emits [`SupervisorEvent::ChildExited`] with [`ExitCause::Failed`] and the
//!   whole error text. Permanent and transient children are restarted; the
//!   strategy decides which siblings are stopped and restarted with it.
//! * **A child stops**: `None`/`"normal"`/`"shutdown"` reasons are normal exits
//!   (restarting only permanent children); any other reason or a kill is
//!   abnormal (restarting transient ones too).
//! * **A child asks to be replaced** (it stops with [`replace_reason`], as a
//!   worker does when its owner killed it on purpose: hung, recycled):
//!   permanent and transient children are started again at once, and the
//!   restart does not count against the intensity — the budget is for
//!   crashes, and a deliberate replacement is not one.
//! * **A child cannot start** (its factory errors, or its `pre_start` fails):
//!   treated exactly like a crash — it counts against the intensity and is
//!   retried with backoff — so a child that can never start ends in `Failed`
//!   after `1 + max_restarts` attempts.
//! * **Restart intensity** is OTP's: a restart is allowed if the restarts in the
//!   last `within`, counting it, are at most `max_restarts`. The delay before
//!   a restart is `initial × factor^n` (capped), `n` being the child's restarts
//!   inside the window; it is a timer message, so the supervisor keeps working
//!   while it waits.
//! * **Give-up**: remaining children are stopped in reverse start order (stop,
//!   then kill after each child's grace), the supervisor enters
//!   [`SupervisorState::Failed`] with a [`FailureCause`] naming the child and its
//!   last exit, emits [`SupervisorEvent::Failed`] once and never starts a child
//!   again; then it escalates (fails itself, so a parent supervisor restarts
//!   it or gives up in turn) or remains up in `Failed` ([`OnGiveUp`]).
//! * **Stop**: stopping the supervisor stops its children in reverse start
//!   order, each with its grace, and then emits [`SupervisorEvent::Stopped`].
//!   *Killing* it skips that: ractor kills the children at once.
//! * **No global state**: actors are unnamed unless the caller names the
//!   supervisor; children are found through [`SupervisorHandle::child`] or the
//!   status, never through ractor's registry.
//!
//! # Example
//!
//! A worker whose start fails twice, then succeeds: the supervisor retries with
//! backoff (100 ms, then 200 ms) and never reaches `Failed`.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::time::Duration;
//!
//! use dspex_supervision::{ChildSpec, StartError, Supervisor, SupervisorEvent, SupervisorOptions};
//! use ractor::{Actor, ActorProcessingErr, ActorRef};
//!
//! struct Worker;
//! impl Actor for Worker {
//!     type Msg = ();
//!     type State = ();
//!     type Arguments = bool;
//!     async fn pre_start(&self, _: ActorRef<()>, fail: bool) -> Result<(), ActorProcessingErr> {
//!         if fail { Err("ModuleNotFoundError: No module named 'dspy'".into()) } else { Ok(()) }
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let attempts = Arc::new(AtomicU32::new(0));
//! let counter = Arc::clone(&attempts);
//! let supervisor = Supervisor::new(SupervisorOptions::default()).child(ChildSpec::new(
//!     "worker-0",
//!     move |sup| {
//!         let fail = counter.fetch_add(1, Ordering::SeqCst) < 2;
//!         async move {
//!             let (worker, _) = Actor::spawn_linked(None, Worker, fail, sup).await?;
//!             Ok::<_, StartError>(worker.get_cell())
//!         }
//!     },
//! ));
//! let mut events = supervisor.subscribe();
//! let handle = supervisor.spawn().await?;
//!
//! let mut delays = Vec::new();
//! loop {
//!     match tokio::time::timeout(Duration::from_secs(5), events.recv()).await?? {
//!         SupervisorEvent::ChildRestarting { delay, .. } => delays.push(delay),
//!         SupervisorEvent::ChildStarted { .. } => break,
//!         _ => {}
//!     }
//! }
//! assert_eq!(delays, [Duration::from_millis(100), Duration::from_millis(200)]);
//! assert_eq!(attempts.load(Ordering::SeqCst), 3);
//! assert!(!handle.status().state.is_failed());
//! handle.stop(Duration::from_secs(5)).await;
//! # Ok(())
//! # }
//! ```

mod events;
mod handle;
mod intensity;
mod options;
mod spec;
mod status;
mod supervisor;

pub use events::{ExitCause, FailureCause, REPLACE_PREFIX, SupervisorEvent, replace_reason};
pub use handle::{StopOutcome, Supervisor, SupervisorError, SupervisorHandle};
pub use intensity::{Backoff, RestartIntensity};
pub use options::{OnGiveUp, Strategy, SupervisorOptions};
pub use spec::{
    ChildId, ChildSpec, DEFAULT_SHUTDOWN, DEFAULT_SUPERVISOR_SHUTDOWN, Restart, StartError,
    StartFuture,
};
pub use status::{ChildStatus, SupervisorState, SupervisorStatus};
