//! [`Metric`]s: how evaluation and optimization score a prediction against
//! an example's labels.
//!
//! DSPy's own metrics run in the worker ([`Metric::exact_match`],
//! [`Metric::f1`], [`Metric::answer_exact_match`],
//! [`Metric::answer_passage_match`]); a metric written in Rust
//! ([`Metric::new`], [`Metric::with_feedback`]) is called back from the
//! worker in batches (up to 64 examples per callback by default), so an
//! evaluation of a thousand examples costs a few round trips, not a
//! thousand. A Rust metric that panics fails only its example, with the
//! panic's text, as an exception in a DSPy metric does.
//!
//! ```
//! use dspex::Metric;
//!
//! // The answer's length within 20 % of the label's.
//! let close = Metric::new(|example, prediction| {
//!     let want = example.labels["answer"].as_str().unwrap_or("").len() as f64;
//!     let got = prediction.outputs["answer"].as_str().unwrap_or("").len() as f64;
//!     (got - want).abs() <= 0.2 * want
//! });
//! assert_eq!("exact_match:answer".parse::<Metric>().unwrap().name(), "exact_match");
//! # let _ = close;
//! ```

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::str::FromStr;
use std::sync::Arc;

use dspex_bridge::Callbacks;
use dspex_bridge::worker::panic_message;
use dspex_protocol::{CallError, ErrorKind, Example, Map, MetricSpec, Value};
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::json;

use crate::error::{Error, Result};
use crate::program::Prediction;
use crate::tool::{Handlers, tool_error};

/// The callback name under which a Rust metric runs (not an identifier,
/// so no tool can take it).
pub(crate) const METRIC: &str = "dspex.metric";

/// What a Rust metric gives an example: a score (1.0 is a full success in
/// DSPy's convention; booleans count as 0 or 1) and, for optimizers that
/// learn from it (GEPA), feedback in words.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    /// The score.
    pub value: f64,
    /// Why, in words.
    pub feedback: Option<String>,
}

impl Score {
    /// A score with feedback.
    pub fn with_feedback(value: f64, feedback: impl Into<String>) -> Self {
        Self {
            value,
            feedback: Some(feedback.into()),
        }
    }
}

impl From<f64> for Score {
    fn from(value: f64) -> Self {
        Self {
            value,
            feedback: None,
        }
    }
}

impl From<bool> for Score {
    fn from(value: bool) -> Self {
        Self::from(f64::from(u8::from(value)))
    }
}

type MetricFn = dyn Fn(&Example, &Prediction) -> Score + Send + Sync;

/// A metric: one of DSPy's, run in the worker, or a Rust function called
/// back. See the [module docs](self).
#[derive(Clone)]
pub struct Metric(Kind);

#[derive(Clone)]
enum Kind {
    Builtin {
        name: &'static str,
        field: Option<String>,
    },
    Rust {
        score: Arc<MetricFn>,
        feedback: bool,
        batch: u32,
    },
}

impl fmt::Debug for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Builtin { name, field } => f
                .debug_struct("Metric")
                .field("builtin", name)
                .field("field", field)
                .finish(),
            Kind::Rust { batch, .. } => f
                .debug_struct("Metric")
                .field("rust", &true)
                .field("batch", batch)
                .finish(),
        }
    }
}

impl Metric {
    /// Normalized exact match of output `field` with its label (DSPy's
    /// `normalize_text`: case, punctuation and articles ignored).
    pub fn exact_match(field: impl Into<String>) -> Self {
        Self::builtin("exact_match", Some(field.into()))
    }

    /// DSPy's token F1 of output `field` against its label.
    pub fn f1(field: impl Into<String>) -> Self {
        Self::builtin("f1", Some(field.into()))
    }

    /// DSPy's `answer_exact_match` (the `answer` field).
    pub fn answer_exact_match() -> Self {
        Self::builtin("answer_exact_match", None)
    }

    /// DSPy's `answer_passage_match` (the label's `answer` in the
    /// prediction's `context`).
    pub fn answer_passage_match() -> Self {
        Self::builtin("answer_passage_match", None)
    }

    fn builtin(name: &'static str, field: Option<String>) -> Self {
        Self(Kind::Builtin { name, field })
    }

    /// A metric in Rust: `score(example, prediction)`, a number or a bool.
    pub fn new<S: Into<Score>>(
        score: impl Fn(&Example, &Prediction) -> S + Send + Sync + 'static,
    ) -> Self {
        Self(Kind::Rust {
            score: Arc::new(move |example, prediction| score(example, prediction).into()),
            feedback: false,
            batch: 64,
        })
    }

    /// A metric in Rust that explains its score ([`Score::with_feedback`]);
    /// GEPA reflects on the feedback.
    pub fn with_feedback(
        score: impl Fn(&Example, &Prediction) -> Score + Send + Sync + 'static,
    ) -> Self {
        Self(Kind::Rust {
            score: Arc::new(score),
            feedback: true,
            batch: 64,
        })
    }

    /// How many examples one callback of a Rust metric carries (1-1024;
    /// default 64). No effect on DSPy's metrics.
    #[must_use]
    pub fn batch(mut self, size: u32) -> Self {
        if let Kind::Rust { batch, .. } = &mut self.0 {
            *batch = size;
        }
        self
    }

    /// Its name: DSPy's, or `rust`.
    pub fn name(&self) -> &str {
        match &self.0 {
            Kind::Builtin { name, .. } => name,
            Kind::Rust { .. } => "rust",
        }
    }

    /// Checks the metric fits the program's `outputs`.
    pub(crate) fn check(&self, outputs: &[&str]) -> Result<()> {
        match &self.0 {
            Kind::Builtin {
                field: Some(field), ..
            } if !outputs.contains(&field.as_str()) => Err(Error::validation(
                "metric",
                Some(field.clone()),
                format!(
                    "the metric compares `{field}`, which the program does not output (its outputs: {})",
                    outputs.join(", ")
                ),
            )),
            Kind::Rust { batch, .. } if !(1..=1024).contains(batch) => Err(Error::validation(
                "metric",
                None,
                format!("a metric's batch is 1-1024 examples, not {batch}"),
            )),
            _ => Ok(()),
        }
    }

    /// What the worker is told, and the handlers of the call: the
    /// program's own, with the metric's callback when it is in Rust.
    pub(crate) fn wire(
        &self,
        program: &Arc<Handlers>,
        program_id: &str,
    ) -> (MetricSpec, Arc<dyn Callbacks>) {
        match &self.0 {
            Kind::Builtin { name, field } => (
                MetricSpec::Builtin {
                    builtin: (*name).to_owned(),
                    field: field.clone(),
                },
                Arc::clone(program) as Arc<dyn Callbacks>,
            ),
            Kind::Rust {
                score,
                feedback,
                batch,
            } => (
                MetricSpec::Callback {
                    callback: METRIC.to_owned(),
                    batch: Some(*batch),
                    feedback: *feedback,
                },
                Arc::new(WithMetric {
                    program: Arc::clone(program),
                    score: Arc::clone(score),
                    program_id: program_id.to_owned(),
                }),
            ),
        }
    }
}

impl FromStr for Metric {
    type Err = Error;

    /// `exact_match:FIELD`, `f1:FIELD`, `answer_exact_match`,
    /// `answer_passage_match`.
    fn from_str(text: &str) -> Result<Self> {
        let (name, field) = match text.trim().split_once(':') {
            Some((name, field)) => (name, Some(field.trim())),
            None => (text.trim(), None),
        };
        match (name, field) {
            ("exact_match" | "em", Some(field)) if !field.is_empty() => {
                Ok(Self::exact_match(field))
            }
            ("f1", Some(field)) if !field.is_empty() => Ok(Self::f1(field)),
            ("exact_match" | "em", None) => Ok(Self::exact_match("answer")),
            ("f1", None) => Ok(Self::f1("answer")),
            ("answer_exact_match", None) => Ok(Self::answer_exact_match()),
            ("answer_passage_match", None) => Ok(Self::answer_passage_match()),
            _ => Err(Error::validation(
                "metric",
                None,
                format!(
                    "unknown metric {text:?}; use exact_match:FIELD, f1:FIELD, \
                     answer_exact_match or answer_passage_match"
                ),
            )),
        }
    }
}

/// A program's handlers plus a Rust metric under [`METRIC`].
struct WithMetric {
    program: Arc<Handlers>,
    score: Arc<MetricFn>,
    program_id: String,
}

impl Callbacks for WithMetric {
    fn call(
        &self,
        name: &str,
        args: Value,
    ) -> BoxFuture<'static, std::result::Result<Value, CallError>> {
        if name != METRIC {
            return self.program.call(name, args);
        }
        let Some(items) = args.get("items").and_then(Value::as_array).cloned() else {
            let error = tool_error(METRIC, "a metric call carries `items`".to_owned());
            return async move { Err(error) }.boxed();
        };
        let score = Arc::clone(&self.score);
        let program_id = self.program_id.clone();
        // Scored on a blocking thread: a metric is the caller's code, and a
        // batch of them may take a while.
        async move {
            tokio::task::spawn_blocking(move || {
                let scores: Vec<Value> = items
                    .iter()
                    .map(|item| score_one(&*score, &program_id, item))
                    .collect();
                json!({ "scores": scores })
            })
            .await
            .map_err(|error| CallError::new(ErrorKind::ToolError, error.to_string()))
        }
        .boxed()
    }
}

/// One item's score: a number, `{score, feedback}`, or `{error}`.
fn score_one(score: &MetricFn, program_id: &str, item: &Value) -> Value {
    let part = |key: &str| -> Map<String, Value> {
        item.get("example")
            .and_then(|e| e.get(key))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    let example = Example {
        inputs: part("inputs"),
        labels: part("labels"),
    };
    let outputs = item
        .get("prediction")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let prediction = Prediction::of_outputs(program_id, outputs);
    match std::panic::catch_unwind(AssertUnwindSafe(|| score(&example, &prediction))) {
        Ok(Score { value, .. }) if !value.is_finite() => {
            json!({"error": format!("the metric gave {value}, not a finite number")})
        }
        Ok(Score {
            value,
            feedback: Some(feedback),
        }) => json!({"score": value, "feedback": feedback}),
        Ok(Score { value, .. }) => json!(value),
        Err(panic) => json!({"error": format!("the metric panicked: {}", panic_message(&*panic))}),
    }
}
