//! Programs: [`ProgramInfo`], results ([`Prediction`], [`Usage`]) and typed
//! programs ([`Program`]).

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::time::Duration;

use dspex_protocol::{Map, Value};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::handle::{Dspex, ExecuteOptions, ProgramEntry};
use crate::module::Module;
use crate::signature::{Signature, TypedSignature};

/// A program's description.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgramInfo {
    /// Its id.
    pub program_id: String,
    /// Its module's name (`predict`, `react`, ...).
    pub module: String,
    /// Its signature.
    pub signature: Signature,
    /// Its few-shot examples.
    pub demos: usize,
    /// The names of its Rust tools (a ReAct program's).
    pub tools: Vec<String>,
    /// The hash of its exact definition (as the workers know it).
    pub hash: String,
    /// Whether it carries compiled state (from an optimizer or a file).
    pub compiled: bool,
}

impl ProgramInfo {
    pub(crate) fn of(entry: &ProgramEntry) -> Self {
        let mut tools: Vec<String> = entry
            .handlers
            .tools()
            .map(|t| t.name().to_owned())
            .collect();
        tools.sort();
        Self {
            program_id: entry.version.definition.program_id.clone(),
            module: entry.version.definition.module.clone(),
            signature: entry.signature.clone(),
            demos: entry.version.definition.demos.len(),
            tools,
            hash: entry.version.hash.clone(),
            compiled: entry.version.definition.state.is_some(),
        }
    }
}

/// Tokens one model used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Tokens of the prompts.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Tokens of the completions.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Both.
    #[serde(default)]
    pub total_tokens: u64,
}

impl TokenUsage {
    fn add(&mut self, other: &TokenUsage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
    }
}

/// The LM usage DSPy tracked for a call, by model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Usage {
    /// Model name → its tokens.
    pub by_model: BTreeMap<String, TokenUsage>,
}

impl Usage {
    /// The tokens of every model together.
    pub fn total(&self) -> TokenUsage {
        let mut total = TokenUsage::default();
        for usage in self.by_model.values() {
            total.add(usage);
        }
        total
    }

    /// Adds `other` to this.
    pub fn add(&mut self, other: &Usage) {
        for (model, usage) in &other.by_model {
            self.by_model.entry(model.clone()).or_default().add(usage);
        }
    }

    /// Whether no tokens were used (or none were reported).
    pub fn is_empty(&self) -> bool {
        self.by_model.is_empty()
    }

    /// Reads the worker's `usage` map, keeping the token counts of each
    /// model (DSPy's usage tracker reports more detail; it is ignored).
    pub(crate) fn from_reply(value: Option<&Value>) -> Self {
        let by_model = value
            .and_then(Value::as_object)
            .map(|models| {
                models
                    .iter()
                    .map(|(model, usage)| {
                        let count = |key: &str| usage.get(key).and_then(Value::as_u64).unwrap_or(0);
                        let mut tokens = TokenUsage {
                            prompt_tokens: count("prompt_tokens"),
                            completion_tokens: count("completion_tokens"),
                            total_tokens: count("total_tokens"),
                        };
                        if tokens.total_tokens == 0 {
                            tokens.total_tokens = tokens.prompt_tokens + tokens.completion_tokens;
                        }
                        (model.clone(), tokens)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self { by_model }
    }
}

/// A program's LM usage since the instance started (see
/// [`crate::Status::usage`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProgramUsage {
    /// Calls that returned a prediction.
    pub calls: u64,
    /// Their tokens, by model.
    pub tokens: Usage,
}

/// The result of running a program: the same shape on every adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The program that ran.
    pub program_id: String,
    /// Output values by field name (checked against the signature).
    pub outputs: Map<String, Value>,
    /// The LM that answered, when the worker says.
    pub model: Option<String>,
    /// The LM usage DSPy tracked for this call.
    pub usage: Usage,
    /// The LM calls' prompts and completions, when the call asked for them
    /// ([`ExecuteOptions::lm_history`]).
    pub lm_history: Option<Vec<Value>>,
    /// Attempts it took (1 unless retried).
    pub attempts: u32,
    /// Time from the call to the result, retries included.
    pub latency: Duration,
}

impl Prediction {
    pub(crate) fn from_reply(program_id: &str, mut reply: Value) -> Result<Self> {
        let outputs = match reply.get_mut("outputs").map(Value::take) {
            Some(Value::Object(outputs)) => outputs,
            other => {
                return Err(Error::Protocol {
                    message: format!("execute_program replied without an outputs map: {other:?}"),
                });
            }
        };
        let lm_history = match reply.get_mut("lm_history").map(Value::take) {
            Some(Value::Array(calls)) => Some(calls),
            _ => None,
        };
        Ok(Self {
            program_id: program_id.to_owned(),
            outputs,
            model: reply
                .get("model")
                .and_then(Value::as_str)
                .map(str::to_owned),
            usage: Usage::from_reply(reply.get("usage")),
            lm_history,
            attempts: 1,
            latency: Duration::ZERO,
        })
    }

    /// A prediction of `outputs` alone (what a metric is shown).
    pub(crate) fn of_outputs(program_id: &str, outputs: Map<String, Value>) -> Self {
        Self {
            program_id: program_id.to_owned(),
            outputs,
            model: None,
            usage: Usage::default(),
            lm_history: None,
            attempts: 1,
            latency: Duration::ZERO,
        }
    }

    /// One output, deserialized.
    ///
    /// # Errors
    /// [`Error::Validation`] naming the field if it is missing or of another type.
    pub fn get<T: DeserializeOwned>(&self, field: &str) -> Result<T> {
        let value = self
            .outputs
            .get(field)
            .ok_or_else(|| Error::validation("output", Some(field.to_owned()), "no such output"))?;
        serde_json::from_value(value.clone())
            .map_err(|e| Error::validation("output", Some(field.to_owned()), e.to_string()))
    }

    /// All outputs, deserialized into `T` (fields `T` does not name, such as
    /// `reasoning`, are ignored unless `T` denies unknown fields).
    ///
    /// # Errors
    /// [`Error::Validation`] when the outputs do not fit `T`.
    pub fn into_typed<T: DeserializeOwned>(self) -> Result<T> {
        serde_json::from_value(Value::Object(self.outputs))
            .map_err(|e| Error::validation("output", None, e.to_string()))
    }
}

/// A program with a Rust-typed signature: inputs in, typed outputs out.
/// Cheap to clone.
#[derive(Debug)]
pub struct Program<S> {
    dspex: Dspex,
    program_id: String,
    _signature: PhantomData<fn() -> S>,
}

impl<S> Clone for Program<S> {
    fn clone(&self) -> Self {
        Self {
            dspex: self.dspex.clone(),
            program_id: self.program_id.clone(),
            _signature: PhantomData,
        }
    }
}

impl<S: TypedSignature> Program<S> {
    pub(crate) fn new(dspex: Dspex, program_id: String) -> Self {
        Self {
            dspex,
            program_id,
            _signature: PhantomData,
        }
    }

    /// The program's id.
    pub fn id(&self) -> &str {
        &self.program_id
    }

    /// Runs the program.
    ///
    /// # Cancel safety
    /// As [`Dspex::execute`].
    ///
    /// # Errors
    /// As [`Dspex::execute`], and [`Error::Validation`] if the outputs do not
    /// deserialize into `S::Outputs`.
    pub async fn call(&self, inputs: S::Inputs) -> Result<S::Outputs> {
        self.call_with(inputs, ExecuteOptions::default()).await
    }

    /// Runs the program with per-call options.
    ///
    /// # Cancel safety
    /// As [`Dspex::execute`].
    ///
    /// # Errors
    /// As [`Program::call`].
    pub async fn call_with(
        &self,
        inputs: S::Inputs,
        options: ExecuteOptions,
    ) -> Result<S::Outputs> {
        self.dspex
            .execute(&self.program_id, inputs, options)
            .await?
            .into_typed()
    }

    /// Gives the program few-shot examples: each an inputs value and the
    /// outputs it should produce, checked against the signature. The
    /// program is redefined (a new version; workers load it on their next
    /// call) and returned.
    ///
    /// # Cancel safety
    /// As [`Dspex::create_program`].
    ///
    /// # Errors
    /// [`Error::Validation`] naming the demo and the field when one does
    /// not fit the signature; nothing changes then.
    pub async fn with_demos(
        self,
        demos: impl IntoIterator<Item = (S::Inputs, S::Outputs)>,
    ) -> Result<Self>
    where
        S::Outputs: Serialize,
    {
        let demos = demos
            .into_iter()
            .map(|(inputs, outputs)| {
                let mut demo = crate::handle::to_map(&inputs)?;
                demo.extend(crate::handle::to_map(&outputs)?);
                Ok(demo)
            })
            .collect::<Result<Vec<_>>>()?;
        self.dspex.set_demos(&self.program_id, demos).await?;
        Ok(self)
    }
}

/// Checks an id (`what`: `program`, `session`, ...): 1–128 ASCII letters,
/// digits, `_`, `-`, `.` or `:`, the ids DSPex takes from outside.
///
/// ```
/// assert!(dspex::validate_id("session", "user-7").is_ok());
/// assert!(dspex::validate_id("session", "../x").is_err());
/// ```
///
/// # Errors
/// [`Error::Validation`] naming `what` and the rule.
pub fn validate_id(what: &'static str, id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(Error::validation(
            what,
            None,
            format!("{what} id {id:?} must be 1-128 ASCII letters, digits, '_', '-', '.' or ':'"),
        ))
    }
}

/// Checks few-shot examples against the signature: every key a field (or
/// an output the module adds, such as `reasoning`), every input the
/// signature requires and every output present, each of its type.
pub(crate) fn check_demos(
    signature: &Signature,
    module: &Module,
    demos: &[Map<String, Value>],
) -> Result<()> {
    if matches!(module, Module::Python(_)) && !demos.is_empty() {
        return Err(Error::validation(
            "demo",
            None,
            "a Python module owns its predictors: give it demos in Python, not here",
        ));
    }
    for (i, demo) in demos.iter().enumerate() {
        let bad = |message: String| Error::validation("demo", Some(i.to_string()), message);
        let mut inputs = Map::new();
        let mut outputs = Map::new();
        for (name, value) in demo {
            if signature.input(name).is_some() {
                inputs.insert(name.clone(), value.clone());
            } else if signature.output(name).is_some()
                || module.added_outputs().contains(&name.as_str())
            {
                outputs.insert(name.clone(), value.clone());
            } else {
                let known: Vec<&str> = signature
                    .inputs()
                    .iter()
                    .chain(signature.outputs())
                    .map(|f| f.name())
                    .collect();
                return Err(bad(format!(
                    "demo {i}: unknown field `{name}`; the signature's fields are {}",
                    known.join(", ")
                )));
            }
        }
        signature
            .validate_inputs(&inputs)
            .and_then(|()| signature.validate_outputs(&outputs))
            .map_err(|error| bad(format!("demo {i}: {error}")))?;
    }
    Ok(())
}
