//! B8: HTTP serving. `dspex serve`'s router (in process, on loopback) and
//! DSPy's own deployment recipe (FastAPI + `dspy.asyncify` + uvicorn, one
//! process: `python -m dspex_bridge.bench serve`) serve the same program on
//! the same offline LM, and one load generator drives each in turn.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dspex_server::{ServeFile, Server};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::{Bench, Row, median, percentile};

/// Concurrent HTTP clients.
const CLIENTS: usize = 64;
/// The offline LM's simulated latency.
const LATENCY_MS: u64 = 50;

/// What one load run measured.
#[derive(Debug, Clone, Copy)]
struct Load {
    rate: f64,
    p99_ms: f64,
    errors: usize,
}

impl Bench {
    /// B8: `dspex serve` against DSPy's FastAPI recipe, 64 clients each.
    pub(super) async fn b8(&self) -> Result<Vec<Row>> {
        let duration = self.sizes.b8_duration;
        let anchor_path = self.serve_anchor_env().await?;
        let (mut ours, mut theirs, mut ratios) = (vec![], vec![], vec![]);
        let mut p99s = (vec![], vec![]);
        let mut errors = 0;
        for _ in 0..self.sizes.repeats.min(3) {
            let a = self.load_ours(duration).await?;
            let b = self.load_anchor(&anchor_path, duration).await?;
            errors += a.errors + b.errors;
            ours.push(a.rate);
            theirs.push(b.rate);
            ratios.push(a.rate / b.rate);
            p99s.0.push(a.p99_ms);
            p99s.1.push(b.p99_ms);
        }
        let ratio = median(&ratios);
        let (p99_ours, p99_theirs) = (median(&p99s.0), median(&p99s.1));
        Ok(vec![Row {
            id: "B8",
            workload: format!(
                "HTTP serving: {CLIENTS} clients for {} s, one Predict program, offline LM {LATENCY_MS} ms, default configuration",
                duration.as_secs()
            ),
            ours: format!("{:.0} req/s, p99 {p99_ours:.0} ms", median(&ours)),
            anchors: format!(
                "FastAPI + dspy.asyncify + uvicorn (DSPy's recipe): {:.0} req/s, p99 {p99_theirs:.0} ms",
                median(&theirs)
            ),
            ratio: format!("{ratio:.1}×, p99 {:.2}× its", p99_ours / p99_theirs),
            goal: "≥ 4× at ≤ its p99".into(),
            met: Some(ratio >= 4.0 && p99_ours <= p99_theirs),
            note: if errors > 0 {
                format!("{errors} failed requests")
            } else {
                String::new()
            },
        }])
    }

    /// The anchor's packages (fastapi, uvicorn), installed on first use with
    /// `pip install --target` next to the managed environment, from the
    /// pinned `bench/serve-requirements.txt`; returns the directory.
    async fn serve_anchor_env(&self) -> Result<PathBuf> {
        let requirements = self
            .env
            .package_root
            .join("dspex_bridge/bench/serve-requirements.txt");
        let text = std::fs::read_to_string(&requirements)
            .with_context(|| format!("reading {}", requirements.display()))?;
        let key = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        let venv = self
            .env
            .interpreter
            .parent()
            .and_then(Path::parent)
            .context("the interpreter is not in an environment directory")?;
        let dir = venv.with_file_name(format!(
            "{}-bench-serve-{key:016x}",
            venv.file_name().unwrap_or_default().to_string_lossy()
        ));
        if dir.join(".complete").exists() {
            return Ok(dir);
        }
        eprintln!(
            "dspex bench: installing B8's anchor (fastapi, uvicorn) into {}",
            dir.display()
        );
        let staging = dir.with_extension("partial");
        let _ = std::fs::remove_dir_all(&staging);
        let output = tokio::process::Command::new(&self.env.interpreter)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(["--no-deps", "--target"])
            .arg(&staging)
            .arg("-r")
            .arg(&requirements)
            .stdin(Stdio::null())
            .output()
            .await
            .context("running pip")?;
        if !output.status.success() {
            bail!(
                "installing B8's anchor failed: {}",
                super::tail(&String::from_utf8_lossy(&output.stderr))
            );
        }
        std::fs::write(staging.join(".complete"), "")?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&staging, &dir)?;
        Ok(dir)
    }

    /// `dspex serve`'s router with the default configuration (4 workers).
    async fn load_ours(&self, duration: Duration) -> Result<Load> {
        let toml = format!(
            "name = \"bench-serve\"\n[lm]\nmodel = \"dummy\"\nlatency_ms = {LATENCY_MS}\n\
             [serve]\nbind = \"127.0.0.1:0\"\n\
             [[programs]]\nid = \"qa\"\nsignature = \"question -> answer\"\n"
        );
        let mut file = ServeFile::from_toml(&toml, None)?;
        file.dspex.python.interpreter = Some(self.env.interpreter.clone());
        let server = Server::start(file).await?;
        let url = format!("http://{}/v1/programs/qa/execute", server.addr());
        wait_workers(&server).await?;
        let load = drive(&url, true, duration).await;
        server.stop().await?;
        load
    }

    /// DSPy's recipe in its own process.
    async fn load_anchor(&self, packages: &Path, duration: Duration) -> Result<Load> {
        let python_path = std::env::join_paths(
            std::iter::once(packages.to_path_buf())
                .chain(std::env::split_paths(&self.env.python_path())),
        )?;
        let mut child = tokio::process::Command::new(&self.env.interpreter)
            .args(["-m", "dspex_bridge.bench", "serve", "--port", "0"])
            .args(["--latency-ms", &LATENCY_MS.to_string()])
            .env("PYTHONPATH", python_path)
            .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the FastAPI anchor")?;
        let stdout = child.stdout.take().context("the anchor's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let port = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line)
                    && let Some(port) = value.get("listening").and_then(serde_json::Value::as_u64)
                {
                    return Ok(port);
                }
            }
            bail!("the anchor ended before it listened")
        })
        .await
        .context("the anchor did not listen within 60 s")??;
        let url = format!("http://127.0.0.1:{port}/predict");
        let load = drive(&url, false, duration).await;
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(pid)?),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        load
    }
}

/// Waits until every worker of the server's pool is ready.
async fn wait_workers(server: &Server) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = server.state().dspex().status();
        if let Some(pool) = &status.adapter.pool
            && pool.starting + pool.not_started == 0
            && pool.idle > 0
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("workers not ready in 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The load generator: `CLIENTS` loops posting one question each for
/// `duration` (after a 1 s warm-up), over keep-alive connections.
async fn drive(url: &str, dspex_body: bool, duration: Duration) -> Result<Load> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()?;
    let body = |i: usize| {
        let question = format!("question {i}");
        if dspex_body {
            json!({"inputs": {"question": question}})
        } else {
            json!({"question": question})
        }
    };
    // Warm-up: connections open, first calls made.
    for i in 0..CLIENTS {
        let _ = client.post(url).json(&body(i)).send().await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (client, stop, url) = (client.clone(), Arc::clone(&stop), url.to_owned());
            let body = body(i);
            tokio::spawn(async move {
                let (mut latencies, mut errors) = (Vec::new(), 0usize);
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    match client.post(&url).json(&body).send().await {
                        Ok(response) if response.status().is_success() => {
                            let _ = response.bytes().await;
                            latencies.push(sent.elapsed().as_secs_f64() * 1e3);
                        }
                        _ => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for task in tasks {
        let (l, e) = task.await?;
        latencies.extend(l);
        errors += e;
    }
    if latencies.is_empty() {
        bail!("no request succeeded ({errors} failed)");
    }
    Ok(Load {
        rate: latencies.len() as f64 / elapsed,
        p99_ms: percentile(&mut latencies, 0.99),
        errors,
    })
}
