//! A DSPex host process for the host-death tests (scenario 26).
//!
//! `dspex-test-host [TREES] [GRANDCHILDREN] [zygote|direct]` starts `TREES`
//! single-mode pools (default 2, workers forked from a zygote unless told
//! `direct`) on the managed Python, with the fault commands on and DSPy
//! imported lazily, waits until every worker is ready, makes the first
//! `GRANDCHILDREN` workers (default 0) each spawn a `sleep` grandchild, then
//! prints one JSON line on stdout —
//! `{"host": PID, "tags": [..], "workers": [..], "grandchildren": [..]}` —
//! and waits to be killed. It never sweeps orphans, so it cannot disturb the
//! test that watches what its death leaves behind.

use std::io::Write as _;
use std::time::Duration;

use dspex_bridge::SpawnMode;
use dspex_bridge::pool::{Pool, PoolConfig, RequestOptions};
use dspex_protocol::Command;
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let trees: usize = args.next().map_or(Ok(2), |a| a.parse())?;
    let grandchildren: usize = args.next().map_or(Ok(0), |a| a.parse())?;
    let spawn = match args.next().as_deref() {
        None | Some("zygote") => SpawnMode::default(),
        Some("direct") => SpawnMode::Direct,
        Some(other) => anyhow::bail!("unknown spawn mode {other:?}"),
    };
    let python = tokio::task::spawn_blocking(dspex_testkit::managed_python).await??;

    let mut started = Vec::with_capacity(trees);
    for i in 0..trees {
        let config = PoolConfig {
            name: format!("host{}-{i}", std::process::id()),
            env: vec![
                ("DSPEX_TEST_FAULTS".into(), "1".into()),
                ("DSPEX_LAZY_DSPY".into(), "1".into()),
            ],
            sweep_orphans: false,
            spawn: spawn.clone(),
            ..PoolConfig::default()
        }
        .single();
        let pool = Pool::start_on(config, python.clone()).await?;
        let worker = pool.ready_worker(Duration::from_secs(60)).await?;
        started.push((pool, worker.pid()));
    }
    let mut grandchild_pids = Vec::new();
    for (pool, _) in started.iter().take(grandchildren) {
        let reply = pool
            .call(
                Command::custom("spawn_grandchild", json!({"seconds": 1000})),
                RequestOptions::default(),
            )
            .await?;
        grandchild_pids.push(reply["pid"].clone());
    }

    let line = json!({
        "host": std::process::id(),
        "tags": started.iter().map(|(b, _)| b.run_tag().to_string()).collect::<Vec<_>>(),
        "workers": started.iter().map(|(_, pid)| *pid).collect::<Vec<_>>(),
        "grandchildren": grandchild_pids,
    });
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    drop(stdout);

    // Serve until killed; the pools stay alive with this future.
    std::future::pending::<()>().await;
    drop(started);
    Ok(())
}
