//! Errors: what can go wrong on the stream ([`ProtocolError`]) and what a
//! worker reports about a request it could not serve ([`RemoteError`]).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A stream-level failure: the bytes on the pipe do not follow the contract.
///
/// Apart from [`ProtocolError::PayloadTooLarge`], [`ProtocolError::Encode`]
/// and [`ProtocolError::InvalidCommand`], which are detected before anything
/// is written,
/// every variant means the stream can no longer be trusted and its worker must
/// be replaced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// An incoming header announced a body longer than the configured maximum.
    /// Nothing was allocated for it.
    #[error("incoming frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The length the header claimed.
        len: u64,
        /// The configured maximum.
        max: usize,
    },
    /// An outgoing message encodes to more than the configured maximum; nothing
    /// was written.
    #[error("outgoing message of {len} bytes exceeds the maximum frame of {max} bytes")]
    PayloadTooLarge {
        /// The encoded body length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame: {have} of {need} bytes received")]
    Truncated {
        /// Bytes received for the unfinished frame (header included).
        have: usize,
        /// Bytes that frame needs (header included; 4 when the header itself is cut).
        need: usize,
    },
    /// The body is not MessagePack, or not of the expected shape (missing
    /// field, wrong type).
    #[error("undecodable frame body: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// The body decoded but left bytes over: a second value or garbage.
    #[error("frame body has {0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// The body is well-formed MessagePack of the right shape but breaks a
    /// rule of the contract (for example `ok: false` without an `error`).
    #[error("malformed message: {0}")]
    Shape(String),
    /// A message could not be encoded.
    #[error("could not encode message: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    /// Reading or writing the pipe failed.
    #[error("i/o error on the protocol stream: {0}")]
    Io(#[from] std::io::Error),
    /// A command that must not be sent (an empty or malformed name,
    /// arguments that are not a map); nothing was written.
    #[error("invalid command: {0}")]
    InvalidCommand(String),
}

/// The stable error words of the contract, matched on by the Rust side.
///
/// A word this version does not know is kept as [`ErrorKind::Other`], so a
/// newer worker never breaks an older host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The command name is not one the worker serves.
    UnknownCommand,
    /// The arguments are missing, unknown or of the wrong type.
    InvalidArguments,
    /// The program id is not loaded on that worker.
    ProgramNotFound,
    /// The signature definition is invalid (bad type, bad field name, ...).
    SignatureError,
    /// No LM is configured and the request carried no override.
    LmNotConfigured,
    /// The LM failed, or its answer could not be converted to the declared types.
    LmError,
    /// The request's deadline passed before the work finished.
    DeadlineExceeded,
    /// A Python exception escaped a handler (class name in `details.exception`).
    PythonException,
    /// The request frame itself could not be decoded.
    ProtocolError,
    /// The request was cancelled (by the host's `cancel` command) before it
    /// finished; or, answering a callback, the request's caller is gone.
    Cancelled,
    /// A host-side handler (a tool) failed, panicked or timed out (`details`
    /// name it).
    ToolError,
    /// The user's own Python module could not be imported or constructed
    /// (`details.path`, `details.stage`; the traceback is set).
    ModuleImportError,
    /// An optimization job used up its budget of metric or LM calls
    /// (`details.budget`, `details.limit`, `details.used`).
    BudgetExceeded,
    /// A word this version of the protocol does not know.
    Other(String),
}

impl ErrorKind {
    /// The word on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Self::UnknownCommand => "UnknownCommand",
            Self::InvalidArguments => "InvalidArguments",
            Self::ProgramNotFound => "ProgramNotFound",
            Self::SignatureError => "SignatureError",
            Self::LmNotConfigured => "LmNotConfigured",
            Self::LmError => "LmError",
            Self::DeadlineExceeded => "DeadlineExceeded",
            Self::PythonException => "PythonException",
            Self::ProtocolError => "ProtocolError",
            Self::Cancelled => "Cancelled",
            Self::ToolError => "ToolError",
            Self::ModuleImportError => "ModuleImportError",
            Self::BudgetExceeded => "BudgetExceeded",
            Self::Other(word) => word,
        }
    }

    /// Parses a word from the wire; unknown words become [`ErrorKind::Other`].
    pub fn from_word(word: &str) -> Self {
        match word {
            "UnknownCommand" => Self::UnknownCommand,
            "InvalidArguments" => Self::InvalidArguments,
            "ProgramNotFound" => Self::ProgramNotFound,
            "SignatureError" => Self::SignatureError,
            "LmNotConfigured" => Self::LmNotConfigured,
            "LmError" => Self::LmError,
            "DeadlineExceeded" => Self::DeadlineExceeded,
            "PythonException" => Self::PythonException,
            "ProtocolError" => Self::ProtocolError,
            "Cancelled" => Self::Cancelled,
            "ToolError" => Self::ToolError,
            "ModuleImportError" => Self::ModuleImportError,
            "BudgetExceeded" => Self::BudgetExceeded,
            other => Self::Other(other.to_owned()),
        }
    }

    /// `true` for the words the contract defines, `false` for [`ErrorKind::Other`].
    pub fn is_known(&self) -> bool {
        !matches!(self, Self::Other(_))
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let word = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Ok(Self::from_word(&word))
    }
}

/// A structured failure reply from the worker: the request was understood and
/// answered, and the worker keeps serving.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct RemoteError {
    /// The stable error word.
    pub kind: ErrorKind,
    /// A human-readable message (names the offending field where there is one).
    pub message: String,
    /// The Python traceback, when an exception was involved.
    #[serde(default)]
    pub traceback: Option<String>,
    /// Extra structured data (for `PythonException`: `{"exception": <class>}`).
    #[serde(default)]
    pub details: Option<serde_json::Value>,
}

impl RemoteError {
    /// A remote error with no traceback and no details.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            traceback: None,
            details: None,
        }
    }
}
