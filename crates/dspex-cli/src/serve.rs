//! `dspex serve`: the programs of a configuration file over HTTP, until
//! SIGTERM or Ctrl-C (then a graceful stop: in-flight requests and streams
//! finish within the shutdown grace, and every worker is stopped).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use dspex::{AdapterKind, Secret};
use dspex_server::{ServeFile, Server};
use tokio::signal::unix::{SignalKind, signal};

/// Options of `dspex serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The address to listen on (overrides `[serve] bind`). Anything but a
    /// loopback address needs a token.
    #[arg(long)]
    bind: Option<SocketAddr>,
    /// The bearer token every request but /healthz, /readyz and / must
    /// carry.
    #[arg(long, env = "DSPEX_SERVE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// Reads the file, applies the command line and `DSPEX_*`, serves until a
/// signal, then stops gracefully.
pub(crate) async fn run(
    config: Option<&Path>,
    adapter: Option<AdapterKind>,
    python: Option<PathBuf>,
    project: Option<PathBuf>,
    args: ServeArgs,
) -> Result<()> {
    let path = config.context(
        "dspex serve needs --config FILE.toml (see crates/dspex-server/examples/dspex.toml)",
    )?;
    let mut file = ServeFile::from_file(path)?;
    file.dspex
        .apply_env(|name| std::env::var(name).ok())
        .context("applying DSPEX_* variables")?;
    if let Some(adapter) = adapter {
        file.dspex.adapter = adapter;
    }
    if let Some(python) = python {
        file.dspex.python.interpreter = Some(python);
    }
    if let Some(project) = project {
        file.dspex.python.project = Some(project);
    }
    if let Some(bind) = args.bind {
        file.serve.bind = bind;
    }
    file.token = args.token.filter(|t| !t.is_empty()).map(Secret::new);
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the Ctrl-C handler")?;
    let server = tokio::select! {
        started = Server::start(file) => started?,
        _ = terminate.recv() => return Ok(()),
        _ = interrupt.recv() => return Ok(()),
    };
    println!("dspex serve: listening on http://{}", server.addr());
    let signal = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        eprintln!("dspex serve: stopping (draining requests in flight)");
    };
    server.run_until(signal).await?;
    eprintln!("dspex serve: stopped; all workers gone");
    Ok(())
}
