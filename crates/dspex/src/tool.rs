//! Tools and reward functions written in Rust, called back from a running
//! DSPy program (Protocol 2 callbacks).
//!
//! A [`Tool`] is a name, a description, the JSON Schema of its arguments
//! (derived from a Rust type with [`schemars`]) and an async handler that
//! receives those arguments typed. A ReAct program lists its tools; when the
//! LM picks one, the worker calls back, the worker actor runs the handler in
//! a task of its own, and the result (or the error) is what the LM observes.
//!
//! ```
//! use dspex::Tool;
//! use dspex::schemars::JsonSchema;
//! use serde::Deserialize;
//!
//! /// What the calculator takes.
//! #[derive(Deserialize, JsonSchema)]
//! #[schemars(crate = "dspex::schemars")]
//! struct Sum {
//!     /// The numbers to add.
//!     numbers: Vec<f64>,
//! }
//!
//! let sum = Tool::new("sum", "Adds numbers.", |args: Sum| async move {
//!     Ok::<_, std::convert::Infallible>(args.numbers.iter().sum::<f64>())
//! });
//! assert_eq!(sum.name(), "sum");
//! assert!(sum.args().contains_key("numbers"));
//! ```
//!
//! A handler's error, a panic, a timeout (30 s unless [`Tool::timeout`]
//! says otherwise) or arguments that do not fit the type all reach the LM
//! as a tool error, as DSPy reports one; none of them hurts the host or the
//! worker.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use dspex_bridge::Callbacks;
use dspex_protocol::{CallError, ErrorKind, Map, Value};
use futures::FutureExt;
use futures::future::BoxFuture;
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::error::{Error, Result};
use crate::module::is_identifier;

/// How long a tool may run unless [`Tool::timeout`] says otherwise.
pub const DEFAULT_TOOL_TIMEOUT: Duration = Duration::from_secs(30);

/// The callback name under which a program's reward function runs.
pub(crate) const REWARD: &str = "reward";

type ToolFn = dyn Fn(Value) -> BoxFuture<'static, std::result::Result<Value, String>> + Send + Sync;

/// A tool written in Rust that a DSPy program (ReAct) can call. Cheap to
/// clone. See the [module docs](self).
#[derive(Clone)]
pub struct Tool {
    name: String,
    description: String,
    /// Argument name → its JSON Schema (DSPy's `Tool.args`).
    args: Map<String, Value>,
    required: Vec<String>,
    /// Set when the argument type cannot describe a tool's arguments.
    problem: Option<String>,
    timeout: Duration,
    handler: Arc<ToolFn>,
}

impl fmt::Debug for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tool")
            .field("name", &self.name)
            .field("args", &self.args.keys().collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Tool {
    /// Tools are equal when they describe themselves the same way and run
    /// the same handler.
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.description == other.description
            && self.args == other.args
            && self.timeout == other.timeout
            && Arc::ptr_eq(&self.handler, &other.handler)
    }
}

impl Tool {
    /// A tool named `name` (letters, digits and `_`, not starting with a
    /// digit), described to the LM by `description`, whose arguments are
    /// the fields of `A` (a struct deriving `Deserialize` and
    /// [`JsonSchema`]; doc comments become the arguments' descriptions).
    /// `handler` gets them typed; what it returns is serialized for the LM,
    /// what it fails with is shown to the LM as the tool's error.
    pub fn new<A, R, E, F, Fut>(
        name: impl Into<String>,
        description: impl Into<String>,
        handler: F,
    ) -> Self
    where
        A: DeserializeOwned + JsonSchema + Send + 'static,
        R: Serialize + 'static,
        E: fmt::Display + 'static,
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<R, E>> + Send + 'static,
    {
        let name = name.into();
        let (args, required, problem) = describe_args::<A>();
        let tool_name = name.clone();
        let handler = Arc::new(move |args: Value| {
            let parsed = serde_json::from_value::<A>(args)
                .map_err(|error| format!("invalid arguments for `{tool_name}`: {error}"));
            let running = parsed.map(&handler);
            async move {
                let value = running?.await.map_err(|error| error.to_string())?;
                serde_json::to_value(value)
                    .map_err(|error| format!("the result could not be serialized: {error}"))
            }
            .boxed()
        });
        Self {
            name,
            description: description.into(),
            args,
            required,
            problem,
            timeout: DEFAULT_TOOL_TIMEOUT,
            handler,
        }
    }

    /// Bounds each run of the tool: past it the LM is told the tool timed
    /// out (the request's own deadline bounds it in any case).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its description.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Its arguments: each one's name and JSON Schema.
    pub fn args(&self) -> &Map<String, Value> {
        &self.args
    }

    /// The arguments that must be given.
    pub fn required(&self) -> &[String] {
        &self.required
    }

    /// How long one run may take.
    pub fn run_timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs the tool on `args` as the LM gave them. Every failure is a
    /// `ToolError` naming the tool.
    ///
    /// # Cancel safety
    /// Dropping the future stops the handler at its next await.
    pub async fn run(&self, args: Value) -> std::result::Result<Value, CallError> {
        let running = (self.handler)(args);
        match tokio::time::timeout(self.timeout, running).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(message)) => Err(tool_error(&self.name, message)),
            Err(_) => Err(tool_error(
                &self.name,
                format!(
                    "`{}` timed out after {} ms",
                    self.name,
                    self.timeout.as_millis()
                ),
            )),
        }
    }

    /// What a ReAct program is told about the tool.
    pub(crate) fn spec(&self) -> Value {
        json!({
            "name": self.name,
            "description": self.description,
            "args": {"type": "object", "properties": self.args, "required": self.required},
        })
    }

    /// Checks the tool can be offered to an LM.
    pub(crate) fn validate(&self) -> Result<()> {
        let bad =
            |message: String| Err(Error::validation("tool", Some(self.name.clone()), message));
        if !is_identifier(&self.name) || self.name.len() > 64 {
            return bad(format!(
                "tool name {:?} must be 1-64 letters, digits and '_', not starting with a digit",
                self.name
            ));
        }
        if self.name == "finish" {
            return bad("`finish` is ReAct's own tool; name yours otherwise".to_owned());
        }
        if let Some(problem) = &self.problem {
            return bad(problem.clone());
        }
        Ok(())
    }
}

/// The arguments' schemas by name, the required ones, and why `A` cannot
/// describe arguments, if it cannot.
fn describe_args<A: JsonSchema>() -> (Map<String, Value>, Vec<String>, Option<String>) {
    let generator = schemars::generate::SchemaSettings::draft2020_12()
        .with(|settings| settings.inline_subschemas = true)
        .into_generator();
    let schema = generator.into_root_schema_for::<A>().to_value();
    let is_object = schema.get("type").and_then(Value::as_str) == Some("object");
    let args = schema
        .get("properties")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let required = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|names| {
            names
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let problem = (!is_object).then(|| {
        format!(
            "the arguments must be a struct with named fields (a JSON object); `{}` is not",
            A::schema_name()
        )
    });
    (args, required, problem)
}

pub(crate) fn tool_error(name: &str, message: String) -> CallError {
    CallError {
        kind: ErrorKind::ToolError,
        message,
        details: Some(json!({ "tool": name })),
    }
}

type RewardFn = dyn Fn(&Map<String, Value>, &Map<String, Value>) -> f64 + Send + Sync;

/// A reward function for `best_of_n` and `refine`: scores a prediction
/// (its inputs and its outputs) with a number, higher is better. It runs on
/// the host, called back for each attempt; keep it quick (it runs on a
/// runtime thread).
///
/// ```
/// use dspex::Reward;
///
/// // Prefer one-word answers.
/// let one_word = Reward::new(|_inputs, outputs| {
///     let answer = outputs.get("answer").and_then(|a| a.as_str()).unwrap_or("");
///     if answer.split_whitespace().count() == 1 { 1.0 } else { 0.0 }
/// });
/// # let _ = one_word;
/// ```
#[derive(Clone)]
pub struct Reward(Arc<RewardFn>);

impl fmt::Debug for Reward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Reward(..)")
    }
}

impl PartialEq for Reward {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Reward {
    /// A reward computed by `score(inputs, outputs)`.
    pub fn new(
        score: impl Fn(&Map<String, Value>, &Map<String, Value>) -> f64 + Send + Sync + 'static,
    ) -> Self {
        Self(Arc::new(score))
    }

    /// Scores a prediction.
    pub fn score(&self, inputs: &Map<String, Value>, outputs: &Map<String, Value>) -> f64 {
        (self.0)(inputs, outputs)
    }

    fn call(&self, args: &Value) -> std::result::Result<Value, CallError> {
        let map = |key: &str| {
            args.get(key)
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default()
        };
        let score = self.score(&map("inputs"), &map("outputs"));
        if score.is_finite() {
            Ok(json!(score))
        } else {
            Err(tool_error(
                REWARD,
                format!("the reward function returned {score}, not a finite number"),
            ))
        }
    }
}

/// The handlers of one program's callbacks: its tools and its reward.
#[derive(Debug, Default)]
pub(crate) struct Handlers {
    tools: HashMap<String, Tool>,
    reward: Option<Reward>,
}

impl Handlers {
    pub(crate) fn new(tools: &[Tool], reward: Option<&Reward>) -> Self {
        Self {
            tools: tools.iter().map(|t| (t.name.clone(), t.clone())).collect(),
            reward: reward.cloned(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.tools.is_empty() && self.reward.is_none()
    }

    pub(crate) fn tools(&self) -> impl Iterator<Item = &Tool> {
        self.tools.values()
    }
}

impl Callbacks for Handlers {
    fn call(
        &self,
        name: &str,
        args: Value,
    ) -> BoxFuture<'static, std::result::Result<Value, CallError>> {
        if name == REWARD
            && let Some(reward) = &self.reward
        {
            let outcome = reward.call(&args);
            return async move { outcome }.boxed();
        }
        match self.tools.get(name) {
            Some(tool) => {
                let tool = tool.clone();
                async move { tool.run(args).await }.boxed()
            }
            None => {
                let error = tool_error(name, format!("no tool named `{name}`"));
                async move { Err(error) }.boxed()
            }
        }
    }
}
