//! `dspex run`: one program, once; and the program arguments `run`, `eval`
//! and `optimize` share.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use dspex::{
    Base, Dspex, ExecuteOptions, FieldType, Module, Prediction, SavedProgram, Signature,
    StreamEvent,
};
use futures::StreamExt;
use serde_json::{Map, Value};

use crate::tools;

/// The program a command runs: a signature and a module, or a saved
/// program (`--program`).
#[derive(Debug, Args)]
pub(crate) struct ProgramArgs {
    /// The signature, e.g. "question: str -> answer: str, confidence: float"
    /// (default: the one saved in --program).
    #[arg(long, short)]
    signature: Option<String>,
    /// The module: predict, cot, react (with the `calculator` and `lookup`
    /// tools), best_of_n, refine (rewarding complete outputs), mcc, or
    /// python:package.module:Class (from --project). Default: the one saved
    /// in --program, else predict.
    #[arg(long, short)]
    module: Option<String>,
    /// A program saved in DSPy's JSON format (by `dspex optimize --out`, or
    /// by `program.save(path)` in Python): its compiled state is loaded.
    #[arg(long, value_name = "FILE.json")]
    program: Option<PathBuf>,
    /// Attempts of best_of_n and refine; the reasoning attempts of mcc.
    #[arg(long, default_value_t = 3)]
    n: u32,
    /// Iterations a react program may take.
    #[arg(long, default_value_t = 10)]
    max_iters: u32,
    /// Facts the `lookup` tool knows: a JSON file of {"key": value}.
    #[arg(long, value_name = "FILE")]
    facts: Option<PathBuf>,
    /// The constructor's keyword arguments of a python module (a JSON map).
    #[arg(long, value_name = "JSON")]
    kwargs: Option<String>,
    /// Few-shot examples: a JSON Lines file, one map of field values per line.
    #[arg(long, value_name = "FILE.jsonl")]
    demos: Option<PathBuf>,
    /// Instructions for the LM.
    #[arg(long)]
    instructions: Option<String>,
}

/// Options of `dspex run`.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    program: ProgramArgs,
    /// An input as NAME=VALUE. For a text field VALUE is the text as given;
    /// for any other field it is JSON.
    #[arg(long = "input", short, value_name = "NAME=VALUE")]
    inputs: Vec<String>,
    /// Print the output fields as the LM writes them.
    #[arg(long)]
    stream: bool,
    /// Print the whole prediction as JSON (with its LM usage).
    #[arg(long)]
    json: bool,
}

/// The modules `dspex run` can build from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    Predict,
    #[value(alias = "chain_of_thought")]
    Cot,
    React,
    #[value(name = "best_of_n", alias = "best-of-n")]
    BestOfN,
    Refine,
    #[value(alias = "multi_chain_comparison")]
    Mcc,
    #[value(name = "program_of_thought", alias = "pot")]
    ProgramOfThought,
    #[value(alias = "code_act")]
    Codeact,
}

impl ProgramArgs {
    /// Creates the program `id` these arguments describe (its compiled
    /// state loaded from --program, its demos from --demos) and returns
    /// its signature.
    pub(crate) async fn create(&self, dspex: &Dspex, id: &str) -> Result<Signature> {
        let saved = match &self.program {
            Some(path) => Some(SavedProgram::read(path)?),
            None => None,
        };
        let mut signature = match (&self.signature, &saved) {
            (Some(text), _) => Signature::parse(text).context("parsing --signature")?,
            (None, Some(saved)) => saved.signature()?.with_context(
                || "--program was not saved by DSPex: give its --signature and --module",
            )?,
            (None, None) => bail!("give a --signature (or a saved --program)"),
        };
        if let Some(instructions) = &self.instructions {
            signature = signature.with_instructions(instructions.clone());
        }
        let module_name = match (&self.module, &saved) {
            (Some(name), _) => name.clone(),
            (None, Some(saved)) => saved
                .definition
                .as_ref()
                .map_or_else(|| "predict".to_owned(), saved_module),
            (None, None) => "predict".to_owned(),
        };
        let module = self.build_module(&module_name)?;
        match &self.program {
            Some(path) => {
                dspex
                    .load_program(id, signature.clone(), module, path)
                    .await?;
            }
            None => {
                dspex.create_program(id, signature.clone(), module).await?;
            }
        }
        if let Some(path) = &self.demos {
            dspex.set_demos(id, read_demos(path)?).await?;
        }
        Ok(signature)
    }

    fn build_module(&self, name: &str) -> Result<Module> {
        let name = name.trim();
        if let Some(path) = name.strip_prefix("python:") {
            let mut module = Module::python(path);
            if let Some(kwargs) = &self.kwargs {
                let kwargs: Value = serde_json::from_str(kwargs).context("parsing --kwargs")?;
                module = module.kwargs(kwargs);
            }
            return Ok(module.into());
        }
        let kind = Kind::from_str(name, true).map_err(|_| {
            anyhow::anyhow!(
                "unknown --module {name:?}: use predict, cot, react, best_of_n, refine, mcc, \
                 program_of_thought, codeact or python:package.module:Class"
            )
        })?;
        Ok(match kind {
            Kind::Predict => Module::Predict,
            Kind::Cot => Module::ChainOfThought,
            Kind::React => {
                let facts = match &self.facts {
                    Some(path) => read_facts(path)?,
                    None => HashMap::new(),
                };
                Module::react([tools::calculator(), tools::lookup(facts)])
                    .max_iters(self.max_iters)
                    .into()
            }
            Kind::BestOfN => Module::best_of_n(self.n, tools::complete_outputs()).into(),
            Kind::Refine => Module::refine(self.n, tools::complete_outputs())
                .base(Base::ChainOfThought)
                .into(),
            Kind::Mcc => Module::multi_chain_comparison(self.n).into(),
            Kind::ProgramOfThought => Module::ProgramOfThought,
            Kind::Codeact => Module::CodeAct,
        })
    }
}

/// The `--module` word of a saved DSPex definition.
fn saved_module(definition: &dspex::protocol::ProgramDefinition) -> String {
    match definition.module.as_str() {
        "python" => format!(
            "python:{}",
            definition
                .module_args
                .get("path")
                .and_then(Value::as_str)
                .unwrap_or("")
        ),
        "chain_of_thought" => "cot".to_owned(),
        "multi_chain_comparison" => "mcc".to_owned(),
        other => other.to_owned(),
    }
}

fn read_facts(path: &Path) -> Result<HashMap<String, Value>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --facts {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("--facts {} must be a JSON map", path.display()))
}

fn read_demos(path: &Path) -> Result<Vec<Map<String, Value>>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --demos {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line)
                .with_context(|| format!("{} line {}: not a JSON map", path.display(), i + 1))
        })
        .collect()
}

/// `NAME=VALUE` pairs as inputs: text for a text field (a `str`, even
/// when it would parse as JSON), JSON for any other.
fn parse_inputs(signature: &Signature, pairs: &[String]) -> Result<Map<String, Value>> {
    let mut inputs = Map::new();
    for pair in pairs {
        let Some((name, value)) = pair.split_once('=') else {
            bail!("--input {pair:?} must be NAME=VALUE");
        };
        let name = name.trim();
        let text = signature
            .input(name)
            .is_some_and(|field| field.ty().without_optional() == &FieldType::Str);
        let value = if text {
            Value::String(value.to_owned())
        } else {
            serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()))
        };
        if inputs.insert(name.to_owned(), value).is_some() {
            bail!("--input {name} is given twice");
        }
    }
    Ok(inputs)
}

pub(crate) async fn run(dspex: Dspex, args: RunArgs) -> Result<()> {
    let signature = args.program.create(&dspex, "run").await?;
    let inputs = parse_inputs(&signature, &args.inputs)?;
    let options = ExecuteOptions::default();
    let prediction = if args.stream {
        stream(&dspex, inputs, options, args.json).await?
    } else {
        dspex.execute("run", inputs, options).await?
    };
    if args.json {
        let report = serde_json::json!({
            "program_id": prediction.program_id,
            "outputs": prediction.outputs,
            "model": prediction.model,
            "usage": prediction.usage,
            "latency_ms": prediction.latency.as_secs_f64() * 1e3,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !args.stream {
        print_outputs(&prediction, &[]);
    }
    Ok(())
}

/// Runs the program streaming, printing each field's text as it arrives
/// (unless `quiet`), then the fields that were not streamed.
async fn stream(
    dspex: &Dspex,
    inputs: Map<String, Value>,
    options: ExecuteOptions,
    quiet: bool,
) -> Result<Prediction> {
    let mut stream = dspex.execute_stream("run", inputs, options)?;
    let mut streamed: Vec<String> = Vec::new();
    let mut out = std::io::stdout();
    while let Some(event) = stream.next().await {
        match event? {
            StreamEvent::Chunk(chunk) => {
                if quiet {
                    continue;
                }
                if streamed.last() != Some(&chunk.field) {
                    if !streamed.is_empty() {
                        writeln!(out)?;
                    }
                    write!(out, "{}: ", chunk.field)?;
                    streamed.push(chunk.field.clone());
                }
                write!(out, "{}", chunk.text)?;
                out.flush()?;
            }
            StreamEvent::Prediction(prediction) => {
                if !streamed.is_empty() {
                    writeln!(out)?;
                }
                if !quiet {
                    print_outputs(&prediction, &streamed);
                }
                return Ok(prediction);
            }
        }
    }
    bail!("the stream ended without a prediction")
}

fn print_outputs(prediction: &Prediction, skip: &[String]) {
    for (name, value) in &prediction.outputs {
        if skip.contains(name) {
            continue;
        }
        match value {
            Value::String(text) => println!("{name}: {text}"),
            other => println!("{name}: {other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_input_stays_text_and_others_are_json() {
        let signature =
            Signature::parse("question: str, n: int, tags: list[str], note: optional[str] -> a")
                .unwrap();
        let inputs = parse_inputs(
            &signature,
            &[
                "question=42".into(),
                "n=3".into(),
                "tags=[\"a\",\"b\"]".into(),
                "note=[1]".into(),
            ],
        )
        .unwrap();
        assert_eq!(inputs["question"], "42");
        assert_eq!(inputs["n"], 3);
        assert_eq!(inputs["tags"], serde_json::json!(["a", "b"]));
        assert_eq!(inputs["note"], "[1]");
        assert!(parse_inputs(&signature, &["novalue".into()]).is_err());
        assert!(parse_inputs(&signature, &["n=1".into(), "n=2".into()]).is_err());
    }

    fn args() -> ProgramArgs {
        ProgramArgs {
            signature: Some("q -> a".into()),
            module: None,
            program: None,
            n: 3,
            max_iters: 4,
            facts: None,
            kwargs: Some("{\"k\": 2}".into()),
            demos: None,
            instructions: None,
        }
    }

    #[test]
    fn every_module_name_builds() {
        for (name, built) in [
            ("predict", "predict"),
            ("cot", "chain_of_thought"),
            ("chain_of_thought", "chain_of_thought"),
            ("react", "react"),
            ("best_of_n", "best_of_n"),
            ("refine", "refine"),
            ("mcc", "multi_chain_comparison"),
            ("pot", "program_of_thought"),
            ("codeact", "codeact"),
            ("python:app.rag:RAG", "python"),
        ] {
            assert_eq!(args().build_module(name).unwrap().name(), built, "{name}");
        }
        assert!(args().build_module("nope").is_err());
    }
}
