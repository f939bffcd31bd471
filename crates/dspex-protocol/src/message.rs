//! The typed messages: requests, responses, the handshake and the argument
//! shapes of the built-in commands.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, ProtocolError, RemoteError, Secret};

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
    /// Whether the worker may send event frames for this request (Protocol 2).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub events: bool,
    /// Whether the worker sends the Python log records the request
    /// produces as `log` events (a Protocol 2 extension, feature `logs`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub logs: bool,
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
            events: false,
            logs: false,
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
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&ready.protocol) {
            return Err(ProtocolError::Shape(format!(
                "worker speaks protocol {}, this host speaks {MIN_PROTOCOL_VERSION} to \
                 {PROTOCOL_VERSION}",
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
    /// The Protocol 2 features the worker implements (`deadline`, `cancel`,
    /// ...); empty for a protocol 1 worker.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

impl Ready {
    /// Whether the worker implements a Protocol 2 feature.
    pub fn has_feature(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }
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
    /// Registers an LM under an id (`configure_lm` with `lm_id`), for
    /// requests that name it instead of carrying its configuration.
    RegisterLm {
        /// The id requests name it by.
        lm_id: String,
        /// The LM.
        config: LmConfig,
    },
    /// Builds and caches a program.
    CreateProgram(ProgramDefinition),
    /// Runs a program on inputs.
    ExecuteProgram(ExecuteArgs),
    /// Runs a program on many inputs at once, with DSPy's own parallelism.
    ExecuteBatch(BatchArgs),
    /// Scores a program on a devset with a metric.
    Evaluate(EvaluateArgs),
    /// Compiles a program with one of DSPy's optimizers.
    Optimize(OptimizeArgs),
    /// A program's state as DSPy dumps it.
    GetProgramState(ProgramStateArgs),
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
    /// Ends request `request_id` at once (Protocol 2, feature `cancel`).
    Cancel {
        /// The request to cancel.
        request_id: RequestId,
    },
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
            Self::ConfigureLm(_) | Self::RegisterLm { .. } => "configure_lm",
            Self::CreateProgram(_) => "create_program",
            Self::ExecuteProgram(_) => "execute_program",
            Self::ExecuteBatch(_) => "execute_batch",
            Self::Evaluate(_) => "evaluate",
            Self::Optimize(_) => "optimize",
            Self::GetProgramState(_) => "get_program_state",
            Self::ListPrograms => "list_programs",
            Self::GetProgramInfo { .. } => "get_program_info",
            Self::DeleteProgram { .. } => "delete_program",
            Self::GetStats => "get_stats",
            Self::ResetState => "reset_state",
            Self::Shutdown => "shutdown",
            Self::Cancel { .. } => "cancel",
            Self::Custom { name, .. } => name,
        }
    }

    /// Checks the command can be sent: its name is 1 to
    /// [`MAX_COMMAND_NAME`] ASCII letters, digits or `_`, starting with a
    /// letter or `_`, and its arguments are a map.
    ///
    /// # Errors
    /// [`ProtocolError::InvalidCommand`] naming what is wrong.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let name = self.name();
        let well_formed = !name.is_empty()
            && name.len() <= MAX_COMMAND_NAME
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit();
        if !well_formed {
            return Err(ProtocolError::InvalidCommand(format!(
                "command name {name:?} must be 1-{MAX_COMMAND_NAME} ASCII letters, digits or '_', \
                 not starting with a digit"
            )));
        }
        if let Self::Custom { args, .. } = self
            && !args.is_object()
        {
            return Err(ProtocolError::InvalidCommand(format!(
                "the arguments of {name:?} must be a map"
            )));
        }
        Ok(())
    }

    /// The command's name and its arguments, as the request carries them.
    pub fn into_parts(self) -> (String, Value) {
        let name = self.name().to_owned();
        let args = match self {
            Self::ConfigureLm(config) => to_map(&config),
            Self::RegisterLm { lm_id, config } => {
                let mut args = to_map(&config);
                if let Value::Object(map) = &mut args {
                    map.insert("lm_id".into(), Value::String(lm_id));
                }
                args
            }
            Self::CreateProgram(program) => to_map(&program),
            Self::ExecuteProgram(args) => to_map(&args),
            Self::ExecuteBatch(args) => to_map(&args),
            Self::Evaluate(args) => to_map(&args),
            Self::Optimize(args) => to_map(&args),
            Self::GetProgramState(args) => to_map(&args),
            Self::GetProgramInfo { program_id } | Self::DeleteProgram { program_id } => {
                serde_json::json!({ "program_id": program_id })
            }
            Self::Cancel { request_id } => serde_json::json!({ "request_id": request_id }),
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

/// The longest command name [`Command::validate`] accepts.
pub const MAX_COMMAND_NAME: usize = 64;

/// Serialises argument structs, which are plain data and always serialise.
fn to_map<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or_else(|_| Value::Object(Map::new()))
}

/// LM settings, as `configure_lm` takes them. Extra keys pass through to
/// `dspy.LM` unchanged.
///
/// `Debug` redacts the API key and every extra key that names a secret
/// ([`crate::is_secret_key`]).
#[derive(Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LmConfig {
    /// A litellm model string (`openai/gpt-4o-mini`) or `dummy` for the offline LM.
    pub model: String,
    /// The provider's API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<Secret>,
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

    /// An id naming this exact configuration: the SHA-256 (hex, 16 bytes
    /// kept) of its canonical JSON. The secret goes into the digest, never
    /// out of it.
    pub fn id(&self) -> String {
        use sha2::{Digest, Sha256};
        let value = serde_json::to_value(self).unwrap_or(Value::Null);
        let digest = Sha256::digest(crate::canonical_json(&value).as_bytes());
        let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        format!("lm-{hex}")
    }
}

impl std::fmt::Debug for LmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        struct Extra<'a>(&'a Map<String, Value>);
        impl std::fmt::Debug for Extra<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let mut map = f.debug_map();
                for (key, value) in self.0 {
                    if crate::is_secret_key(key) {
                        map.entry(key, &crate::secret::REDACTED);
                    } else {
                        map.entry(key, value);
                    }
                }
                map.finish()
            }
        }
        f.debug_struct("LmConfig")
            .field("model", &self.model)
            .field("api_key", &self.api_key)
            .field("api_base", &self.api_base)
            .field("temperature", &self.temperature)
            .field("max_tokens", &self.max_tokens)
            .field("extra", &Extra(&self.extra))
            .finish()
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
/// carries when the worker may lack it. [`ProgramDefinition::hash`] names
/// this exact version on both sides.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ProgramDefinition {
    /// The program's id.
    pub program_id: String,
    /// Its signature.
    pub signature: SignatureSpec,
    /// `predict`, `chain_of_thought`, `react`, `best_of_n`, `refine`,
    /// `multi_chain_comparison`, `python`.
    pub module: String,
    /// Few-shot examples (maps of field values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub demos: Vec<Value>,
    /// The module's own arguments (a ReAct's tools and `max_iters`, a
    /// reward function's name, a Python module's path, ...).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub module_args: Map<String, Value>,
    /// The compiled state: DSPy's `dump_state()` of the module (its
    /// predictors' demos, instructions and signatures), loaded after the
    /// module is built. It carries the demos when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Value>,
}

impl ProgramDefinition {
    /// The program hash, as the worker computes it (see [`crate::program_hash`]).
    pub fn hash(&self) -> String {
        crate::program_hash(self)
    }
}

/// The arguments of `execute_program`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
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
    /// An LM the worker registered under this id ([`Command::RegisterLm`]),
    /// for this request only; instead of `lm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lm_id: Option<String>,
    /// Stream the output fields as `chunk` events (the request must carry
    /// `events`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    /// Return the LM calls' prompts and completions (`lm_history`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lm_history: bool,
}

/// The arguments of `execute_batch`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BatchArgs {
    /// The program to run.
    pub program_id: String,
    /// One map of input values per run.
    pub inputs: Vec<Map<String, Value>>,
    /// The full definition, for a worker that may not have it yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<ProgramDefinition>,
    /// An LM the worker registered under this id, for this batch only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lm_id: Option<String>,
    /// Threads DSPy runs the batch on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_threads: Option<u32>,
}

/// One example of a dataset: the inputs a program is given and the labels
/// (expected output values) a metric compares with.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Example {
    /// Input field values.
    pub inputs: Map<String, Value>,
    /// Expected output field values.
    #[serde(default)]
    pub labels: Map<String, Value>,
}

/// How examples are scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MetricSpec {
    /// A metric on the host, reached by the callback `callback` with
    /// batches of up to `batch` items.
    Callback {
        /// The callback's name.
        callback: String,
        /// The most items in one callback.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        batch: Option<u32>,
        /// The metric answers textual feedback too (GEPA uses it).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        feedback: bool,
    },
    /// One of DSPy's metrics, run in the worker: `exact_match` and `f1`
    /// (on `field`), `answer_exact_match`, `answer_passage_match`.
    Builtin {
        /// Its name.
        builtin: String,
        /// The output field it compares.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        field: Option<String>,
    },
}

/// The arguments of `evaluate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluateArgs {
    /// The program to score.
    pub program_id: String,
    /// The full definition, for a worker that may not have it yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<ProgramDefinition>,
    /// An LM the worker registered under this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lm_id: Option<String>,
    /// The examples.
    pub devset: Vec<Example>,
    /// The metric.
    pub metric: MetricSpec,
    /// Threads DSPy evaluates on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_threads: Option<u32>,
}

/// The budget of an optimization job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Budget {
    /// The most metric calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_metric_calls: Option<u64>,
    /// The most LM calls (the reflection LM's included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lm_calls: Option<u64>,
}

/// The arguments of `optimize`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimizeArgs {
    /// The program to compile.
    pub program_id: String,
    /// Its full definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<ProgramDefinition>,
    /// An LM the worker registered under this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lm_id: Option<String>,
    /// `bootstrap_few_shot`, `bootstrap_few_shot_with_random_search`,
    /// `mipro_v2`, `gepa`, `copro` or `simba`.
    pub optimizer: String,
    /// The optimizer's own options.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub options: Map<String, Value>,
    /// The training examples.
    pub trainset: Vec<Example>,
    /// The validation examples, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valset: Option<Vec<Example>>,
    /// The metric.
    pub metric: MetricSpec,
    /// Threads the optimizer evaluates on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_threads: Option<u32>,
    /// Limits of metric and LM calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// The LM GEPA reflects with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reflection_lm: Option<LmConfig>,
    /// A seed for the optimizer's sampling (below 2^32, as optuna's
    /// samplers need).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u32>,
}

/// The arguments of `get_program_state`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ProgramStateArgs {
    /// The program.
    pub program_id: String,
    /// Its full definition, for a worker that may not have it yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<ProgramDefinition>,
}
