//! DSPex: run DSPy programs from Rust services.
//!
//! A service builds one [`Dspex`] handle, defines programs from typed
//! signatures, and runs them; Rust owns supervision, process lifecycle,
//! queueing, sessions, errors and metrics, and Python workers only build and
//! run DSPy modules.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use dspex::{AdapterKind, Dspex, ExecuteOptions, LmConfig, Module, Signature};
//!
//! // The pure-Rust mock adapter: same API and result shape as Python workers.
//! let dspex = Dspex::builder().adapter(AdapterKind::Mock).start().await?;
//! dspex.configure_lm(LmConfig::dummy()).await?;
//!
//! let signature = Signature::parse("question: str -> answer: str, confidence: float")?;
//! dspex.create_program("qa", signature, Module::ChainOfThought).await?;
//!
//! let prediction = dspex
//!     .execute("qa", serde_json::json!({"question": "Why is the sky blue?"}), ExecuteOptions::default())
//!     .await?;
//! let confidence: f64 = prediction.get("confidence")?;
//! assert!(prediction.outputs.contains_key("answer"));
//! # let _ = confidence;
//! dspex.shutdown().await;
//! # Ok::<(), dspex::Error>(())
//! # });
//! ```
//!
//! Typed programs come from `#[derive(Signature)]` (see [`signature`]):
//! [`Dspex::program`] returns a [`Program`] whose `call` takes the inputs
//! struct and returns the outputs struct.
//!
//! The pieces: [`config`] (builder, TOML, `DSPEX_*`), [`adapter`] (mock,
//! bridge mock, Python), [`Error`] (categories, retryability),
//! [`resilience`] (the execute path as tower layers: shutdown gate,
//! deadline, retries within a budget, circuit breaker, load shedding),
//! [`signature`].

pub mod adapter;
mod builder;
mod compile;
pub mod config;
mod dataset;
mod error;
mod event;
mod handle;
mod metric;
mod module;
mod program;
pub mod resilience;
mod session;
pub mod signature;
mod stream;
mod telemetry;
pub mod tool;

pub use builder::DspexBuilder;
pub use compile::{
    Auto, DEFAULT_JOB_TIMEOUT, EvaluateOptions, Evaluation, OptimizeOptions, Optimized, Optimizer,
    Outcome, SavedProgram,
};
pub use config::{AdapterKind, Config, ModeSetting, SpawnSetting};
pub use dataset::{Dataset, Example};
pub use dspex_bridge as bridge;
pub use dspex_protocol as protocol;
pub use dspex_protocol::Budget;
pub use dspex_protocol::{LmConfig, Secret};
pub use error::{Category, Deadline, Error, Result};
pub use event::Event;
pub use handle::{Dspex, ExecuteOptions, Status};
pub use metric::{Metric, Score};
pub use module::{Base, BestOfN, Module, MultiChainComparison, PythonModule, React, Refine};
pub use program::{Prediction, Program, ProgramInfo, ProgramUsage, TokenUsage, Usage, validate_id};
pub use schemars;
pub use session::{History, Session};
pub use signature::{Field, FieldKind, FieldType, FieldValue, Signature, TypedSignature};
pub use stream::{Canceller, Chunk, Job, JobEvent, PredictionStream, Progress, StreamEvent};
pub use telemetry::describe_metrics;
pub use tool::{Reward, Tool};
