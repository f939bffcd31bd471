//! [`Error`]: the one error type of the public API, by category.
//!
//! Every failure a caller can meet is one variant with a [`Category`], a
//! [`Error::is_retryable`] verdict and a suggested delay, and a message a
//! person can act on. Lower layers' errors (pool, worker, protocol, Python)
//! are mapped here once, in [`From`] impls, so no caller matches on
//! internals.

use std::time::Duration;

use dspex_bridge::pool::PoolError;
use dspex_bridge::process::Exit;
use dspex_bridge::{BridgeError, WorkerError};
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
    /// Python raised an exception while serving the call.
    Python,
    /// The language model failed or is not configured.
    Lm,
    /// A stateful session lost its worker.
    Session,
    /// Nothing can serve the call (failed, disabled, shutting down, circuit open).
    Unavailable,
}

/// Which deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Deadline {
    /// Waiting for a free worker; the request was never sent.
    Checkout,
    /// The request itself; the worker was killed and replaced.
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
/// assert!(error.is_retryable() && error.never_ran());
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
    /// The wait queue is full.
    #[error("overloaded: {message}")]
    Overloaded {
        /// Details.
        message: String,
    },
    /// The worker died while serving the call.
    #[error("the worker crashed ({exit}){}", tail(.stderr_tail))]
    WorkerCrashed {
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
    /// The LM failed or is not configured.
    #[error("LM error: {message}")]
    Lm {
        /// The LM's message (a conversion failure names the field).
        message: String,
        /// Whether an LM is configured at all.
        configured: bool,
    },
    /// A stateful session lost its worker.
    #[error("session {session_id} was lost with its worker; start a new session")]
    SessionLost {
        /// The session.
        session_id: String,
    },
    /// Nothing can serve the call.
    #[error("unavailable: {cause}")]
    Unavailable {
        /// Why.
        cause: String,
        /// Whether waiting may help (a circuit that will half-open, a restart).
        transient: bool,
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
            Self::Lm { .. } => Category::Lm,
            Self::SessionLost { .. } => Category::Session,
            Self::Unavailable { .. } => Category::Unavailable,
        }
    }

    /// Whether trying again may succeed: the failure was in the machinery
    /// (a crash, a timeout, a full queue, a transient LM failure), not in the
    /// call itself.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Timeout { .. }
            | Self::Overloaded { .. }
            | Self::WorkerCrashed { .. }
            | Self::Protocol { .. } => true,
            Self::Lm { configured, .. } => *configured,
            Self::Unavailable { transient, .. } => *transient,
            Self::Configuration { .. }
            | Self::Validation { .. }
            | Self::Python { .. }
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

    /// How long to wait before retrying, if retrying makes sense.
    pub fn suggested_delay(&self) -> Option<Duration> {
        if !self.is_retryable() {
            return None;
        }
        Some(match self {
            // A replacement worker needs about one boot.
            Self::WorkerCrashed { .. } | Self::Protocol { .. } => Duration::from_millis(250),
            Self::Timeout {
                deadline: Deadline::Request,
                ..
            } => Duration::from_millis(250),
            Self::Timeout { .. } | Self::Overloaded { .. } => Duration::from_millis(100),
            Self::Lm { .. } => Duration::from_secs(1),
            _ => Duration::from_secs(1),
        })
    }
}

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
                ErrorKind::InvalidArguments | ErrorKind::SignatureError => Self::Validation {
                    what: if remote.kind == ErrorKind::SignatureError {
                        "signature"
                    } else {
                        "input"
                    },
                    field: remote
                        .details
                        .as_ref()
                        .and_then(|d| d.get("field"))
                        .and_then(|f| f.as_str())
                        .map(str::to_owned),
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
                    after: Duration::ZERO,
                },
                ErrorKind::ProtocolError => Self::Protocol {
                    message: remote.message,
                },
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
                exit, stderr_tail, ..
            } => Self::WorkerCrashed { exit, stderr_tail },
            WorkerError::Killed { reason, .. } => Self::WorkerCrashed {
                exit: Exit::Signal(9),
                stderr_tail: reason,
            },
            WorkerError::Protocol { error, .. } => Self::Protocol {
                message: error.to_string(),
            },
            WorkerError::Refused(error) => Self::validation("request", None, error.to_string()),
            WorkerError::Spawn(error) => Self::Unavailable {
                cause: error.to_string(),
                transient: true,
            },
            WorkerError::BootTimeout { .. } | WorkerError::Unavailable { .. } => {
                Self::Unavailable {
                    cause: error.to_string(),
                    transient: true,
                }
            }
            other => Self::Unavailable {
                cause: other.to_string(),
                transient: true,
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
            },
            PoolError::Unavailable { cause } => Self::Unavailable {
                cause,
                transient: false,
            },
            PoolError::SessionLost { session_id } => Self::SessionLost { session_id },
            PoolError::ProgramNotFound { program_id } => Self::validation(
                "program",
                None,
                format!("no program {program_id:?}; create it first"),
            ),
            PoolError::ShuttingDown => Self::Unavailable {
                cause: "DSPex is shutting down".into(),
                transient: false,
            },
            PoolError::Environment(error) => Self::configuration(error.to_string()),
            other => Self::Unavailable {
                cause: other.to_string(),
                transient: false,
            },
        }
    }
}

impl From<BridgeError> for Error {
    fn from(error: BridgeError) -> Self {
        match error {
            BridgeError::Worker(error) => error.into(),
            BridgeError::CheckoutTimeout(after) => Self::Timeout {
                deadline: Deadline::Checkout,
                after,
            },
            BridgeError::Unavailable { cause } => Self::Unavailable {
                cause,
                transient: false,
            },
            BridgeError::ShuttingDown => Self::Unavailable {
                cause: "DSPex is shutting down".into(),
                transient: false,
            },
            BridgeError::Environment(error) => Self::configuration(error.to_string()),
            other => Self::Unavailable {
                cause: other.to_string(),
                transient: false,
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
        assert!(queued.is_retryable() && queued.never_ran());
        assert_eq!(queued.suggested_delay(), Some(Duration::from_millis(100)));

        let failed: Error = PoolError::Unavailable {
            cause: "gave up".into(),
        }
        .into();
        assert!(!failed.is_retryable());
        assert_eq!(failed.suggested_delay(), None);

        let unconfigured: Error =
            WorkerError::Remote(RemoteError::new(ErrorKind::LmNotConfigured, "no LM")).into();
        assert_eq!(unconfigured.category(), Category::Lm);
        assert!(!unconfigured.is_retryable());
    }
}
