//! The typed messages: requests, responses, the handshake and the argument
//! shapes of the built-in commands.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::{PROTOCOL_VERSION, ProtocolError, RemoteError};

/// A request id. Id 0 is reserved for the handshake and for replies to frames
/// that had no usable id.
pub type RequestId = u64;

/// A request frame: `{"id", "command", "args", "session_id"?, "deadline_ms"?}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Correlates the reply; never 0.
    pub id: RequestId,
    /// The command name (`ping`, `execute_program`, ...).
    pub command: String,
    /// The command's arguments, a map.
    #[serde(default = "empty_map")]
    pub args: Value,
    /// The session the request belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Milliseconds the caller will wait; the worker may abandon work past it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
}

fn empty_map() -> Value {
    Value::Object(Map::new())
}

impl Request {
    /// A request for a typed [`Command`].
    pub fn new(id: RequestId, command: Command) -> Self {
        let (command, args) = command.into_parts();
        Self {
            id,
            command,
            args,
            session_id: None,
            deadline_ms: None,
        }
    }

    /// Sets the session id.
    #[must_use]
    pub fn with_session(mut self, session_id: impl Into<String>) -> Self {
        self.session_id = Some(session_id.into());
        self
    }

    /// Sets the deadline the worker is told about.
    #[must_use]
    pub fn with_deadline_ms(mut self, deadline_ms: u64) -> Self {
        self.deadline_ms = Some(deadline_ms);
        self
    }
}

/// A reply frame: `{"id", "ok": true, "result"}` or `{"id", "ok": false, "error"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The id of the request this answers (0 for the handshake and for
    /// replies to undecodable requests).
    pub id: RequestId,
    /// The result, or the worker's structured error.
    pub outcome: Result<Value, RemoteError>,
}

impl Response {
    /// A success reply.
    pub fn ok(id: RequestId, result: Value) -> Self {
        Self {
            id,
            outcome: Ok(result),
        }
    }

    /// A failure reply.
    pub fn error(id: RequestId, error: RemoteError) -> Self {
        Self {
            id,
            outcome: Err(error),
        }
    }

    /// Reads this frame as the ready handshake.
    ///
    /// # Errors
    /// [`ProtocolError::Shape`] if it is not a successful id-0 frame whose
    /// result is a `ready` event, or if it announces another protocol version.
    pub fn into_ready(self) -> Result<Ready, ProtocolError> {
        if self.id != 0 {
            return Err(ProtocolError::Shape(format!(
                "expected the ready handshake (id 0), got a reply with id {}",
                self.id
            )));
        }
        let result = self.outcome.map_err(|error| {
            ProtocolError::Shape(format!(
                "worker answered the handshake with an error: {error}"
            ))
        })?;
        let ready: Ready = serde_json::from_value(result)
            .map_err(|error| ProtocolError::Shape(format!("bad ready handshake: {error}")))?;
        if ready.event != "ready" {
            return Err(ProtocolError::Shape(format!(
                "expected the `ready` event, got `{}`",
                ready.event
            )));
        }
        if ready.protocol != PROTOCOL_VERSION {
            return Err(ProtocolError::Shape(format!(
                "worker speaks protocol {}, this host speaks {PROTOCOL_VERSION}",
                ready.protocol
            )));
        }
        Ok(ready)
    }
}

/// The wire form of [`Response`].
#[derive(Serialize, Deserialize)]
struct WireResponse {
    id: RequestId,
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<RemoteError>,
}

impl Serialize for Response {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (ok, result, error) = match &self.outcome {
            Ok(result) => (true, Some(result.clone()), None),
            Err(error) => (false, None, Some(error.clone())),
        };
        WireResponse {
            id: self.id,
            ok,
            result,
            error,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Response {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = WireResponse::deserialize(deserializer)?;
        let outcome = match (wire.ok, wire.result, wire.error) {
            // A success whose result is nil decodes as a missing result.
            (true, result, None) => Ok(result.unwrap_or(Value::Null)),
            (false, _, Some(error)) => Err(error),
            (true, _, Some(_)) => {
                return Err(serde::de::Error::custom(
                    "a reply with `ok: true` must not carry an `error`",
                ));
            }
            (false, _, None) => {
                return Err(serde::de::Error::custom(
                    "a reply with `ok: false` must carry an `error`",
                ));
            }
        };
        Ok(Self {
            id: wire.id,
            outcome,
        })
    }
}

/// The worker's first frame (the `result` of an id-0 reply).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// Always `"ready"`.
    pub event: String,
    /// The protocol version the worker speaks.
    pub protocol: u32,
    /// The worker id it was started with, if any.
    #[serde(default)]
    pub worker_id: Option<String>,
    /// The worker's OS process id.
    pub pid: u32,
    /// The Python version, e.g. `3.11.7`.
    pub python: String,
    /// The installed DSPy version, or `None` when DSPy is not installed.
    #[serde(default)]
    pub dspy: Option<String>,
}

/// The built-in commands with typed arguments.
///
/// [`Command::Custom`] reaches any other command (for example the test-only
/// fault commands) with arguments given as a map.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Command {
    /// Liveness and counters.
    Ping,
    /// Sets the worker's LM.
    ConfigureLm(LmConfig),
    /// Builds and caches a program.
    CreateProgram(ProgramDefinition),
    /// Runs a program on inputs.
    ExecuteProgram(ExecuteArgs),
    /// Lists cached programs.
    ListPrograms,
    /// Describes one program.
    GetProgramInfo {
        /// The program id.
        program_id: String,
    },
    /// Drops one program.
    DeleteProgram {
        /// The program id.
        program_id: String,
    },
    /// Counters, memory and uptime.
    GetStats,
    /// Clears programs and counters.
    ResetState,
    /// Replies, then exits 0.
    Shutdown,
    /// Any other command.
    Custom {
        /// The command name.
        name: String,
        /// Its arguments (a map).
        args: Value,
    },
}

impl Command {
    /// A command by name with arguments.
    pub fn custom(name: impl Into<String>, args: Value) -> Self {
        Self::Custom {
            name: name.into(),
            args,
        }
    }

    /// The command name on the wire.
    pub fn name(&self) -> &str {
        match self {
            Self::Ping => "ping",
            Self::ConfigureLm(_) => "configure_lm",
            Self::CreateProgram(_) => "create_program",
            Self::ExecuteProgram(_) => "execute_program",
            Self::ListPrograms => "list_programs",
            Self::GetProgramInfo { .. } => "get_program_info",
            Self::DeleteProgram { .. } => "delete_program",
            Self::GetStats => "get_stats",
            Self::ResetState => "reset_state",
            Self::Shutdown => "shutdown",
            Self::Custom { name, .. } => name,
        }
    }

    fn into_parts(self) -> (String, Value) {
        let name = self.name().to_owned();
        let args = match self {
            Self::ConfigureLm(config) => to_map(&config),
            Self::CreateProgram(program) => to_map(&program),
            Self::ExecuteProgram(args) => to_map(&args),
            Self::GetProgramInfo { program_id } | Self::DeleteProgram { program_id } => {
                serde_json::json!({ "program_id": program_id })
            }
            Self::Custom { args, .. } => args,
            Self::Ping
            | Self::ListPrograms
            | Self::GetStats
            | Self::ResetState
            | Self::Shutdown => Value::Object(Map::new()),
        };
        (name, args)
    }
}

/// Serialises argument structs, which are plain data and always serialise.
fn to_map<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or_else(|_| Value::Object(Map::new()))
}

/// LM settings, as `configure_lm` takes them. Extra keys pass through to
/// `dspy.LM` unchanged.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LmConfig {
    /// A litellm model string (`openai/gpt-4o-mini`) or `dummy` for the offline LM.
    pub model: String,
    /// The provider's API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// The provider's base URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_base: Option<String>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Token limit of one answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Any other `dspy.LM` keyword (for `dummy`: `latency_ms`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl LmConfig {
    /// The offline, deterministic `dummy` LM.
    pub fn dummy() -> Self {
        Self {
            model: "dummy".to_owned(),
            ..Self::default()
        }
    }
}

/// A field of a signature: `{"name", "type", "description"?, "optional"?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldSpec {
    /// An identifier that is not a Python keyword.
    pub name: String,
    /// `str`, `int`, `float`, `bool`, `list[T]`, `dict[str, T]`, `optional[T]`, `literal[a|b]`.
    #[serde(rename = "type")]
    pub ty: String,
    /// What the field means (shown to the LM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Whether an input may be omitted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

impl FieldSpec {
    /// A required field.
    pub fn new(name: impl Into<String>, ty: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ty: ty.into(),
            description: None,
            optional: false,
        }
    }
}

/// A signature definition: `{"name", "instructions", "inputs", "outputs"}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SignatureSpec {
    /// The signature's name.
    #[serde(default)]
    pub name: String,
    /// Instructions given to the LM.
    #[serde(default)]
    pub instructions: String,
    /// Input fields, in order.
    pub inputs: Vec<FieldSpec>,
    /// Output fields, in order.
    pub outputs: Vec<FieldSpec>,
}

/// A whole program: what `create_program` takes and what `execute_program`
/// carries when the worker may lack it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgramDefinition {
    /// The program's id.
    pub program_id: String,
    /// Its signature.
    pub signature: SignatureSpec,
    /// `predict`, `chain_of_thought`, ...
    pub module: String,
    /// Few-shot examples (maps of field values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub demos: Vec<Value>,
}

/// The arguments of `execute_program`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecuteArgs {
    /// The program to run.
    pub program_id: String,
    /// Input values by field name.
    pub inputs: Map<String, Value>,
    /// The full definition, for a worker that may not have it yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<ProgramDefinition>,
    /// An LM for this request only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lm: Option<LmConfig>,
}
