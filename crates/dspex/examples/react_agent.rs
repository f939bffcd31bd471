//! A ReAct agent whose tools are Rust: a calculator and a lookup in a Rust
//! `HashMap`. DSPy runs the agent loop in a Python worker; each time the LM
//! picks a tool, the worker calls back into this process.
//!
//! ```sh
//! cargo run -p dspex --example react_agent                  # offline LM
//! DSPEX_LM=openai/gpt-4o-mini DSPEX_LM_API_KEY=... \
//!     cargo run -p dspex --example react_agent              # a real LM
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use dspex::schemars::JsonSchema;
use dspex::{Dspex, ExecuteOptions, LmConfig, Module, Signature, Tool};
use serde::Deserialize;

/// What the calculator takes.
#[derive(Deserialize, JsonSchema)]
#[schemars(crate = "dspex::schemars")]
struct Arithmetic {
    /// An arithmetic expression, such as `(2 + 3) * 4`.
    expression: String,
}

/// What the lookup takes.
#[derive(Deserialize, JsonSchema)]
#[schemars(crate = "dspex::schemars")]
struct Country {
    /// A country's name, in English.
    country: String,
}

fn calculator() -> Tool {
    Tool::new(
        "calculator",
        "Evaluates an arithmetic expression.",
        |args: Arithmetic| async move {
            evalexpr::eval(&args.expression)
                .map(|value| value.to_string())
                .map_err(|error| format!("cannot evaluate {:?}: {error}", args.expression))
        },
    )
}

fn capitals() -> Tool {
    let known: Arc<HashMap<&str, &str>> = Arc::new(HashMap::from([
        ("france", "Paris"),
        ("japan", "Tokyo"),
        ("kenya", "Nairobi"),
        ("peru", "Lima"),
    ]));
    Tool::new(
        "capital_of",
        "Returns the capital city of a country.",
        move |args: Country| {
            let known = Arc::clone(&known);
            async move {
                known
                    .get(args.country.trim().to_lowercase().as_str())
                    .map(|city| (*city).to_owned())
                    .ok_or_else(|| format!("no capital known for {:?}", args.country))
            }
        },
    )
}

#[tokio::main]
async fn main() -> Result<(), dspex::Error> {
    let mut builder = Dspex::builder()
        .name("react-example")
        .pool_size(1)
        .from_env();
    if builder.current_config().lm.is_none() {
        builder = builder.lm(LmConfig::dummy());
    }
    let dspex = builder.start().await?;
    let signature = Signature::parse("question: str -> answer: str")?
        .with_instructions("Answer with the help of the tools.");
    let agent = Module::react([calculator(), capitals()]).max_iters(6);
    dspex.create_program("agent", signature, agent).await?;
    let prediction = dspex
        .execute(
            "agent",
            serde_json::json!({"question": "How many letters are in the capital of Peru, times 3?"}),
            ExecuteOptions::default(),
        )
        .await?;
    println!("answer: {}", prediction.get::<String>("answer")?);
    let steps: serde_json::Value =
        serde_json::from_str(&prediction.get::<String>("trajectory")?).unwrap_or_default();
    for i in 0.. {
        let Some(tool) = steps.get(format!("tool_name_{i}")) else {
            break;
        };
        println!(
            "step {i}: {tool} {} -> {}",
            steps[format!("tool_args_{i}")],
            steps[format!("observation_{i}")]
        );
    }
    println!("tokens: {:?}", prediction.usage.total());
    dspex.shutdown().await;
    Ok(())
}
