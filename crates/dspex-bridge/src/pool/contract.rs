//! The checkout contract, as types.
//!
//! The OTP original let a worker callback return any term, and a stray
//! `{:error, _}` (outside NimblePool's `ok | remove | skip`) crashed the pool.
//! Here each decision is an enum the compiler checks: there is no other value
//! to return. The decisions are made by the pure functions below, from the
//! slot's observable state, so they are unit-tested on their own.

use crate::WorkerError;
use crate::worker::WorkerState;

/// What to do with a worker offered to a waiting caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckoutDecision {
    /// Hand the worker to the caller.
    Ok,
    /// The worker is unusable: take it out (it is killed and replaced) and
    /// offer the caller another one.
    Remove(String),
    /// Refuse this caller with an error; the worker is untouched.
    Skip(SkipReason),
}

/// Why a caller was refused at checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// The caller's stateful session lived on a worker that is gone.
    SessionLost,
}

/// What to do with a worker when its lease ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckinDecision {
    /// Back to the idle set.
    Ok,
    /// Take it out as broken: it is killed and restarted (a crash, counted
    /// against the restart budget).
    Remove(String),
    /// Take it out on the pool's own decision (its state is not trusted):
    /// it is killed and replaced at once, outside the restart budget.
    Replace(String),
}

/// The checkout decision for a worker in `state`, for a caller whose pinned
/// session (if any) expects the worker with pid `pinned_pid`.
pub(crate) fn checkout_decision(
    state: &WorkerState,
    pid: u32,
    pinned_pid: Option<u32>,
) -> CheckoutDecision {
    if pinned_pid.is_some_and(|expected| expected != pid) {
        return CheckoutDecision::Skip(SkipReason::SessionLost);
    }
    match state {
        WorkerState::Ready(_) => CheckoutDecision::Ok,
        WorkerState::Exited(exit) => CheckoutDecision::Remove(format!("worker exited ({exit})")),
        WorkerState::Stopping => CheckoutDecision::Remove("worker is stopping".into()),
        WorkerState::Booting => CheckoutDecision::Remove("worker is not ready".into()),
    }
}

/// The check-in decision after a lease whose last call ended in `outcome`
/// (`None`: no call, or the call's result was consumed), given whether the
/// holder panicked.
pub(crate) fn checkin_decision(
    outcome: Option<&Result<(), WorkerError>>,
    panicked: bool,
) -> CheckinDecision {
    if panicked {
        return CheckinDecision::Replace("the caller panicked while holding the worker".into());
    }
    match outcome {
        None | Some(Ok(())) => CheckinDecision::Ok,
        // A structured error reply, or a request refused before sending:
        // the worker is fine. A request past its deadline: the worker was
        // told and stays (a hung one is killed by its own actor).
        Some(Err(
            WorkerError::Remote(_) | WorkerError::Refused(_) | WorkerError::RequestTimeout { .. },
        )) => CheckinDecision::Ok,
        Some(Err(error)) => CheckinDecision::Remove(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::Exit;
    use dspex_protocol::{ErrorKind, Ready, RemoteError};
    use std::time::Duration;

    fn ready() -> WorkerState {
        WorkerState::Ready(Ready {
            event: "ready".into(),
            protocol: 1,
            worker_id: None,
            pid: 7,
            python: "3".into(),
            dspy: None,
            features: vec![],
        })
    }

    #[test]
    fn checkout_hands_out_only_ready_workers() {
        assert_eq!(checkout_decision(&ready(), 7, None), CheckoutDecision::Ok);
        assert_eq!(
            checkout_decision(&ready(), 7, Some(7)),
            CheckoutDecision::Ok
        );
        assert!(matches!(
            checkout_decision(&WorkerState::Exited(Exit::Signal(9)), 7, None),
            CheckoutDecision::Remove(reason) if reason.contains("signal 9")
        ));
        assert!(matches!(
            checkout_decision(&WorkerState::Booting, 7, None),
            CheckoutDecision::Remove(_)
        ));
    }

    #[test]
    fn a_pinned_session_on_a_replaced_worker_is_skipped() {
        assert_eq!(
            checkout_decision(&ready(), 8, Some(7)),
            CheckoutDecision::Skip(SkipReason::SessionLost)
        );
    }

    #[test]
    fn checkin_removes_broken_workers_and_keeps_answering_ones() {
        assert_eq!(checkin_decision(None, false), CheckinDecision::Ok);
        assert_eq!(checkin_decision(Some(&Ok(())), false), CheckinDecision::Ok);
        let remote = WorkerError::Remote(RemoteError::new(ErrorKind::LmError, "x"));
        assert_eq!(
            checkin_decision(Some(&Err(remote)), false),
            CheckinDecision::Ok
        );
        let timeout = WorkerError::RequestTimeout {
            worker_id: "w".into(),
            after: Duration::from_secs(1),
        };
        assert_eq!(
            checkin_decision(Some(&Err(timeout)), false),
            CheckinDecision::Ok,
            "a slow request does not make the worker broken"
        );
        let crashed = WorkerError::WorkerExited {
            worker_id: "w".into(),
            pid: 7,
            exit: Exit::Signal(9),
            stderr_tail: String::new(),
        };
        assert!(matches!(
            checkin_decision(Some(&Err(crashed)), false),
            CheckinDecision::Remove(_)
        ));
        assert!(matches!(
            checkin_decision(None, true),
            CheckinDecision::Replace(_)
        ));
    }
}
