//! [`Error`]: the one error type of the public API, by category.
//!
//! Every failure a caller can meet is one variant with a [`Category`], a
//! [`Error::is_retryable`] verdict and a suggested delay, and a message a
//! person can act on. Lower layers' errors (pool, worker, protocol, Python)
//! are mapped here once, in [`From`] impls, so no caller matches on
//! internals.

use std::time::Duration;

use dspex_bridge::WorkerError;
use dspex_bridge::pool::PoolError;
use dspex_bridge::process::Exit;
use dspex_protocol::ErrorKind;

use crate::signature::{FieldRole, SignatureError, ValidationError};

/// A DSPex result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure an [`Error`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    /// The configuration is invalid or incomplete.
    Configuration,
    /// An input, output, signature or program id is invalid.
    Validation,
    /// A deadline passed (waiting for a worker, or the request itself).
    Timeout,
    /// Too many callers are waiting.
    Overloaded,
    /// The worker process died or was killed while serving the call.
    WorkerCrashed,
    /// The worker broke the wire protocol (it was replaced).
    Protocol,
    /// Python raised an exception while serving the call (the service's
    /// own module failed to import, to build, or in `forward`).
    Python,
    /// A Rust tool or reward function failed, and the program could not go
    /// on without it.
    Tool,
    /// The language model failed or is not configured.
    Lm,
    /// A stateful session lost its worker.
    Session,
    /// Nothing can serve the call (failed, disabled, shutting down, circuit open).
    Unavailable,
    /// The caller cancelled the call (a job's [`crate::Canceller`]).
    Cancelled,
    /// An optimization job used up its budget.
    Budget,
}

impl Category {
    /// Its snake-case name (`validation`, `worker_crashed`, ...), as in
    /// metrics labels and HTTP error bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Configuration => "configuration",
            Self::Validation => "validation",
            Self::Timeout => "timeout",
            Self::Overloaded => "overloaded",
            Self::WorkerCrashed => "worker_crashed",
            Self::Protocol => "protocol",
            Self::Python => "python",
            Self::Tool => "tool",
            Self::Lm => "lm",
            Self::Session => "session",
            Self::Unavailable => "unavailable",
            Self::Cancelled => "cancelled",
            Self::Budget => "budget",
        }
    }
}

/// Which deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Deadline {
    /// Waiting for a free worker; the request was never sent.
    Checkout,
    /// The request itself. The worker was told the deadline, abandoned the
    /// work and stays in service (it is replaced only if it was hung).
    Request,
}

/// Any failure of the DSPex API.
///
/// ```
/// use std::time::Duration;
/// use dspex::{Category, Deadline, Error};
///
/// let error = Error::Timeout { deadline: Deadline::Checkout, after: Duration::from_secs(5) };
/// assert_eq!(error.category(), Category::Timeout);
/// // A refusal: it never ran, and the caller is told when to come back
/// // instead of being retried behind its back.
/// assert!(error.is_refusal() && error.never_ran());
/// assert_eq!(error.suggested_delay(), Some(Duration::from_millis(100)));
/// assert_eq!(error.to_string(), "waiting for a free worker timed out after 5s");
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    #[error("invalid configuration: {message}")]
    Configuration {
        /// What is wrong and where (key, file or environment variable).
        message: String,
    },
    /// A value failed validation; nothing was sent.
    #[error("invalid {what}: {message}")]
    Validation {
        /// What was validated (`input`, `output`, `signature`, `program`, ...).
        what: &'static str,
        /// The field involved, if any.
        field: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// A deadline passed.
    #[error("{} timed out after {after:?}", match .deadline { Deadline::Checkout => "waiting for a free worker", Deadline::Request => "the request" })]
    Timeout {
        /// Which deadline.
        deadline: Deadline,
        /// Its length.
        after: Duration,
    },
    /// Too many callers: the wait queue is full, or the handle's limit of
    /// calls in flight is reached. Nothing ran.
    #[error("overloaded: {message}")]
    Overloaded {
        /// Details.
        message: String,
        /// When trying again makes sense.
        retry_after: Duration,
    },
    /// The worker died while serving the call.
    #[error("the worker crashed ({exit}){}", tail(.stderr_tail))]
    WorkerCrashed {
        /// Its OS pid (0 when not known): the calls it was serving fail
        /// together, as one incident.
        pid: u32,
        /// How it ended.
        exit: Exit,
        /// The last lines it wrote to stderr.
        stderr_tail: String,
    },
    /// The worker broke the protocol; it was replaced.
    #[error("protocol error: {message}")]
    Protocol {
        /// Details.
        message: String,
    },
    /// Python raised an exception.
    #[error("python error ({kind}): {message}")]
    Python {
        /// The error word of the worker.
        kind: ErrorKind,
        /// The message.
        message: String,
        /// The Python traceback.
        traceback: Option<String>,
    },
    /// A host function (a tool, a reward) failed and the program gave up:
    /// DSPy's ReAct shows a tool's error to the LM and goes on, but
    /// `best_of_n` and `refine` need their reward.
    #[error("tool `{tool}` failed: {message}")]
    Tool {
        /// The tool or reward function.
        tool: String,
        /// What happened.
        message: String,
    },
    /// The LM failed or is not configured.
    #[error("LM error: {message}")]
    Lm {
        /// The LM's message (a conversion failure names the field).
        message: String,
        /// Whether an LM is configured at all.
        configured: bool,
    },
    /// The caller cancelled the call; nothing it would have stored was.
    #[error("cancelled")]
    Cancelled,
    /// An optimization job used up its budget of metric or LM calls;
    /// nothing was stored.
    #[error("over budget: {message}")]
    BudgetExceeded {
        /// Which budget, its limit and what was used.
        message: String,
    },
    /// A stateful session lost its worker.
    #[error("session {session_id} was lost with its worker; start a new session")]
    SessionLost {
        /// The session.
        session_id: String,
    },
    /// Nothing can serve the call now; it did not run.
    #[error("unavailable: {cause}")]
    Unavailable {
        /// Why.
        cause: String,
        /// When trying again makes sense (a circuit that will half-open, a
        /// pool that will revive, a worker being replaced); `None` when
        /// waiting will not help (shut down, disabled, failed for good).
        retry_after: Option<Duration>,
    },
}

fn tail(stderr_tail: &str) -> String {
    let trimmed = stderr_tail.trim_end();
    match trimmed.lines().last() {
        Some(last) => format!("; last stderr line: {last}"),
        None => String::new(),
    }
}

impl Error {
    /// A configuration error.
    pub fn configuration(message: impl Into<String>) -> Self {
        Self::Configuration {
            message: message.into(),
        }
    }

    /// A validation error about `what`, optionally naming a field.
    pub fn validation(
        what: &'static str,
        field: Option<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::Validation {
            what,
            field,
            message: message.into(),
        }
    }

    /// The category.
    pub fn category(&self) -> Category {
        match self {
            Self::Configuration { .. } => Category::Configuration,
            Self::Validation { .. } => Category::Validation,
            Self::Timeout { .. } => Category::Timeout,
            Self::Overloaded { .. } => Category::Overloaded,
            Self::WorkerCrashed { .. } => Category::WorkerCrashed,
            Self::Protocol { .. } => Category::Protocol,
            Self::Python { .. } => Category::Python,
            Self::Tool { .. } => Category::Tool,
            Self::Lm { .. } => Category::Lm,
            Self::SessionLost { .. } => Category::Session,
            Self::Unavailable { .. } => Category::Unavailable,
            Self::Cancelled => Category::Cancelled,
            Self::BudgetExceeded { .. } => Category::Budget,
        }
    }

    /// Whether trying again, later, may succeed: the failure was in the
    /// machinery (a crash, a timeout, a full queue, a transient LM failure),
    /// not in the call itself.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Timeout { .. }
            | Self::Overloaded { .. }
            | Self::WorkerCrashed { .. }
            | Self::Protocol { .. } => true,
            Self::Lm { configured, .. } => *configured,
            Self::Unavailable { retry_after, .. } => retry_after.is_some(),
            Self::Configuration { .. }
            | Self::Validation { .. }
            | Self::Python { .. }
            | Self::Tool { .. }
            | Self::Cancelled
            | Self::BudgetExceeded { .. }
            | Self::SessionLost { .. } => false,
        }
    }

    /// Whether the request certainly did not run (so retrying cannot run it
    /// twice): it never left the queue, or was refused before sending.
    pub fn never_ran(&self) -> bool {
        matches!(
            self,
            Self::Timeout {
                deadline: Deadline::Checkout,
                ..
            } | Self::Overloaded { .. }
                | Self::Unavailable { .. }
                | Self::Validation { .. }
                | Self::Configuration { .. }
        )
    }

    /// Whether this is a refusal that says "not now" — a full queue, no
    /// worker free in time, an open circuit, a pool that is failed or
    /// shutting down. Refusals are returned at once with their
    /// [`Error::suggested_delay`] and never retried inside DSPex: retrying
    /// them would multiply the load that caused them.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::Overloaded { .. }
                | Self::Unavailable { .. }
                | Self::Timeout {
                    deadline: Deadline::Checkout,
                    ..
                }
        )
    }

    /// Whether the execute path's retry layer may try the call again: a
    /// failure of the machinery (not a refusal, not the caller's fault, not
    /// the deadline, which is spent), and either the request never ran or
    /// the call is idempotent.
    pub fn may_retry(&self, idempotent: bool) -> bool {
        let deadline_spent = matches!(
            self,
            Self::Timeout {
                deadline: Deadline::Request,
                ..
            }
        );
        self.is_retryable()
            && !self.is_refusal()
            && !deadline_spent
            && (idempotent || self.never_ran())
    }

    /// Whether this failure says the machinery is broken, so it counts
    /// toward the circuit breaker: a worker that crashed or broke the wire
    /// protocol. A structured error reply (even a `ProtocolError` about an
    /// oversized result), a slow LM, a refusal or a bad input never counts.
    pub fn indicates_broken_worker(&self) -> bool {
        matches!(self, Self::WorkerCrashed { .. } | Self::Protocol { .. })
    }

    /// How long to wait before trying again, if trying again makes sense.
    pub fn suggested_delay(&self) -> Option<Duration> {
        match self {
            Self::Overloaded { retry_after, .. } => Some(*retry_after),
            Self::Unavailable { retry_after, .. } => *retry_after,
            _ if !self.is_retryable() => None,
            // A replacement worker needs about one boot.
            Self::WorkerCrashed { .. } | Self::Protocol { .. } => Some(Duration::from_millis(250)),
            Self::Timeout {
                deadline: Deadline::Request,
                ..
            } => Some(Duration::from_millis(250)),
            Self::Timeout { .. } => Some(Duration::from_millis(100)),
            _ => Some(Duration::from_secs(1)),
        }
    }

    /// The handle is shutting down.
    pub(crate) fn shutting_down() -> Self {
        Self::Unavailable {
            cause: "DSPex is shutting down".into(),
            retry_after: None,
        }
    }
}

/// How long a caller refused by a full queue should wait.
pub(crate) const OVERLOADED_RETRY_AFTER: Duration = Duration::from_millis(100);

/// How long a replacement worker takes, about: the delay suggested after a
/// worker was found gone.
const REPLACEMENT: Duration = Duration::from_millis(250);

impl From<ValidationError> for Error {
    fn from(error: ValidationError) -> Self {
        let what = match &error {
            ValidationError::Missing { role, .. }
            | ValidationError::WrongType { role, .. }
            | ValidationError::OutOfRange { role, .. } => match role {
                FieldRole::Input => "input",
                FieldRole::Output => "output",
            },
            ValidationError::UnknownInput { .. } | ValidationError::Encode { .. } => "input",
            _ => "output",
        };
        Self::Validation {
            what,
            field: error.field().map(str::to_owned),
            message: error.to_string(),
        }
    }
}

impl From<SignatureError> for Error {
    fn from(error: SignatureError) -> Self {
        Self::validation("signature", None, error.to_string())
    }
}

impl From<WorkerError> for Error {
    fn from(error: WorkerError) -> Self {
        match error {
            WorkerError::Remote(remote) => match remote.kind {
                ErrorKind::InvalidArguments | ErrorKind::SignatureError => {
                    let field = remote
                        .details
                        .as_ref()
                        .and_then(|d| d.get("field"))
                        .and_then(|f| f.as_str())
                        .map(str::to_owned);
                    let what = match (remote.kind, field.as_deref()) {
                        (ErrorKind::SignatureError, _) => "signature",
                        (_, Some("module" | "module_args")) => "module",
                        (_, Some("demos")) => "demo",
                        _ => "input",
                    };
                    Self::Validation {
                        what,
                        field,
                        message: remote.message,
                    }
                }
                ErrorKind::Cancelled => Self::Cancelled,
                ErrorKind::BudgetExceeded => Self::BudgetExceeded {
                    message: remote.message,
                },
                ErrorKind::ToolError => Self::Tool {
                    tool: remote
                        .details
                        .as_ref()
                        .and_then(|d| d.get("tool"))
                        .and_then(|t| t.as_str())
                        .unwrap_or("?")
                        .to_owned(),
                    message: remote.message,
                },
                ErrorKind::ProgramNotFound => Self::validation("program", None, remote.message),
                ErrorKind::LmError => Self::Lm {
                    message: remote.message,
                    configured: true,
                },
                ErrorKind::LmNotConfigured => Self::Lm {
                    message: remote.message,
                    configured: false,
                },
                ErrorKind::DeadlineExceeded => Self::Timeout {
                    deadline: Deadline::Request,
                    after: remote
                        .details
                        .as_ref()
                        .and_then(|d| d.get("deadline_ms"))
                        .and_then(serde_json::Value::as_u64)
                        .map_or(Duration::ZERO, Duration::from_millis),
                },
                // A structured `ProtocolError` reply (a result too large to
                // send, say) comes from a worker that stays in step: it is
                // Python's answer, not a broken stream.
                kind => Self::Python {
                    kind,
                    message: remote.message,
                    traceback: remote.traceback,
                },
            },
            WorkerError::RequestTimeout { after, .. } => Self::Timeout {
                deadline: Deadline::Request,
                after,
            },
            WorkerError::WorkerExited {
                pid,
                exit,
                stderr_tail,
                ..
            } => Self::WorkerCrashed {
                pid,
                exit,
                stderr_tail,
            },
            WorkerError::Killed { reason, .. } => Self::WorkerCrashed {
                pid: 0,
                exit: Exit::Signal(9),
                stderr_tail: reason,
            },
            WorkerError::Protocol { error, .. } => Self::Protocol {
                message: error.to_string(),
            },
            WorkerError::Refused(error) => Self::validation("request", None, error.to_string()),
            other => Self::Unavailable {
                cause: other.to_string(),
                retry_after: Some(REPLACEMENT),
            },
        }
    }
}

impl From<PoolError> for Error {
    fn from(error: PoolError) -> Self {
        match error {
            PoolError::Worker(error) => error.into(),
            PoolError::CheckoutTimeout(after) => Self::Timeout {
                deadline: Deadline::Checkout,
                after,
            },
            PoolError::Overloaded { .. } => Self::Overloaded {
                message: error.to_string(),
                retry_after: OVERLOADED_RETRY_AFTER,
            },
            PoolError::Unavailable { cause, retry_in } => Self::Unavailable {
                cause,
                retry_after: retry_in,
            },
            PoolError::SessionLost { session_id } => Self::SessionLost { session_id },
            PoolError::ShuttingDown => Self::shutting_down(),
            PoolError::Environment(error) => Self::configuration(error.to_string()),
            other => Self::Unavailable {
                cause: other.to_string(),
                retry_after: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dspex_protocol::RemoteError;

    #[test]
    fn categories_and_retry_verdicts() {
        let crash: Error = WorkerError::WorkerExited {
            worker_id: "w".into(),
            pid: 1,
            exit: Exit::Signal(9),
            stderr_tail: "Traceback\nKeyError: x\n".into(),
        }
        .into();
        assert_eq!(crash.category(), Category::WorkerCrashed);
        assert!(crash.is_retryable());
        assert!(!crash.never_ran());
        assert!(crash.to_string().contains("KeyError: x"), "{crash}");

        let invalid: Error = WorkerError::Remote(RemoteError {
            kind: ErrorKind::InvalidArguments,
            message: "missing input `question`".into(),
            traceback: None,
            details: Some(serde_json::json!({"field": "question"})),
        })
        .into();
        assert_eq!(invalid.category(), Category::Validation);
        assert!(!invalid.is_retryable());
        assert!(matches!(invalid, Error::Validation { field: Some(ref f), .. } if f == "question"));

        let queued: Error = PoolError::CheckoutTimeout(Duration::from_millis(5)).into();
        assert!(queued.is_retryable() && queued.never_ran() && queued.is_refusal());
        assert!(
            !queued.may_retry(true),
            "a refusal is returned, not retried"
        );
        assert_eq!(queued.suggested_delay(), Some(Duration::from_millis(100)));

        let failed: Error = PoolError::Unavailable {
            cause: "gave up".into(),
            retry_in: None,
        }
        .into();
        assert!(!failed.is_retryable());
        assert_eq!(failed.suggested_delay(), None);
        let reviving: Error = PoolError::Unavailable {
            cause: "gave up".into(),
            retry_in: Some(Duration::from_secs(3)),
        }
        .into();
        assert!(reviving.is_retryable() && reviving.is_refusal());
        assert_eq!(reviving.suggested_delay(), Some(Duration::from_secs(3)));

        assert!(crash.may_retry(true) && !crash.may_retry(false));
        assert!(crash.indicates_broken_worker());
        let oversized: Error = WorkerError::Remote(RemoteError::new(
            ErrorKind::ProtocolError,
            "reply of 70000000 bytes exceeds max frame",
        ))
        .into();
        assert_eq!(oversized.category(), Category::Python);
        assert!(
            !oversized.indicates_broken_worker(),
            "the worker is healthy"
        );
        let slow: Error = WorkerError::RequestTimeout {
            worker_id: "w".into(),
            after: Duration::from_millis(150),
        }
        .into();
        assert!(!slow.indicates_broken_worker() && !slow.may_retry(true));

        let unconfigured: Error =
            WorkerError::Remote(RemoteError::new(ErrorKind::LmNotConfigured, "no LM")).into();
        assert_eq!(unconfigured.category(), Category::Lm);
        assert!(!unconfigured.is_retryable());
    }
}
