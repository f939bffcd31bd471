//! The `dspex` command.
//!
//! - `dspex demo`: the README's main job — a pool of workers runs a batch of
//!   programs concurrently on the offline `dummy` LM (or on `DSPEX_LM`), a
//!   worker is killed mid-run to show recovery, and a summary table reports
//!   results, latencies and restarts.
//! - `dspex run`: one program, once, from a signature string and inputs (or
//!   a saved, compiled program).
//! - `dspex eval`: a program scored on a devset with a metric.
//! - `dspex optimize`: a program compiled by one of DSPy's optimizers, saved
//!   in DSPy's JSON format.
//! - `dspex serve`: the programs of a configuration file over HTTP (see
//!   the dspex-server crate), until SIGTERM or Ctrl-C.
//! - `dspex doctor`: the Python environment report, and a worker started.
//!
//! Ctrl-C stops cleanly: in-flight work is abandoned, every worker is
//! stopped and reaped, and the exit status is 130.

mod bench;
mod compile;
mod demo;
mod logging;
mod run;
mod serve;
mod tools;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use dspex::{AdapterKind, Dspex, ModeSetting};
use dspex_bridge::conditional::check_environment;
use dspex_bridge::{ConditionalSupervisor, PoolConfig, PythonConfig, PythonEnv, TreeConfig};

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
    /// A TOML configuration file (DSPEX_* variables apply on top of it).
    #[arg(long, global = true)]
    config: Option<std::path::PathBuf>,
    /// The adapter: python, bridge_mock or mock.
    #[arg(long, global = true, value_parser = parse_adapter)]
    adapter: Option<AdapterKind>,
    /// The service's Python project: where `python:` modules are imported
    /// from (its requirements.txt is installed as a layer).
    #[arg(long, global = true, value_name = "DIR")]
    project: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

fn parse_adapter(word: &str) -> Result<AdapterKind, String> {
    match word {
        "python" => Ok(AdapterKind::Python),
        "bridge_mock" | "bridge-mock" => Ok(AdapterKind::BridgeMock),
        "mock" => Ok(AdapterKind::Mock),
        other => Err(format!(
            "unknown adapter {other:?}: use python, bridge_mock or mock"
        )),
    }
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a batch of programs on a pool, kill a worker mid-run, summarise.
    Demo(demo::DemoArgs),
    /// Run one program once.
    Run(run::RunArgs),
    /// Score a program on a devset with a metric.
    Eval(Box<compile::EvalArgs>),
    /// Compile a program with one of DSPy's optimizers and save it.
    Optimize(Box<compile::OptimizeArgs>),
    /// Run the benchmarks B1–B8 beside their anchors and print the table.
    Bench(bench::BenchArgs),
    /// Serve the configured programs over HTTP (with /metrics, /openapi.json
    /// and a live page at /).
    Serve(serve::ServeArgs),
    /// Report the Python environment and check that a worker starts.
    Doctor,
}

#[tokio::main]
async fn main() -> Result<()> {
    let _logging = logging::init();
    let cli = Cli::parse();
    // Registered before anything starts, so a Ctrl-C at any moment — even
    // while workers boot — goes through the clean shutdown below.
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("installing the Ctrl-C handler")?;
    let interrupted = Arc::new(AtomicBool::new(false));
    let python = PythonConfig {
        interpreter: cli.python.clone(),
        ..PythonConfig::default()
    };
    if let Cmd::Doctor = cli.command {
        return doctor(python).await;
    }
    if let Cmd::Bench(args) = cli.command {
        return bench::run(python, args).await;
    }
    if let Cmd::Serve(args) = cli.command {
        return serve::run(
            cli.config.as_deref(),
            cli.adapter,
            cli.python,
            cli.project,
            args,
        )
        .await;
    }

    let (pool_size, mode) = match &cli.command {
        Cmd::Demo(args) => (args.pool_size(), ModeSetting::Pool),
        _ => (1, ModeSetting::Single),
    };
    let mut builder = Dspex::builder()
        .name("dspex-cli")
        .pool_size(pool_size)
        .mode(mode);
    if let Some(path) = &cli.config {
        builder = builder.config_file(path);
    }
    builder = builder.from_env();
    if let Some(adapter) = cli.adapter {
        builder = builder.adapter(adapter);
    }
    if let Some(python) = &cli.python {
        builder = builder.python(python);
    }
    if let Some(project) = &cli.project {
        builder = builder.python_project(project);
    }
    // The LM is configured once, at start: the one the configuration names
    // (`[lm]`, or `DSPEX_LM` with `DSPEX_LM_API_KEY`), else the offline one.
    if builder.current_config().lm.is_none() {
        let mut dummy = compile::cli_dummy();
        if let Cmd::Demo(args) = &cli.command {
            dummy
                .extra
                .insert("latency_ms".into(), args.latency_ms().into());
        }
        builder = builder.lm(dummy);
    }
    let model = builder
        .current_config()
        .lm
        .as_ref()
        .map_or_else(|| "dummy".to_owned(), |lm| lm.model.clone());
    let dspex = tokio::select! {
        started = builder.start() => started.context("starting DSPex")?,
        _ = sigint.recv() => {
            // The half-started tree dies with this process: its workers by
            // their parent-death signal, their descendants by the watchdog.
            eprintln!("dspex: interrupted while starting");
            std::process::exit(130);
        }
    };

    let work = {
        let dspex = dspex.clone();
        let interrupted = Arc::clone(&interrupted);
        async move {
            match cli.command {
                Cmd::Demo(args) => demo::run(dspex, args, &model, interrupted).await,
                Cmd::Run(args) => run::run(dspex, args).await,
                Cmd::Eval(args) => compile::eval(dspex, *args).await,
                Cmd::Optimize(args) => compile::optimize(dspex, *args).await,
                Cmd::Doctor | Cmd::Bench(_) | Cmd::Serve(_) => Ok(()),
            }
        }
    };
    let result = tokio::select! {
        result = work => result,
        _ = sigint.recv() => {
            interrupted.store(true, Ordering::SeqCst);
            Err(anyhow::anyhow!("interrupted"))
        }
    };
    dspex.shutdown().await;
    if interrupted.load(Ordering::SeqCst) {
        eprintln!("dspex: interrupted; all workers stopped");
        std::process::exit(130);
    }
    result
}

/// A single-mode tree under the conditional supervisor, as a service would
/// start it.
async fn start_tree(python: PythonConfig) -> Result<ConditionalSupervisor> {
    let config = PoolConfig {
        name: "dspex-demo".into(),
        python,
        ..PoolConfig::default()
    }
    .single();
    ConditionalSupervisor::start(TreeConfig::Single(config))
        .await
        .context("starting the supervision tree")
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
    let ready = match tree.serving_pool() {
        Ok(pool) => pool
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
    tree.shutdown(Duration::from_secs(10), Duration::from_secs(10))
        .await;
    result
}
