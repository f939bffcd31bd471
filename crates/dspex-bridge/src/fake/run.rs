//! What a fake run of a program does, module by module: the offline
//! semantics the bridge-mock workers and the pure mock adapter share, so
//! their results are equal value for value.
//!
//! | module | what the fake does |
//! |---|---|
//! | `predict`, `python` | one value of each output's type, from a hash of the inputs |
//! | `chain_of_thought` | the same, after a `reasoning` string |
//! | `react` | calls every tool once, in order, with arguments built from its schema; a `trajectory` (JSON text) of the calls and their observations, and `reasoning`; the outputs hash the observations too |
//! | `best_of_n`, `refine` | up to `n` attempts, each scored by the `reward` callback; the first reaching `threshold`, else the best |
//! | `multi_chain_comparison` | a `rationale` string, then the outputs |
//! | `program_of_thought`, `codeact` | refused: they need Deno |

use std::hash::{DefaultHasher, Hash, Hasher};

use dspex_protocol::{CallError, ErrorKind, ProgramDefinition, RemoteError, Value};
use futures::future::BoxFuture;
use serde_json::{Map, json};

/// Runs a callback on the host (a tool, the reward).
pub type CallHost<'a> =
    &'a (dyn Fn(&str, Value) -> BoxFuture<'static, Result<Value, CallError>> + Send + Sync);

/// The module names the fakes know, as the worker normalises them.
fn module_kind(module: &str) -> String {
    let lower = module.trim().to_ascii_lowercase().replace('_', "");
    let lower = lower.strip_prefix("dspy.").unwrap_or(&lower).to_owned();
    match lower.as_str() {
        "cot" => "chainofthought".to_owned(),
        "mcc" => "multichaincomparison".to_owned(),
        "pot" => "programofthought".to_owned(),
        other => other.to_owned(),
    }
}

/// Checks a definition as the worker's `create_program` does (module name
/// and the shape of its `module_args`).
///
/// # Errors
/// `InvalidArguments` naming what is wrong.
pub fn fake_check(program: &ProgramDefinition) -> Result<(), RemoteError> {
    let bad = |message: String, details: Value| {
        let mut error = RemoteError::new(ErrorKind::InvalidArguments, message);
        error.details = Some(details);
        Err(error)
    };
    match module_kind(&program.module).as_str() {
        "predict" | "chainofthought" | "multichaincomparison" | "python" | "bestofn" | "refine" => {
            Ok(())
        }
        "react" => match program.module_args.get("tools") {
            None | Some(Value::Array(_)) => Ok(()),
            Some(_) => bad(
                "module_args.tools must be a list".to_owned(),
                json!({"field": "module_args"}),
            ),
        },
        "programofthought" | "codeact" => bad(
            format!(
                "module {:?} runs generated code in Deno, which this worker does not have",
                program.module
            ),
            json!({"field": "module", "module": program.module, "reason": "needs_deno"}),
        ),
        _ => bad(
            format!("unknown module {:?}", program.module),
            json!({"field": "module", "module": program.module}),
        ),
    }
}

/// Runs `program` on `inputs` the fake way (see the module docs), calling
/// back the host through `call`.
///
/// # Errors
/// As the worker: `InvalidArguments` for a module it refuses, `ToolError`
/// when the reward fails, `Cancelled` when a callback was cancelled.
pub async fn fake_run(
    program: &ProgramDefinition,
    inputs: &Map<String, Value>,
    call: CallHost<'_>,
) -> Result<Map<String, Value>, RemoteError> {
    fake_check(program)?;
    let args = &program.module_args;
    match module_kind(&program.module).as_str() {
        "react" => {
            let tools = args
                .get("tools")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let mut trajectory = Map::new();
            let mut observations = Vec::new();
            for (i, tool) in tools.iter().enumerate() {
                let name = tool.get("name").and_then(Value::as_str).unwrap_or("tool");
                let tool_args = fake_args(tool.get("args").unwrap_or(&Value::Null));
                let observation = match call(name, Value::Object(tool_args.clone())).await {
                    Ok(result) => result,
                    Err(error) if error.kind == ErrorKind::Cancelled => {
                        return Err(RemoteError::new(ErrorKind::Cancelled, error.message));
                    }
                    Err(error) => json!(format!("Execution error in {name}: {}", error.message)),
                };
                trajectory.insert(
                    format!("thought_{i}"),
                    json!(format!("I should use {name}.")),
                );
                trajectory.insert(format!("tool_name_{i}"), json!(name));
                trajectory.insert(format!("tool_args_{i}"), Value::Object(tool_args));
                trajectory.insert(format!("observation_{i}"), observation.clone());
                observations.push(observation);
            }
            let done = tools.len();
            trajectory.insert(format!("thought_{done}"), json!("I can answer now."));
            trajectory.insert(format!("tool_name_{done}"), json!("finish"));
            trajectory.insert(format!("tool_args_{done}"), json!({}));
            trajectory.insert(format!("observation_{done}"), json!("Completed."));
            let seed = seed_of(&json!([inputs, observations]));
            let mut outputs = Map::new();
            outputs.insert(
                "trajectory".into(),
                json!(Value::Object(trajectory).to_string()),
            );
            outputs.insert(
                "reasoning".into(),
                json!(format!("reasoning: {:08x}", seed as u32)),
            );
            outputs.extend(typed_outputs(program, seed));
            Ok(outputs)
        }
        "bestofn" | "refine" => {
            let n = args.get("n").and_then(Value::as_u64).unwrap_or(1).max(1);
            let threshold = args.get("threshold").and_then(Value::as_f64).unwrap_or(1.0);
            let reward = args
                .get("reward")
                .and_then(Value::as_str)
                .unwrap_or("reward");
            let chain = args.get("base").and_then(Value::as_str) == Some("chain_of_thought");
            let mut best: Option<(f64, Map<String, Value>)> = None;
            for attempt in 0..n {
                let seed = seed_of(&json!([inputs, attempt]));
                let mut outputs = Map::new();
                if chain {
                    outputs.insert(
                        "reasoning".into(),
                        json!(format!("reasoning: {:08x}", seed as u32)),
                    );
                }
                outputs.extend(typed_outputs(program, seed));
                let scored = call(
                    reward,
                    json!({"inputs": inputs, "outputs": outputs.clone()}),
                )
                .await
                .map_err(|error| {
                    let mut remote = RemoteError::new(error.kind, error.message);
                    remote.details = error.details;
                    remote
                })?;
                let score = scored.as_f64().unwrap_or(f64::NEG_INFINITY);
                if best.as_ref().is_none_or(|(top, _)| score > *top) {
                    best = Some((score, outputs));
                }
                if score >= threshold {
                    break;
                }
            }
            Ok(best.map(|(_, outputs)| outputs).unwrap_or_default())
        }
        "multichaincomparison" => {
            let seed = seed_of(&json!(inputs));
            let mut outputs = Map::new();
            outputs.insert(
                "rationale".into(),
                json!(format!("rationale: {:08x}", seed as u32)),
            );
            outputs.extend(typed_outputs(program, seed));
            Ok(outputs)
        }
        _ => Ok(fake_outputs(program, inputs)),
    }
}

/// Deterministic outputs of `program` for `inputs`: a value of each output's
/// declared type derived from a hash of the inputs, and a `reasoning` string
/// first for chain-of-thought modules — the shape the real worker's offline
/// `dummy` LM produces.
pub fn fake_outputs(
    program: &ProgramDefinition,
    inputs: &Map<String, Value>,
) -> Map<String, Value> {
    let seed = seed_of(&json!(inputs));
    let mut outputs = Map::new();
    if module_kind(&program.module) == "chainofthought" {
        outputs.insert(
            "reasoning".into(),
            json!(format!("reasoning: {:08x}", seed as u32)),
        );
    }
    outputs.extend(typed_outputs(program, seed));
    outputs
}

/// The pieces a stream of `outputs` is sent in: each text output in two
/// halves, in the order of the map.
pub fn fake_chunks(outputs: &Map<String, Value>) -> Vec<(String, String)> {
    let mut chunks = Vec::new();
    for (field, value) in outputs {
        let Some(text) = value.as_str() else {
            continue;
        };
        let middle = text
            .char_indices()
            .map(|(i, _)| i)
            .nth(text.chars().count() / 2)
            .unwrap_or(text.len());
        let (head, tail) = text.split_at(middle);
        for piece in [head, tail] {
            if !piece.is_empty() {
                chunks.push((field.clone(), piece.to_owned()));
            }
        }
    }
    chunks
}

/// The usage the fake LM reports for one run: a token per word of the
/// inputs (the prompt) and of the outputs (the completion).
pub fn fake_usage(model: &str, inputs: &Map<String, Value>, outputs: &Map<String, Value>) -> Value {
    let words = |map: &Map<String, Value>| {
        map.values()
            .map(|v| match v {
                Value::String(text) => text.split_whitespace().count() as u64,
                other => other.to_string().split_whitespace().count() as u64,
            })
            .sum::<u64>()
    };
    let (prompt, completion) = (words(inputs), words(outputs));
    json!({model: {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }})
}

pub(super) fn seed_of(value: &Value) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.to_string().hash(&mut hasher);
    hasher.finish()
}

pub(super) fn typed_outputs(program: &ProgramDefinition, seed: u64) -> Map<String, Value> {
    program
        .signature
        .outputs
        .iter()
        .map(|field| (field.name.clone(), fake_value(&field.name, &field.ty, seed)))
        .collect()
}

/// Arguments fitting a tool's object schema: every property, with a value
/// of its type.
fn fake_args(schema: &Value) -> Map<String, Value> {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|properties| {
            properties
                .iter()
                .map(|(name, property)| (name.clone(), fake_json(name, property)))
                .collect()
        })
        .unwrap_or_default()
}

fn fake_json(name: &str, schema: &Value) -> Value {
    let ty = match schema.get("type") {
        Some(Value::Array(types)) => types
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("string")
            .to_owned(),
        Some(Value::String(t)) => t.clone(),
        _ => "string".to_owned(),
    };
    if let Some(Value::Array(members)) = schema.get("enum")
        && let Some(first) = members.first()
    {
        return first.clone();
    }
    match ty.as_str() {
        "integer" => json!(2),
        "number" => json!(2.5),
        "boolean" => json!(true),
        "array" => json!([fake_json(name, schema.get("items").unwrap_or(&Value::Null))]),
        "object" => Value::Object(fake_args(schema)),
        _ => json!(format!("{name}-1")),
    }
}

/// A deterministic value of the declared type.
pub(super) fn fake_value(name: &str, ty: &str, seed: u64) -> Value {
    let ty = ty.trim();
    let inner = |prefix: &str| {
        ty.strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(']'))
            .map(str::trim)
    };
    if let Some(inner) = inner("optional[") {
        return fake_value(name, inner, seed);
    }
    if let Some(inner) = inner("list[") {
        return json!([
            fake_value(name, inner, seed),
            fake_value(name, inner, seed / 3)
        ]);
    }
    if let Some(inner) = inner("dict[") {
        let value_ty = inner.split_once(',').map_or("str", |(_, v)| v.trim());
        return json!({"k0": fake_value(name, value_ty, seed)});
    }
    if let Some(inner) = inner("literal[") {
        let members: Vec<&str> = inner.split('|').map(str::trim).collect();
        let pick = usize::try_from(seed % members.len().max(1) as u64).unwrap_or(0);
        return json!(members.get(pick).copied().unwrap_or_default());
    }
    match ty {
        "int" => json!(seed % 1000),
        // In [0, 1): fits probabilities and confidence scores too.
        "float" => json!((seed % 10_000) as f64 / 10_000.0),
        "bool" => json!(seed % 2 == 1),
        "history" => json!({"messages": []}),
        _ => json!(format!("{name}: {:08x}", seed as u32)),
    }
}
