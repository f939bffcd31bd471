//! Programs: [`Module`], [`ProgramInfo`], results ([`Prediction`]) and typed
//! programs ([`Program`]).

use std::marker::PhantomData;
use std::time::Duration;

use dspex_protocol::{Map, Value};
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::handle::{Dspex, ExecuteOptions, ProgramEntry};
use crate::signature::{Signature, TypedSignature};

/// The DSPy module a program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Module {
    /// `dspy.Predict`: one LM call.
    #[default]
    Predict,
    /// `dspy.ChainOfThought`: reasons step by step first; its prediction
    /// carries a `reasoning` output before the declared ones.
    ChainOfThought,
}

impl Module {
    /// The module's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Predict => "predict",
            Self::ChainOfThought => "chain_of_thought",
        }
    }
}

impl std::str::FromStr for Module {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "predict" => Ok(Self::Predict),
            "chain_of_thought" | "chainofthought" | "cot" => Ok(Self::ChainOfThought),
            other => Err(Error::validation(
                "module",
                None,
                format!("unknown module {other:?}; use predict or chain_of_thought (cot)"),
            )),
        }
    }
}

/// A program's description.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgramInfo {
    /// Its id.
    pub program_id: String,
    /// Its module (`predict`, `chain_of_thought`).
    pub module: String,
    /// Its signature.
    pub signature: Signature,
}

impl ProgramInfo {
    pub(crate) fn of(entry: &ProgramEntry) -> Self {
        Self {
            program_id: entry.version.definition.program_id.clone(),
            module: entry.version.definition.module.clone(),
            signature: entry.signature.clone(),
        }
    }
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
        Ok(Self {
            program_id: program_id.to_owned(),
            outputs,
            model: reply
                .get("model")
                .and_then(Value::as_str)
                .map(str::to_owned),
            attempts: 1,
            latency: Duration::ZERO,
        })
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
}
