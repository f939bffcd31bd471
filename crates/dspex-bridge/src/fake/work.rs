//! The fakes' commands on programs — `execute_program`, `execute_batch`,
//! `evaluate`, `optimize`, `get_program_state` — over the module semantics
//! of [`super::fake_run`], shared by the bridge-mock workers and the mock
//! adapter.
//!
//! The fake LM ([`FakeLm`]) answers as [`super::fake_outputs`] says; with
//! `follow_examples` it answers a demo's labels when the inputs match one,
//! as the real offline LM does. A fake optimization compiles the simplest
//! way DSPy's `bootstrap_few_shot` can: the training examples become the
//! demos of the compiled state (so a following LM then answers them), each
//! scored once with the metric.

use dspex_protocol::{ErrorKind, ProgramDefinition, RemoteError, Value};
use serde_json::{Map, json};

use super::run::{CallHost, fake_chunks, fake_run, fake_usage};

/// The fake LM a request runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeLm {
    /// Its model name.
    pub model: String,
    /// Answer a matching demo's labels (the offline LM's `follow_examples`).
    pub follow_examples: bool,
    /// Simulated time per call (the offline LM's `latency_ms`).
    pub latency: std::time::Duration,
}

impl FakeLm {
    /// The LM a `configure_lm`-shaped map describes (`None` without a
    /// `model`).
    pub fn from_config(config: &Map<String, Value>) -> Option<Self> {
        Some(Self {
            model: config.get("model")?.as_str()?.to_owned(),
            follow_examples: config.get("follow_examples").and_then(Value::as_bool) == Some(true),
            latency: std::time::Duration::from_millis(
                config
                    .get("latency_ms")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
            ),
        })
    }
}

/// The optimizers the fakes accept (the worker's names).
const OPTIMIZERS: [&str; 6] = [
    "bootstrap_few_shot",
    "bootstrap_few_shot_with_random_search",
    "mipro_v2",
    "gepa",
    "copro",
    "simba",
];

/// Runs `command` (one of the commands above) of `program` with the
/// command's `args` on the LM `lm`: the reply the worker sends, its events
/// sent through `event`.
///
/// # Errors
/// As the worker's (a batch or an evaluation reports each item's error in
/// its result).
pub async fn fake_execute(
    program: &ProgramDefinition,
    command: &str,
    args: &Map<String, Value>,
    lm: &FakeLm,
    host: CallHost<'_>,
    event: &(dyn Fn(&str, Value) + Send + Sync),
) -> Result<Value, RemoteError> {
    let model = lm.model.as_str();
    match command {
        "execute_batch" => {
            let all = list(args, "inputs");
            let mut results = Vec::with_capacity(all.len());
            let mut usage = Usage::default();
            for (done, inputs) in all.iter().enumerate() {
                let inputs = inputs.as_object().cloned().unwrap_or_default();
                let result = match run_one(program, &inputs, lm, host).await {
                    Ok(outputs) => {
                        let used = fake_usage(model, &inputs, &outputs);
                        usage.add(&used[model]);
                        json!({"outputs": outputs, "usage": used})
                    }
                    Err(error) => json!({"error": error}),
                };
                results.push(result);
                event("progress", json!({"done": done + 1, "total": all.len()}));
            }
            Ok(json!({
                "program_id": program.program_id, "results": results,
                "usage": usage.by(model), "duration_ms": 0.0, "model": model,
            }))
        }
        "evaluate" => {
            let devset = examples(args, "devset")?;
            let metric = args.get("metric").cloned().unwrap_or(Value::Null);
            let (score, results, usage) =
                evaluate(program, &devset, &metric, lm, host, event).await?;
            Ok(json!({
                "program_id": program.program_id, "score": score, "results": results,
                "usage": usage.by(model), "duration_ms": 0.0, "model": model,
            }))
        }
        "optimize" => optimize(program, args, lm, host, event).await,
        "get_program_state" => Ok(json!({
            "program_id": program.program_id,
            "state": fake_state(program, demos_of(program)),
            "dependency_versions": fake_versions(),
        })),
        _ => {
            let inputs = args
                .get("inputs")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let outputs = run_one(program, &inputs, lm, host).await?;
            if args.get("stream").and_then(Value::as_bool) == Some(true) {
                for (field, text) in fake_chunks(&outputs) {
                    event("chunk", json!({"field": field, "text": text}));
                }
            }
            let usage = fake_usage(model, &inputs, &outputs);
            Ok(json!({
                "program_id": program.program_id, "outputs": outputs, "duration_ms": 0.0,
                "model": model, "usage": usage,
            }))
        }
    }
}

/// What the fakes report as `dependency_versions`.
fn fake_versions() -> Value {
    json!({"python": "fake", "dspy": "fake", "cloudpickle": "fake"})
}

#[derive(Default)]
struct Usage {
    prompt: u64,
    completion: u64,
}

impl Usage {
    fn add(&mut self, used: &Value) {
        self.prompt += used["prompt_tokens"].as_u64().unwrap_or(0);
        self.completion += used["completion_tokens"].as_u64().unwrap_or(0);
    }

    fn by(&self, model: &str) -> Value {
        json!({model: {
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
        }})
    }
}

fn list(args: &Map<String, Value>, key: &str) -> Vec<Value> {
    args.get(key)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// An example: its inputs and labels.
type Pair = (Map<String, Value>, Map<String, Value>);

/// A dataset argument.
type Examples = Vec<Pair>;

/// An example and the outputs the program gave it.
type Scored<'a> = (&'a Pair, &'a Map<String, Value>);

fn examples(args: &Map<String, Value>, key: &str) -> Result<Examples, RemoteError> {
    list(args, key)
        .iter()
        .enumerate()
        .map(|(index, example)| {
            let part = |name: &str| example.get(name).and_then(Value::as_object).cloned();
            part("inputs")
                .map(|inputs| (inputs, part("labels").unwrap_or_default()))
                .ok_or_else(|| {
                    invalid(
                        format!("{key}[{index}] must be a map with `inputs`"),
                        json!({"field": key, "index": index}),
                    )
                })
        })
        .collect()
}

fn invalid(message: String, details: Value) -> RemoteError {
    let mut error = RemoteError::new(ErrorKind::InvalidArguments, message);
    error.details = Some(details);
    error
}

/// One run: the inputs checked as the worker checks them, then the module,
/// then (for an LM that follows examples) a matching demo's labels.
async fn run_one(
    program: &ProgramDefinition,
    inputs: &Map<String, Value>,
    lm: &FakeLm,
    host: CallHost<'_>,
) -> Result<Map<String, Value>, RemoteError> {
    for field in &program.signature.inputs {
        if !field.optional && !inputs.contains_key(&field.name) {
            return Err(invalid(
                format!("missing input `{}`", field.name),
                json!({"field": field.name}),
            ));
        }
    }
    if !lm.latency.is_zero() {
        tokio::time::sleep(lm.latency).await;
    }
    let mut outputs = fake_run(program, inputs, host).await?;
    if lm.follow_examples {
        let matching = demos_of(program).into_iter().find(|demo| {
            program
                .signature
                .inputs
                .iter()
                .all(|field| demo.get(&field.name) == inputs.get(&field.name))
        });
        if let Some(demo) = matching {
            for field in &program.signature.outputs {
                if let Some(value) = demo.get(&field.name) {
                    outputs.insert(field.name.clone(), value.clone());
                }
            }
        }
    }
    Ok(outputs)
}

/// The demos a definition runs with: those its state carries when it has
/// one (the state wins, as in the worker), else its `demos`.
fn demos_of(program: &ProgramDefinition) -> Vec<Map<String, Value>> {
    fn collect(value: &Value, out: &mut Vec<Map<String, Value>>) {
        match value {
            Value::Object(map) => {
                for (key, inner) in map {
                    match (key.as_str(), inner) {
                        ("demos", Value::Array(demos)) => {
                            out.extend(demos.iter().filter_map(Value::as_object).cloned());
                        }
                        _ => collect(inner, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| collect(item, out)),
            _ => {}
        }
    }
    if let Some(state) = &program.state {
        let mut demos = Vec::new();
        collect(state, &mut demos);
        return demos;
    }
    program
        .demos
        .iter()
        .filter_map(Value::as_object)
        .cloned()
        .collect()
}

/// The state a fake dumps: one predictor's (`predict` modules flat, the
/// others under `predict`), with `demos`.
fn fake_state(program: &ProgramDefinition, demos: Vec<Map<String, Value>>) -> Value {
    let fields: Vec<Value> = program
        .signature
        .inputs
        .iter()
        .chain(&program.signature.outputs)
        .map(|field| {
            let mut prefix = field.name.replace('_', " ");
            if let Some(first) = prefix.get_mut(0..1) {
                first.make_ascii_uppercase();
            }
            json!({"prefix": format!("{prefix}:"), "description": field.description.clone().unwrap_or_default()})
        })
        .collect();
    let predictor = json!({
        "traces": [], "train": [], "demos": demos, "lm": null,
        "signature": {"instructions": program.signature.instructions, "fields": fields},
    });
    if program.module == "predict" {
        predictor
    } else {
        json!({"predict": predictor})
    }
}

/// Scores `devset` (see [`score`]); the DSPy percentage, each item's
/// result, and the usage.
async fn evaluate(
    program: &ProgramDefinition,
    devset: &Examples,
    metric: &Value,
    lm: &FakeLm,
    host: CallHost<'_>,
    event: &(dyn Fn(&str, Value) + Send + Sync),
) -> Result<(f64, Vec<Value>, Usage), RemoteError> {
    let mut usage = Usage::default();
    let mut ran = Vec::with_capacity(devset.len());
    for (inputs, _) in devset {
        let result = run_one(program, inputs, lm, host).await;
        if let Ok(outputs) = &result {
            usage.add(&fake_usage(&lm.model, inputs, outputs)[&lm.model]);
        }
        ran.push(result);
    }
    let scored: Vec<Scored<'_>> = devset
        .iter()
        .zip(&ran)
        .filter_map(|(example, result)| Some((example, result.as_ref().ok()?)))
        .collect();
    let mut scores = score(metric, &scored, host).await?.into_iter();
    let mut results = Vec::with_capacity(devset.len());
    let mut total = 0.0;
    for (done, result) in ran.into_iter().enumerate() {
        let entry = match result {
            Ok(outputs) => {
                let (value, feedback, error) = scores.next().unwrap_or((0.0, None, None));
                total += value;
                let mut entry = json!({"outputs": outputs, "score": value});
                if let Some(feedback) = feedback {
                    entry["feedback"] = json!(feedback);
                }
                if let Some(error) = error {
                    entry["error"] = json!({"kind": "MetricError", "message": error});
                }
                entry
            }
            Err(error) => json!({"score": 0.0, "error": error}),
        };
        results.push(entry);
        let running = total / (done + 1) as f64;
        event(
            "progress",
            json!({"done": done + 1, "total": devset.len(), "score": percent(running)}),
        );
    }
    let score = if devset.is_empty() {
        0.0
    } else {
        percent(total / devset.len() as f64)
    };
    Ok((score, results, usage))
}

/// DSPy's percentage: `round(100 * x, 2)`.
fn percent(x: f64) -> f64 {
    (x * 10_000.0).round() / 100.0
}

/// Each item's score, feedback and error under `metric`: a builtin, or the
/// host's metric called back in batches.
async fn score(
    metric: &Value,
    items: &[Scored<'_>],
    host: CallHost<'_>,
) -> Result<Vec<(f64, Option<String>, Option<String>)>, RemoteError> {
    if let Some(callback) = metric.get("callback").and_then(Value::as_str) {
        let batch = metric
            .get("batch")
            .and_then(Value::as_u64)
            .unwrap_or(64)
            .clamp(1, 1024) as usize;
        let mut scores = Vec::with_capacity(items.len());
        for chunk in items.chunks(batch) {
            let payload: Vec<Value> = chunk
                .iter()
                .map(|((inputs, labels), outputs)| {
                    json!({"example": {"inputs": inputs, "labels": labels}, "prediction": outputs})
                })
                .collect();
            let answer = host(callback, json!({"items": payload})).await;
            let answered = answer
                .ok()
                .and_then(|a| a.get("scores").and_then(Value::as_array).cloned());
            for i in 0..chunk.len() {
                let entry = answered.as_ref().and_then(|s| s.get(i));
                scores.push(match entry {
                    Some(Value::Number(n)) => (n.as_f64().unwrap_or(0.0), None, None),
                    Some(Value::Object(o)) if o.contains_key("error") => {
                        (0.0, None, Some(o["error"].to_string()))
                    }
                    Some(Value::Object(o)) => (
                        o.get("score").and_then(Value::as_f64).unwrap_or(0.0),
                        o.get("feedback").and_then(Value::as_str).map(str::to_owned),
                        None,
                    ),
                    _ => (0.0, None, Some("the metric gave no score".to_owned())),
                });
            }
        }
        return Ok(scores);
    }
    let name = metric.get("builtin").and_then(Value::as_str).unwrap_or("");
    let field = match name {
        "exact_match" | "f1" => metric
            .get("field")
            .and_then(Value::as_str)
            .unwrap_or("answer"),
        "answer_exact_match" | "answer_passage_match" => "answer",
        other => {
            return Err(invalid(
                format!("unknown metric {other:?}"),
                json!({"field": "metric"}),
            ));
        }
    };
    Ok(items
        .iter()
        .map(|((_, labels), outputs)| {
            let (gold, guess) = (text(labels.get(field)), text(outputs.get(field)));
            let value = match name {
                "f1" => token_f1(&gold, &guess),
                "answer_passage_match" => f64::from(u8::from(
                    outputs
                        .values()
                        .any(|v| normalize(&text(Some(v))).contains(&normalize(&gold))),
                )),
                _ => f64::from(u8::from(normalize(&gold) == normalize(&guess))),
            };
            (value, None, None)
        })
        .collect())
}

fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

/// DSPy's `normalize_text`, roughly: lower case, no punctuation, no
/// articles, single spaces.
fn normalize(text: &str) -> String {
    text.to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect::<String>()
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn token_f1(gold: &str, guess: &str) -> f64 {
    let gold: Vec<String> = normalize(gold).split(' ').map(str::to_owned).collect();
    let guess: Vec<String> = normalize(guess).split(' ').map(str::to_owned).collect();
    let mut remaining = gold.clone();
    let common = guess
        .iter()
        .filter(|word| {
            remaining
                .iter()
                .position(|w| w == *word)
                .map(|i| remaining.swap_remove(i))
                .is_some()
        })
        .count();
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / guess.len() as f64;
    let recall = common as f64 / gold.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// A fake optimization (see the module docs), with the worker's checks of
/// the optimizer's name and the job's budget.
async fn optimize(
    program: &ProgramDefinition,
    args: &Map<String, Value>,
    lm: &FakeLm,
    host: CallHost<'_>,
    event: &(dyn Fn(&str, Value) + Send + Sync),
) -> Result<Value, RemoteError> {
    let optimizer = args.get("optimizer").and_then(Value::as_str).unwrap_or("");
    if !OPTIMIZERS.contains(&optimizer) {
        return Err(invalid(
            format!("unknown optimizer {optimizer:?}"),
            json!({"field": "optimizer"}),
        ));
    }
    let trainset = examples(args, "trainset")?;
    let metric = args.get("metric").cloned().unwrap_or(Value::Null);
    let budget = args.get("budget").cloned().unwrap_or(Value::Null);
    for (limit, used) in [
        ("max_metric_calls", trainset.len()),
        ("max_lm_calls", trainset.len()),
    ] {
        if let Some(max) = budget.get(limit).and_then(Value::as_u64)
            && (used as u64) > max
        {
            let mut error = RemoteError::new(
                ErrorKind::BudgetExceeded,
                format!("the job needs {used} of {limit}, over its budget of {max}"),
            );
            error.details = Some(json!({"budget": limit, "limit": max, "used": max + 1}));
            return Err(error);
        }
    }
    event(
        "progress",
        json!({"message": "bootstrapping", "done": 0, "total": trainset.len()}),
    );
    let (_, results, _) = evaluate(program, &trainset, &metric, lm, host, &|_, _| {}).await?;
    event(
        "progress",
        json!({"message": "bootstrapped", "done": trainset.len(), "total": trainset.len()}),
    );
    let demos: Vec<Map<String, Value>> = trainset
        .iter()
        .map(|(inputs, labels)| {
            let mut demo = inputs.clone();
            demo.extend(labels.clone());
            demo
        })
        .collect();
    let mut compiled = program.clone();
    compiled.state = Some(fake_state(program, demos));
    let score = match examples(args, "valset")? {
        valset if !valset.is_empty() => Some(
            evaluate(&compiled, &valset, &metric, lm, host, &|_, _| {})
                .await?
                .0,
        ),
        _ => None,
    };
    Ok(json!({
        "program_id": program.program_id,
        "state": compiled.state,
        "dependency_versions": fake_versions(),
        "optimizer": optimizer,
        "score": score,
        "metric_calls": results.len(),
        "lm_calls": trainset.len(),
        "duration_ms": 0.0,
    }))
}
