//! Supervisor-wide policy: restart strategy, intensity, backoff, give-up.
//!
//! # Semantics
//!
//! When a child goes down and its [`crate::Restart`] type asks for a restart,
//! the supervisor first checks the [`RestartIntensity`]; if the budget is
//! exhausted it gives up (see [`OnGiveUp`]). Otherwise the [`Strategy`] picks
//! the restart set, the supervisor stops the other members of the set that are
//! still running (reverse start order, each with its grace), and starts the
//! whole set in start order after the failed child's [`Backoff`] delay.

use crate::intensity::{Backoff, RestartIntensity};

/// Which children are restarted when one goes down (OTP strategies).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Only the child that went down.
    #[default]
    OneForOne,
    /// All children: the others are stopped (reverse start order) and all are
    /// started again in start order. Temporary siblings are stopped and dropped.
    OneForAll,
    /// The child that went down and every child started after it: those are
    /// stopped (reverse order) and the set is started again in start order.
    RestForOne,
}

/// What a supervisor does once it gives up.
///
/// Either way it first stops its remaining children (reverse start order, each
/// with its grace), enters [`crate::SupervisorState::Failed`], emits
/// [`crate::SupervisorEvent::Failed`] once, and never starts a child again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OnGiveUp {
    /// Stop itself with the [`crate::FailureCause`] as its error, so a parent
    /// supervisor sees it as a failed child (OTP nesting). If this happens while
    /// starting the initial children, `spawn` returns the error instead.
    #[default]
    Escalate,
    /// Stay alive in `Failed`, answering status, so an embedding service
    /// observes the failure instead of losing the actor.
    Remain,
}

/// Supervisor configuration. Defaults follow the DSPex reliability contract:
/// one-for-one, 3 restarts in 5 s, backoff 100 ms ×2 capped at 5 s, escalate.
#[derive(Clone, Debug)]
pub struct SupervisorOptions {
    /// Restart strategy.
    pub strategy: Strategy,
    /// Restart budget.
    pub intensity: RestartIntensity,
    /// Delay between consecutive restarts of a child.
    pub backoff: Backoff,
    /// Restart a child at once when it has not been restarted inside the
    /// intensity window, as OTP does; `backoff` then applies only to the
    /// repeats of a crash loop (the `n`-th repeat waits `backoff.delay(n - 1)`).
    /// Off by default: every restart waits `backoff`.
    pub immediate_first_restart: bool,
    /// Escalate or remain after giving up.
    pub on_give_up: OnGiveUp,
    /// Optional ractor registry name for the supervisor actor. Names are
    /// global to the process: callers pass a prefix unique to their tree
    /// (e.g. `"pool-7/supervisor"`). `None` (the default) spawns unnamed.
    pub name: Option<String>,
    /// Capacity of the event broadcast channel (default 256).
    pub event_capacity: usize,
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        Self {
            strategy: Strategy::default(),
            intensity: RestartIntensity::default(),
            backoff: Backoff::default(),
            immediate_first_restart: false,
            on_give_up: OnGiveUp::default(),
            name: None,
            event_capacity: 256,
        }
    }
}
