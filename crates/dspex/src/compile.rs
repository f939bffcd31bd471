//! Evaluation, optimization and compiled state: [`Dspex::evaluate`],
//! [`Dspex::optimize`], [`Dspex::save_program`], [`Dspex::load_program`].
//!
//! An optimizer (DSPy's own: `BootstrapFewShot`, `MIPROv2`, `GEPA`, ...)
//! turns a program, a training set and a metric into better instructions
//! and demos: the program's *compiled state*, as DSPy dumps it. DSPex keeps
//! that state with the program in its one store, so every worker — one
//! started later included — runs the compiled program; and saves it in
//! DSPy's own JSON format, so a Python user can `program.load(path)` the
//! same file (and DSPex loads a file DSPy saved). Pickle is never read or
//! written.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use dspex::{AdapterKind, Dataset, Dspex, EvaluateOptions, LmConfig, Metric, Module, OptimizeOptions, Optimizer, Signature};
//! use serde_json::json;
//!
//! let mut lm = LmConfig::dummy();
//! lm.extra.insert("follow_examples".into(), json!(true)); // an offline LM that learns from demos
//! let dspex = Dspex::builder().adapter(AdapterKind::Mock).lm(lm).start().await?;
//! let signature = Signature::parse("question -> answer")?;
//! dspex.create_program("qa", signature.clone(), Module::Predict).await?;
//! let records = (0..4).map(|i| json!({"question": format!("q{i}"), "answer": format!("a{i}")}));
//! let data = Dataset::from_records(&signature, records.map(|r| r.as_object().unwrap().clone()))?;
//! let metric = Metric::exact_match("answer");
//!
//! let before = dspex.evaluate("qa", &data, &metric, EvaluateOptions::default())?.await?;
//! let optimized = dspex
//!     .optimize("qa", Optimizer::bootstrap_few_shot(), &data, None, &metric, OptimizeOptions::default())?
//!     .await?;
//! let after = dspex.evaluate("qa", &data, &metric, EvaluateOptions::default())?.await?;
//! assert!(optimized.program.compiled && after.score > before.score);
//! # dspex.shutdown().await;
//! # Ok::<(), dspex::Error>(())
//! # });
//! ```

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use dspex_bridge::pool::Run;
use dspex_protocol::{
    Budget, EvaluateArgs, LmConfig, Map, OptimizeArgs, ProgramDefinition, ProgramStateArgs, Value,
};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::handle::{Dspex, ExecuteOptions, ProgramEntry};
use crate::metric::Metric;
use crate::module::Module;
use crate::program::{ProgramInfo, Usage};
use crate::signature::Signature;
use crate::stream::Job;

/// How long an evaluation or an optimization may take unless its options
/// say otherwise.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(3600);

/// Options of [`Dspex::evaluate`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvaluateOptions {
    /// Threads DSPy evaluates on (default: the worker's choice).
    pub threads: Option<u32>,
    /// The whole evaluation's deadline (default one hour).
    pub timeout: Option<Duration>,
    /// An LM for this evaluation only.
    pub lm: Option<LmConfig>,
}

/// How one example fared in an evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Its index in the devset.
    pub index: usize,
    /// The program's outputs, unless it failed.
    pub outputs: Option<Map<String, Value>>,
    /// Its score (0 for a failed example).
    pub score: f64,
    /// The metric's feedback, if it gave any.
    pub feedback: Option<String>,
    /// Why it failed (the program or the metric), if it did.
    pub error: Option<String>,
}

/// The result of [`Dspex::evaluate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// The program evaluated.
    pub program_id: String,
    /// The score as `dspy.Evaluate` gives it: the mean of the examples'
    /// scores, as a percentage with two decimals.
    pub score: f64,
    /// Every example's outcome, in devset order.
    pub outcomes: Vec<Outcome>,
    /// The LM usage of the whole evaluation.
    pub usage: Usage,
}

impl Evaluation {
    /// The `n` lowest-scoring outcomes, failures first.
    pub fn worst(&self, n: usize) -> Vec<&Outcome> {
        let mut outcomes: Vec<&Outcome> = self.outcomes.iter().collect();
        outcomes.sort_by(|a, b| {
            (a.error.is_none(), a.score)
                .partial_cmp(&(b.error.is_none(), b.score))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        outcomes.truncate(n);
        outcomes
    }

    /// How many examples failed (the program or the metric raised).
    pub fn failed(&self) -> usize {
        self.outcomes.iter().filter(|o| o.error.is_some()).count()
    }
}

/// How thoroughly MIPROv2 and GEPA search (their `auto` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Auto {
    /// The fewest trials.
    #[default]
    Light,
    /// More.
    Medium,
    /// The most.
    Heavy,
}

impl Auto {
    fn as_str(self) -> &'static str {
        match self {
            Self::Light => "light",
            Self::Medium => "medium",
            Self::Heavy => "heavy",
        }
    }
}

/// One of DSPy's optimizers, with its options (passed to DSPy as they are;
/// the worker refuses names the optimizer does not take).
#[derive(Debug, Clone, PartialEq)]
pub struct Optimizer {
    name: &'static str,
    options: Map<String, Value>,
    reflection_lm: Option<LmConfig>,
}

impl Optimizer {
    fn named(name: &'static str) -> Self {
        Self {
            name,
            options: Map::new(),
            reflection_lm: None,
        }
    }

    /// `dspy.BootstrapFewShot`: demos bootstrapped from the trainset
    /// (`max_bootstrapped_demos`, `max_labeled_demos`, `max_rounds`).
    pub fn bootstrap_few_shot() -> Self {
        Self::named("bootstrap_few_shot")
    }

    /// `dspy.BootstrapFewShotWithRandomSearch`: `candidates` bootstrapped
    /// programs, the best on the valset kept.
    pub fn bootstrap_few_shot_with_random_search(candidates: u32) -> Self {
        Self::named("bootstrap_few_shot_with_random_search")
            .option("num_candidate_programs", candidates)
    }

    /// `dspy.MIPROv2`: instructions and demos searched together.
    pub fn mipro_v2(auto: Auto) -> Self {
        Self::named("mipro_v2").option("auto", auto.as_str())
    }

    /// `dspy.GEPA`: instructions evolved by reflecting (with
    /// `reflection_lm`) on the metric's feedback.
    pub fn gepa(auto: Auto, reflection_lm: LmConfig) -> Self {
        Self::named("gepa")
            .option("auto", auto.as_str())
            .reflection_lm(reflection_lm)
    }

    /// `dspy.COPRO`: instructions proposed and refined (`breadth`, `depth`).
    pub fn copro() -> Self {
        Self::named("copro")
    }

    /// `dspy.SIMBA`: stochastic mini-batch ascent (`max_steps`, `bsize`).
    pub fn simba() -> Self {
        Self::named("simba")
    }

    /// Sets one of the optimizer's options, as DSPy names it.
    #[must_use]
    pub fn option(mut self, name: &str, value: impl Serialize) -> Self {
        self.options.insert(
            name.to_owned(),
            serde_json::to_value(value).unwrap_or(Value::Null),
        );
        self
    }

    /// The LM GEPA reflects with.
    #[must_use]
    pub fn reflection_lm(mut self, lm: LmConfig) -> Self {
        self.reflection_lm = Some(lm);
        self
    }

    /// Its name on the wire.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

impl fmt::Display for Optimizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl FromStr for Optimizer {
    type Err = Error;

    /// `bootstrap_few_shot`, `bootstrap_few_shot_with_random_search`,
    /// `mipro_v2` (light), `gepa` (light; give it a reflection LM),
    /// `copro`, `simba`.
    fn from_str(name: &str) -> Result<Self> {
        Ok(
            match name.trim().to_ascii_lowercase().replace('-', "_").as_str() {
                "bootstrap_few_shot" | "bootstrapfewshot" => Self::bootstrap_few_shot(),
                "bootstrap_few_shot_with_random_search" | "random_search" => {
                    Self::named("bootstrap_few_shot_with_random_search")
                }
                "mipro_v2" | "miprov2" | "mipro" => Self::mipro_v2(Auto::Light),
                "gepa" => Self::named("gepa").option("auto", "light"),
                "copro" => Self::copro(),
                "simba" => Self::simba(),
                other => {
                    return Err(Error::validation(
                        "optimizer",
                        None,
                        format!(
                            "unknown optimizer {other:?}; use bootstrap_few_shot, \
                         bootstrap_few_shot_with_random_search, mipro_v2, gepa, copro or simba"
                        ),
                    ));
                }
            },
        )
    }
}

/// Options of [`Dspex::optimize`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OptimizeOptions {
    /// Threads the optimizer evaluates on (default: the worker's choice).
    pub threads: Option<u32>,
    /// The job's deadline (default one hour).
    pub timeout: Option<Duration>,
    /// The most metric and LM calls the job may make; past either it ends
    /// with [`Error::BudgetExceeded`] and stores nothing.
    pub budget: Budget,
    /// A seed for the optimizer's sampling.
    pub seed: Option<u32>,
    /// An LM for this job only (the program's task LM).
    pub lm: Option<LmConfig>,
}

/// The result of [`Dspex::optimize`]: the program, now compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct Optimized {
    /// The program as stored, compiled.
    pub program: ProgramInfo,
    /// The optimizer that compiled it.
    pub optimizer: String,
    /// The optimizer's best (or validation) score, when it reports one.
    pub score: Option<f64>,
    /// Metric calls the job made.
    pub metric_calls: u64,
    /// LM calls the job made.
    pub lm_calls: u64,
    /// How long it took.
    pub duration: Duration,
}

impl Dspex {
    /// Scores a program on `devset` with `metric` (DSPy's `Evaluate`): the
    /// score, and every example's outcome. A Rust metric is called back in
    /// batches; an example whose program or metric fails scores 0 and says
    /// why. The job reports `{done, total, score}` as it goes.
    ///
    /// # Errors
    /// At once, [`Error::Validation`] for an unknown program, an example
    /// that does not fit its signature, or a metric on a field it lacks;
    /// the evaluation's own errors from the job.
    pub fn evaluate(
        &self,
        program_id: &str,
        devset: &Dataset,
        metric: &Metric,
        options: EvaluateOptions,
    ) -> Result<Job<Evaluation>> {
        let entry = self.entry(program_id)?;
        devset.check(&entry.signature)?;
        check_metric(&entry, metric)?;
        let (spec, callbacks) = metric.wire(&entry.handlers, entry.version.id());
        let run = Run::Evaluate(EvaluateArgs {
            program_id: String::new(),
            program: None,
            lm_id: None,
            devset: devset.examples().to_vec(),
            metric: spec,
            num_threads: options.threads,
        });
        let call_options = ExecuteOptions {
            timeout: Some(options.timeout.unwrap_or(DEFAULT_JOB_TIMEOUT)),
            lm: options.lm,
            ..ExecuteOptions::default()
        };
        let (events, received) = mpsc::unbounded_channel();
        let this = self.clone();
        Ok(Job::new(received, async move {
            let executed = this
                .send(&entry, run, call_options, Some(callbacks), Some(events))
                .await?;
            evaluation(entry.version.id(), executed.reply)
        }))
    }

    /// Compiles a program with one of DSPy's optimizers on `trainset` (and
    /// `valset`, when given) under `metric`. The job holds one worker for
    /// its run; the pool serves other calls meanwhile. On success the
    /// compiled state is stored with the program (a new version every
    /// worker runs from then on); on any failure — a cancel, its deadline,
    /// its budget, its worker's crash — nothing is stored.
    ///
    /// # Errors
    /// At once, [`Error::Validation`] for an unknown program, examples that
    /// do not fit, a metric on a field it lacks, or GEPA without a
    /// reflection LM; the job's own errors from the job, and
    /// [`Error::Validation`] if the program was redefined while it ran.
    pub fn optimize(
        &self,
        program_id: &str,
        optimizer: Optimizer,
        trainset: &Dataset,
        valset: Option<&Dataset>,
        metric: &Metric,
        options: OptimizeOptions,
    ) -> Result<Job<Optimized>> {
        let entry = self.entry(program_id)?;
        trainset.check(&entry.signature)?;
        if let Some(valset) = valset {
            valset.check(&entry.signature)?;
        }
        if trainset.is_empty() {
            return Err(Error::validation(
                "example",
                None,
                "an optimizer needs a trainset with at least one example",
            ));
        }
        check_metric(&entry, metric)?;
        if optimizer.name == "gepa" && optimizer.reflection_lm.is_none() {
            return Err(Error::validation(
                "optimizer",
                None,
                "gepa reflects with an LM of its own: give it one (Optimizer::reflection_lm)",
            ));
        }
        let (spec, callbacks) = metric.wire(&entry.handlers, entry.version.id());
        let budget = options.budget;
        let run = Run::Optimize(OptimizeArgs {
            program_id: String::new(),
            program: None,
            lm_id: None,
            optimizer: optimizer.name.to_owned(),
            options: optimizer.options.clone(),
            trainset: trainset.examples().to_vec(),
            valset: valset.map(|v| v.examples().to_vec()),
            metric: spec,
            num_threads: options.threads,
            budget: (budget != Budget::default()).then_some(budget),
            reflection_lm: optimizer.reflection_lm.clone(),
            seed: options.seed,
        });
        let call_options = ExecuteOptions {
            timeout: Some(options.timeout.unwrap_or(DEFAULT_JOB_TIMEOUT)),
            lm: options.lm,
            ..ExecuteOptions::default()
        };
        let (events, received) = mpsc::unbounded_channel();
        let this = self.clone();
        Ok(Job::new(received, async move {
            let started = Instant::now();
            let executed = this
                .send(&entry, run, call_options, Some(callbacks), Some(events))
                .await?;
            let reply = executed.reply;
            let state = compiled_state(&reply)?;
            let current = this.entry(entry.version.id())?;
            if current.version.hash != entry.version.hash {
                return Err(Error::validation(
                    "program",
                    None,
                    format!(
                        "program {:?} was redefined while it was optimized; the compiled state \
                         was not stored",
                        entry.version.id()
                    ),
                ));
            }
            let program = this
                .define(
                    entry.version.id(),
                    entry.signature.clone(),
                    entry.module.clone(),
                    demos_of(&entry.version.definition),
                    Some(state),
                )
                .await?;
            let count = |key: &str| reply.get(key).and_then(Value::as_u64).unwrap_or(0);
            Ok(Optimized {
                program,
                optimizer: optimizer.name.to_owned(),
                score: reply.get("score").and_then(Value::as_f64),
                metric_calls: count("metric_calls"),
                lm_calls: count("lm_calls"),
                duration: started.elapsed(),
            })
        }))
    }

    /// Saves a program's state in DSPy's own JSON format (what
    /// `program.save(path)` writes in Python: the state, with
    /// `metadata.dependency_versions`), plus the program's DSPex definition
    /// under `metadata.dspex` (DSPy ignores it). A program never compiled
    /// is saved as DSPy dumps it fresh.
    ///
    /// # Cancel safety
    /// The file is written after the worker answered; dropping the future
    /// before leaves no file.
    ///
    /// # Errors
    /// [`Error::Validation`] for an unknown program; the worker's errors;
    /// [`Error::Configuration`] when the file cannot be written.
    pub async fn save_program(&self, program_id: &str, path: impl AsRef<Path>) -> Result<()> {
        let entry = self.entry(program_id)?;
        let (state, versions) = self.dump_state(&entry).await?;
        let mut definition = (*entry.version.definition).clone();
        definition.state = None;
        let saved = SavedProgram {
            state,
            dependency_versions: versions,
            definition: Some(definition),
        };
        saved.write(path)
    }

    /// Defines a program from `signature` and `module` with the compiled
    /// state of a file in DSPy's JSON format (saved by
    /// [`Dspex::save_program`], or by `program.save(path)` in Python). A
    /// file from another DSPy version is loaded and warned about, as DSPy
    /// does.
    ///
    /// # Cancel safety
    /// As [`Dspex::create_program`].
    ///
    /// # Errors
    /// [`Error::Configuration`] when the file cannot be read or is not
    /// DSPy's JSON (pickle is never read); [`Error::Validation`] when the
    /// state does not fit the module.
    pub async fn load_program(
        &self,
        program_id: &str,
        signature: Signature,
        module: impl Into<Module>,
        path: impl AsRef<Path>,
    ) -> Result<ProgramInfo> {
        let saved = SavedProgram::read(path)?;
        let info = self
            .define(
                program_id,
                signature,
                module.into(),
                Vec::new(),
                Some(Value::Object(saved.state.clone())),
            )
            .await?;
        let entry = self.entry(program_id)?;
        let (_, running) = self.dump_state(&entry).await?;
        for (key, saved_version) in &saved.dependency_versions {
            if let Some(now) = running.get(key)
                && now != saved_version
            {
                tracing::warn!(
                    program = program_id,
                    dependency = %key,
                    saved = %saved_version,
                    running = %now,
                    "the program was saved with another version than the workers run; \
                     it may behave differently"
                );
            }
        }
        Ok(info)
    }

    /// The program's state and the dependency versions, from a worker.
    async fn dump_state(
        &self,
        entry: &ProgramEntry,
    ) -> Result<(Map<String, Value>, Map<String, Value>)> {
        let run = Run::State(ProgramStateArgs::default());
        let executed = self
            .send(entry, run, ExecuteOptions::default(), None, None)
            .await?;
        let map = |key: &str| executed.reply.get(key).and_then(Value::as_object).cloned();
        let state = map("state").ok_or_else(|| Error::Protocol {
            message: "get_program_state replied without a state".into(),
        })?;
        Ok((state, map("dependency_versions").unwrap_or_default()))
    }
}

fn check_metric(entry: &ProgramEntry, metric: &Metric) -> Result<()> {
    let outputs: Vec<&str> = entry
        .signature
        .outputs()
        .iter()
        .map(|f| f.name())
        .chain(entry.module.added_outputs().iter().copied())
        .collect();
    metric.check(&outputs)
}

fn demos_of(definition: &ProgramDefinition) -> Vec<Map<String, Value>> {
    definition
        .demos
        .iter()
        .filter_map(Value::as_object)
        .cloned()
        .collect()
}

fn compiled_state(reply: &Value) -> Result<Value> {
    reply
        .get("state")
        .filter(|s| s.is_object())
        .cloned()
        .ok_or_else(|| Error::Protocol {
            message: "optimize replied without a state".into(),
        })
}

fn evaluation(program_id: &str, mut reply: Value) -> Result<Evaluation> {
    let Some(Value::Array(results)) = reply.get_mut("results").map(Value::take) else {
        return Err(Error::Protocol {
            message: "evaluate replied without results".into(),
        });
    };
    let outcomes = results
        .into_iter()
        .enumerate()
        .map(|(index, mut result)| {
            let error = result.get("error").map(|e| {
                e.get("message")
                    .and_then(Value::as_str)
                    .map_or_else(|| e.to_string(), str::to_owned)
            });
            Outcome {
                index,
                outputs: match result.get_mut("outputs").map(Value::take) {
                    Some(Value::Object(outputs)) => Some(outputs),
                    _ => None,
                },
                score: result.get("score").and_then(Value::as_f64).unwrap_or(0.0),
                feedback: result
                    .get("feedback")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                error,
            }
        })
        .collect();
    Ok(Evaluation {
        program_id: program_id.to_owned(),
        score: reply.get("score").and_then(Value::as_f64).unwrap_or(0.0),
        outcomes,
        usage: Usage::from_reply(reply.get("usage")),
    })
}

/// A program's state in DSPy's JSON format: what `program.save(path)`
/// writes and `program.load(path)` reads.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedProgram {
    /// The state (DSPy's `dump_state()`), without `metadata`.
    pub state: Map<String, Value>,
    /// `metadata.dependency_versions`: Python, DSPy and cloudpickle.
    pub dependency_versions: Map<String, Value>,
    /// `metadata.dspex.definition`: the DSPex program it belongs to, when a
    /// DSPex saved it.
    pub definition: Option<ProgramDefinition>,
}

impl SavedProgram {
    /// Reads a file.
    ///
    /// # Errors
    /// [`Error::Configuration`] when it cannot be read or is not a JSON
    /// map (a pickle file is refused, never read).
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path
            .extension()
            .is_some_and(|e| e == "pkl" || e == "pickle")
        {
            return Err(Error::configuration(format!(
                "{}: pickle files are never read; save the program as JSON",
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::configuration(format!("cannot read {}: {e}", path.display())))?;
        let Ok(Value::Object(mut state)) = serde_json::from_str::<Value>(&text) else {
            return Err(Error::configuration(format!(
                "{} is not a program saved in DSPy's JSON format",
                path.display()
            )));
        };
        let metadata = state.remove("metadata").unwrap_or_default();
        let dependency_versions = metadata
            .get("dependency_versions")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let definition = match metadata.get("dspex").and_then(|d| d.get("definition")) {
            Some(definition) => Some(serde_json::from_value(definition.clone()).map_err(|e| {
                Error::configuration(format!(
                    "{}: metadata.dspex.definition is not a program definition: {e}",
                    path.display()
                ))
            })?),
            None => None,
        };
        Ok(Self {
            state,
            dependency_versions,
            definition,
        })
    }

    /// The file's JSON.
    pub fn to_json(&self) -> Value {
        let mut file = self.state.clone();
        let mut metadata = Map::new();
        metadata.insert(
            "dependency_versions".into(),
            Value::Object(self.dependency_versions.clone()),
        );
        if let Some(definition) = &self.definition {
            metadata.insert(
                "dspex".into(),
                serde_json::json!({ "definition": definition }),
            );
        }
        file.insert("metadata".into(), Value::Object(metadata));
        Value::Object(file)
    }

    /// Writes the file (indented, as DSPy writes it).
    ///
    /// # Errors
    /// [`Error::Configuration`] when it cannot be written.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let text = serde_json::to_string_pretty(&self.to_json())
            .map_err(|e| Error::configuration(e.to_string()))?;
        std::fs::write(path, text + "\n")
            .map_err(|e| Error::configuration(format!("cannot write {}: {e}", path.display())))
    }

    /// The signature of the DSPex program it belongs to, when a DSPex
    /// saved it (field kinds are not kept: the wire has none).
    ///
    /// # Errors
    /// [`Error::Validation`] when the saved signature is not valid.
    pub fn signature(&self) -> Result<Option<Signature>> {
        self.definition
            .as_ref()
            .map(|d| Signature::from_spec(&d.signature).map_err(Error::from))
            .transpose()
    }
}
