//! `dspex eval` and `dspex optimize`: a program scored on a devset, and a
//! program compiled by one of DSPy's optimizers, with a progress bar.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use dspex::{
    Budget, Dataset, Dspex, EvaluateOptions, Evaluation, Job, JobEvent, LmConfig, Metric,
    OptimizeOptions, Optimizer, Signature,
};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::run::ProgramArgs;

/// Options of `dspex eval`.
#[derive(Debug, Args)]
pub(crate) struct EvalArgs {
    #[command(flatten)]
    program: ProgramArgs,
    /// The examples: JSON Lines (one map of field values per line) or CSV
    /// with a header row.
    #[arg(long, value_name = "FILE")]
    devset: PathBuf,
    /// The metric: exact_match:FIELD, f1:FIELD, answer_exact_match or
    /// answer_passage_match.
    #[arg(long, default_value = "exact_match:answer")]
    metric: Metric,
    /// Threads DSPy evaluates on.
    #[arg(long)]
    threads: Option<u32>,
    /// How many of the worst examples to list.
    #[arg(long, default_value_t = 5)]
    worst: usize,
    /// Print the evaluation as JSON.
    #[arg(long)]
    json: bool,
}

/// Options of `dspex optimize`.
#[derive(Debug, Args)]
pub(crate) struct OptimizeArgs {
    #[command(flatten)]
    program: ProgramArgs,
    /// The training examples (JSON Lines or CSV).
    #[arg(long, value_name = "FILE")]
    trainset: PathBuf,
    /// Validation examples (JSON Lines or CSV).
    #[arg(long, value_name = "FILE")]
    valset: Option<PathBuf>,
    /// The metric: exact_match:FIELD, f1:FIELD, answer_exact_match or
    /// answer_passage_match.
    #[arg(long, default_value = "exact_match:answer")]
    metric: Metric,
    /// The optimizer: bootstrap_few_shot, bootstrap_few_shot_with_random_search,
    /// mipro_v2, gepa, copro or simba.
    #[arg(long, default_value = "bootstrap_few_shot")]
    optimizer: Optimizer,
    /// An option of the optimizer as NAME=JSON (e.g. max_labeled_demos=4).
    #[arg(long = "option", value_name = "NAME=VALUE")]
    options: Vec<String>,
    /// The model GEPA reflects with (default: the task's LM).
    #[arg(long, value_name = "MODEL")]
    reflection_lm: Option<String>,
    /// The most metric calls the job may make.
    #[arg(long)]
    max_metric_calls: Option<u64>,
    /// The most LM calls the job may make.
    #[arg(long)]
    max_lm_calls: Option<u64>,
    /// The job's deadline, in seconds.
    #[arg(long, default_value_t = 3600)]
    timeout_secs: u64,
    /// Threads the optimizer evaluates on.
    #[arg(long)]
    threads: Option<u32>,
    /// Where to save the compiled program (DSPy's JSON format).
    #[arg(long, value_name = "FILE.json")]
    out: PathBuf,
}

/// A dataset file, by its extension.
fn dataset(path: &Path, signature: &Signature) -> Result<Dataset> {
    let csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let dataset = if csv {
        Dataset::from_csv(path, signature)
    } else {
        Dataset::from_jsonl(path, signature)
    };
    dataset.with_context(|| format!("reading {}", path.display()))
}

/// Drives a job, showing its progress on a bar (unless `quiet`).
async fn drive<T: Send + Unpin + 'static>(mut job: Job<T>, what: &str, quiet: bool) -> Result<T> {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(what.to_owned());
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    };
    while let Some(event) = job.next().await {
        match event? {
            JobEvent::Progress(progress) => {
                if let Some(total) = progress.total {
                    bar.set_length(total);
                }
                if let Some(done) = progress.done {
                    bar.set_position(done);
                }
                let mut message = progress.message.unwrap_or_else(|| what.to_owned());
                if let Some(score) = progress.score {
                    message.push_str(&format!(" (score {score:.2})"));
                }
                bar.set_message(message);
            }
            JobEvent::Done(result) => {
                bar.finish_and_clear();
                return Ok(result);
            }
        }
    }
    bar.finish_and_clear();
    bail!("the {what} ended without a result")
}

pub(crate) async fn eval(dspex: Dspex, args: EvalArgs) -> Result<()> {
    let signature = args.program.create(&dspex, "eval").await?;
    let devset = dataset(&args.devset, &signature)?;
    let options = EvaluateOptions {
        threads: args.threads,
        ..EvaluateOptions::default()
    };
    let job = dspex.evaluate("eval", &devset, &args.metric, options)?;
    let evaluation = drive(job, "evaluating", args.json).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report(&evaluation))?);
    } else {
        print_evaluation(&evaluation, &devset, args.worst);
    }
    Ok(())
}

fn report(evaluation: &Evaluation) -> Value {
    serde_json::json!({
        "program_id": evaluation.program_id,
        "score": evaluation.score,
        "examples": evaluation.outcomes.len(),
        "failed": evaluation.failed(),
        "usage": evaluation.usage,
        "outcomes": evaluation.outcomes.iter().map(|o| serde_json::json!({
            "index": o.index, "score": o.score, "outputs": o.outputs,
            "feedback": o.feedback, "error": o.error,
        })).collect::<Vec<_>>(),
    })
}

fn print_evaluation(evaluation: &Evaluation, devset: &Dataset, worst: usize) {
    println!(
        "score: {:.2} on {} examples ({} failed)",
        evaluation.score,
        evaluation.outcomes.len(),
        evaluation.failed()
    );
    if worst == 0 || evaluation.outcomes.is_empty() {
        return;
    }
    let mut table = Table::new();
    table
        .load_style(UTF8_FULL_CONDENSED)
        .set_header(["#", "score", "inputs", "expected", "got"]);
    for outcome in evaluation.worst(worst) {
        let example = &devset.examples()[outcome.index];
        let got = match (&outcome.outputs, &outcome.error) {
            (_, Some(error)) => format!("error: {error}"),
            (Some(outputs), None) => compact(&Value::Object(outputs.clone())),
            (None, None) => String::new(),
        };
        table.add_row([
            outcome.index.to_string(),
            format!("{:.2}", outcome.score),
            compact(&Value::Object(example.inputs.clone())),
            compact(&Value::Object(example.labels.clone())),
            got,
        ]);
    }
    println!("worst examples:\n{table}");
}

/// A value on one line, cut to 60 characters.
fn compact(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= 60 {
        return text;
    }
    let cut: String = text.chars().take(57).collect();
    format!("{cut}...")
}

pub(crate) async fn optimize(dspex: Dspex, args: OptimizeArgs) -> Result<()> {
    let signature = args.program.create(&dspex, "optimize").await?;
    let trainset = dataset(&args.trainset, &signature)?;
    let valset = match &args.valset {
        Some(path) => Some(dataset(path, &signature)?),
        None => None,
    };
    let mut optimizer = args.optimizer.clone();
    for pair in &args.options {
        let Some((name, value)) = pair.split_once('=') else {
            bail!("--option {pair:?} must be NAME=VALUE");
        };
        let value: Value =
            serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
        optimizer = optimizer.option(name.trim(), value);
    }
    if optimizer.name() == "gepa" {
        let model = args.reflection_lm.clone();
        let lm = model.map_or_else(cli_dummy, |model| LmConfig {
            model,
            ..LmConfig::default()
        });
        optimizer = optimizer.reflection_lm(lm);
    }
    let options = OptimizeOptions {
        threads: args.threads,
        timeout: Some(Duration::from_secs(args.timeout_secs)),
        budget: Budget {
            max_metric_calls: args.max_metric_calls,
            max_lm_calls: args.max_lm_calls,
        },
        ..OptimizeOptions::default()
    };
    let job = dspex.optimize(
        "optimize",
        optimizer,
        &trainset,
        valset.as_ref(),
        &args.metric,
        options,
    )?;
    let optimized = drive(job, "optimizing", false).await?;
    dspex.save_program("optimize", &args.out).await?;
    let score = optimized
        .score
        .map_or_else(String::new, |s| format!(", best score {s:.2}"));
    println!(
        "compiled with {} in {:.1?}{score}; {} metric calls, {} LM calls; saved to {}",
        optimized.optimizer,
        optimized.duration,
        optimized.metric_calls,
        optimized.lm_calls,
        args.out.display()
    );
    Ok(())
}

/// The offline LM the CLI runs on unless the configuration names one: it
/// follows the examples a compiled program carries, so `optimize` has
/// something to find.
pub(crate) fn cli_dummy() -> LmConfig {
    let mut lm = LmConfig::dummy();
    lm.extra.insert("follow_examples".into(), Value::Bool(true));
    lm
}
