//! The `dspex` command.
//!
//! - `dspex demo`: starts a single-bridge supervision tree, configures the
//!   offline `dummy` LM, creates a program and runs it.
//! - `dspex doctor`: reports the Python environment the workers would use.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use dspex_bridge::conditional::check_environment;
use dspex_bridge::{
    BridgeConfig, CallOptions, ConditionalSupervisor, PythonConfig, PythonEnv, TreeConfig,
};
use dspex_protocol::{
    Command, ExecuteArgs, FieldSpec, LmConfig, ProgramDefinition, SignatureSpec, Value,
};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(
    name = "dspex",
    version,
    about = "Run DSPy programs from Rust through supervised Python workers"
)]
struct Cli {
    /// The Python interpreter to use as is (default: DSPEX_PYTHON, else a
    /// managed environment created on first use).
    #[arg(long, global = true)]
    python: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start a worker, run a program on the offline `dummy` LM, print the result.
    Demo {
        /// The question to ask.
        #[arg(long, default_value = "What is the capital of France?")]
        question: String,
        /// Print the raw results as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Report the Python environment and check that a worker starts.
    Doctor,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DSPEX_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let python = PythonConfig {
        interpreter: cli.python.clone(),
        ..PythonConfig::default()
    };
    match cli.command {
        Cmd::Demo { question, json } => demo(python, &question, json).await,
        Cmd::Doctor => doctor(python).await,
    }
}

/// A single-bridge tree under the conditional supervisor, as a service would
/// start it.
async fn start_tree(python: PythonConfig) -> Result<ConditionalSupervisor> {
    let config = BridgeConfig {
        name: "dspex-demo".into(),
        python,
        ..BridgeConfig::default()
    };
    ConditionalSupervisor::start(TreeConfig::Single(config))
        .await
        .context("starting the supervision tree")
}

async fn demo(python: PythonConfig, question: &str, as_json: bool) -> Result<()> {
    let started = Instant::now();
    let tree = start_tree(python).await?;
    let result = run_demo(&tree, question, as_json, started).await;
    tree.shutdown(Duration::from_secs(10)).await;
    result
}

async fn run_demo(
    tree: &ConditionalSupervisor,
    question: &str,
    as_json: bool,
    started: Instant,
) -> Result<()> {
    let bridge = tree.serving_bridge()?;
    let worker = bridge
        .ready_worker(Duration::from_secs(120))
        .await
        .context("waiting for the worker")?;
    let ready = match worker.state() {
        dspex_bridge::WorkerState::Ready(ready) => ready,
        other => bail!("worker not ready: {other:?}"),
    };
    let boot = started.elapsed();
    let opts = CallOptions::default;

    let ping = worker.call(Command::Ping, opts()).await?;
    worker
        .call(Command::ConfigureLm(LmConfig::dummy()), opts())
        .await?;
    let program = ProgramDefinition {
        program_id: "qa".into(),
        signature: SignatureSpec {
            name: "QuestionAnswer".into(),
            instructions: "Answer the question and rate your confidence.".into(),
            inputs: vec![FieldSpec::new("question", "str")],
            outputs: vec![
                FieldSpec::new("answer", "str"),
                FieldSpec::new("confidence", "float"),
            ],
        },
        module: "chain_of_thought".into(),
        demos: vec![],
    };
    let created = worker.call(Command::CreateProgram(program), opts()).await?;
    let t = Instant::now();
    let inputs = json!({ "question": question });
    let Value::Object(inputs) = inputs else {
        bail!("inputs must be a map");
    };
    let executed = worker
        .call(
            Command::ExecuteProgram(ExecuteArgs {
                program_id: "qa".into(),
                inputs,
                program: None,
                lm: None,
            }),
            opts(),
        )
        .await?;
    let run = t.elapsed();

    if as_json {
        let report = json!({
            "ready": { "pid": ready.pid, "python": ready.python, "dspy": ready.dspy },
            "ping": ping, "create_program": created, "execute_program": executed,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "worker {} ready in {:.0} ms (pid {}, Python {}, DSPy {})",
        ready.worker_id.as_deref().unwrap_or("?"),
        boot.as_secs_f64() * 1e3,
        ready.pid,
        ready.python,
        ready.dspy.as_deref().unwrap_or("not installed"),
    );
    println!("ping            -> {ping}");
    println!("create_program  -> {created}");
    println!(
        "execute_program -> {executed}  ({:.1} ms)",
        run.as_secs_f64() * 1e3
    );
    if let Some(outputs) = executed.get("outputs").and_then(Value::as_object) {
        for (name, value) in outputs {
            println!("  {name}: {value}");
        }
    }
    Ok(())
}

async fn doctor(python: PythonConfig) -> Result<()> {
    let env = PythonEnv::resolve_async(python)
        .await
        .context("resolving the Python environment")?;
    let report = check_environment(&env).await;
    println!("{report}");
    println!("package: {}", env.package_root.display());
    if !report.is_ok() {
        bail!("the Python environment cannot run DSPex workers");
    }
    let tree = start_tree(PythonConfig {
        interpreter: Some(env.interpreter.clone()),
        ..PythonConfig::default()
    })
    .await?;
    let ready = match tree.serving_bridge() {
        Ok(bridge) => bridge
            .ready_worker(Duration::from_secs(120))
            .await
            .map_err(anyhow::Error::new),
        Err(error) => Err(error.into()),
    };
    let result = match ready {
        Ok(worker) => {
            println!(
                "worker: ready (pid {}) in {:?} mode",
                worker.pid(),
                tree.mode()
            );
            Ok(())
        }
        Err(error) => Err(error.context("the worker did not start")),
    };
    tree.shutdown(Duration::from_secs(10)).await;
    result
}
