//! `dspex run`: one program, once.

use anyhow::{Context, Result, bail};
use clap::Args;
use dspex::{Dspex, ExecuteOptions, Module, Signature};
use serde_json::{Map, Value};

/// Options of `dspex run`.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The signature, e.g. "question: str -> answer: str, confidence: float".
    #[arg(long, short)]
    signature: String,
    /// An input as NAME=VALUE (VALUE is JSON if it parses as JSON, else text).
    #[arg(long = "input", short, value_name = "NAME=VALUE")]
    inputs: Vec<String>,
    /// The module: predict, or chain_of_thought (cot).
    #[arg(long, short, default_value = "predict")]
    module: Module,
    /// Instructions for the LM.
    #[arg(long)]
    instructions: Option<String>,
    /// Print the whole prediction as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_inputs(pairs: &[String]) -> Result<Map<String, Value>> {
    let mut inputs = Map::new();
    for pair in pairs {
        let Some((name, value)) = pair.split_once('=') else {
            bail!("--input {pair:?} must be NAME=VALUE");
        };
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
        if inputs.insert(name.trim().to_owned(), value).is_some() {
            bail!("--input {name} is given twice");
        }
    }
    Ok(inputs)
}

pub(crate) async fn run(dspex: Dspex, args: RunArgs) -> Result<()> {
    let mut signature = Signature::parse(&args.signature).context("parsing --signature")?;
    if let Some(instructions) = args.instructions {
        signature = signature.with_instructions(instructions);
    }
    let inputs = parse_inputs(&args.inputs)?;
    dspex.create_program("run", signature, args.module).await?;
    let prediction = dspex
        .execute("run", inputs, ExecuteOptions::default())
        .await?;
    if args.json {
        let report = serde_json::json!({
            "program_id": prediction.program_id,
            "outputs": prediction.outputs,
            "model": prediction.model,
            "latency_ms": prediction.latency.as_secs_f64() * 1e3,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for (name, value) in &prediction.outputs {
            match value {
                Value::String(text) => println!("{name}: {text}"),
                other => println!("{name}: {other}"),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_json_when_they_parse_and_text_otherwise() {
        let inputs = parse_inputs(&[
            "question=What is 2+2?".into(),
            "n=3".into(),
            "tags=[\"a\",\"b\"]".into(),
        ])
        .unwrap();
        assert_eq!(inputs["question"], "What is 2+2?");
        assert_eq!(inputs["n"], 3);
        assert_eq!(inputs["tags"], serde_json::json!(["a", "b"]));
        assert!(parse_inputs(&["novalue".into()]).is_err());
        assert!(parse_inputs(&["a=1".into(), "a=2".into()]).is_err());
    }
}
