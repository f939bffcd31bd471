//! `dspex demo`: a pool serving a batch of programs concurrently, a worker
//! killed mid-run, and a summary of what happened.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use dspex::{Dspex, ExecuteOptions, Module, Signature};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Options of `dspex demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Requests to run.
    #[arg(long, default_value_t = 120)]
    requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 4)]
    pool_size: usize,
    /// Simulated latency of the offline `dummy` LM, in milliseconds.
    #[arg(long, default_value_t = 20)]
    latency_ms: u64,
    /// Do not kill a worker mid-run.
    #[arg(long)]
    no_kill: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// The programs of the demo: (id, signature, module, inputs for request i).
fn programs() -> Vec<(&'static str, &'static str, Module)> {
    vec![
        (
            "qa",
            "question: str -> answer: str, confidence: float",
            Module::ChainOfThought,
        ),
        (
            "sentiment",
            "text: str -> sentiment: literal[positive|negative|neutral], score: float",
            Module::Predict,
        ),
        (
            "keywords",
            "text: str -> keywords: list[str], count: int",
            Module::Predict,
        ),
    ]
}

fn inputs(program: &str, i: usize) -> Value {
    match program {
        "qa" => json!({ "question": format!("What is fact number {i}?") }),
        _ => json!({ "text": format!("Review {i}: the service was quick and the food was fine.") }),
    }
}

#[derive(Debug)]
struct Outcome {
    program: &'static str,
    latency: Duration,
    attempts: u32,
    error: Option<String>,
}

impl DemoArgs {
    /// The pool size asked for.
    pub(crate) fn pool_size(&self) -> usize {
        self.pool_size
    }

    /// The simulated latency of the offline LM.
    pub(crate) fn latency_ms(&self) -> u64 {
        self.latency_ms
    }
}

pub(crate) async fn run(
    dspex: Dspex,
    args: DemoArgs,
    model: &str,
    interrupted: Arc<AtomicBool>,
) -> Result<()> {
    for (id, signature, module) in programs() {
        let signature = Signature::parse(signature)?;
        dspex.create_program(id, signature, module).await?;
    }
    let mut events = dspex.events();
    wait_for_full_pool(&dspex, &mut events, args.pool_size).await;
    let pids_before = pids(&dspex);

    let bar = ProgressBar::new(args.requests as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}")
            .context("progress template")?,
    );
    let started = Instant::now();
    let slots = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let kill_at = (!args.no_kill).then_some(args.requests / 3);
    let mut killed = None;
    let mut launched = 0;
    let mut outcomes = Vec::with_capacity(args.requests);
    while launched < args.requests || !tasks.is_empty() {
        if interrupted.load(Ordering::SeqCst) {
            bar.set_message("interrupted: stopping");
            tasks.abort_all();
            break;
        }
        if launched < args.requests {
            let permit = Arc::clone(&slots).acquire_owned().await?;
            let (id, _, _) = programs()[launched % 3];
            let dspex = dspex.clone();
            let input = inputs(id, launched);
            tasks.spawn(async move {
                let _permit = permit;
                let t = Instant::now();
                // Demo requests are idempotent: a crash mid-request is retried.
                let result = dspex
                    .execute(id, input, ExecuteOptions::default().idempotent())
                    .await;
                Outcome {
                    program: id,
                    latency: t.elapsed(),
                    attempts: result.as_ref().map_or(0, |p| p.attempts),
                    error: result.err().map(|e| e.to_string()),
                }
            });
            launched += 1;
        }
        while let Some(done) = tasks.try_join_next() {
            outcomes.push(done?);
            bar.inc(1);
        }
        if killed.is_none()
            && kill_at.is_some_and(|at| outcomes.len() >= at)
            && let Some(&pid) = pids(&dspex).first()
        {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(pid)?),
                nix::sys::signal::Signal::SIGKILL,
            )?;
            bar.set_message(format!("killed worker pid {pid}"));
            killed = Some(pid);
        }
        if launched == args.requests
            && let Some(done) = tasks.join_next().await
        {
            outcomes.push(done?);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    if interrupted.load(Ordering::SeqCst) {
        bail!(
            "interrupted after {} of {} requests",
            outcomes.len(),
            args.requests
        );
    }

    // Let the replacement come up before reporting the pool's final shape.
    wait_for_full_pool(&dspex, &mut events, args.pool_size).await;
    report(
        &dspex,
        &args,
        model,
        &outcomes,
        elapsed,
        &pids_before,
        killed,
    )
}

/// Waits (up to two minutes: workers import DSPy) until `size` workers are
/// ready.
async fn wait_for_full_pool(
    dspex: &Dspex,
    events: &mut tokio::sync::broadcast::Receiver<dspex::Event>,
    size: usize,
) {
    let full = async {
        while pids(dspex).len() < size {
            if events.recv().await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(120), full).await;
}

fn pids(dspex: &Dspex) -> Vec<u32> {
    dspex
        .status()
        .adapter
        .pool
        .map(|p| {
            p.workers
                .iter()
                .filter(|w| w.phase == dspex::bridge::pool::SlotPhase::Ready)
                .map(|w| w.pid)
                .collect()
        })
        .unwrap_or_default()
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn report(
    dspex: &Dspex,
    args: &DemoArgs,
    model: &str,
    outcomes: &[Outcome],
    elapsed: Duration,
    pids_before: &[u32],
    killed: Option<u32>,
) -> Result<()> {
    let status = dspex.status();
    let restarts = status.adapter.pool.as_ref().map_or(0, |p| p.restarts);
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.error.is_some()).collect();
    let mut rows = Vec::new();
    for (id, _, module) in programs() {
        let mut latencies: Vec<Duration> = outcomes
            .iter()
            .filter(|o| o.program == id && o.error.is_none())
            .map(|o| o.latency)
            .collect();
        latencies.sort();
        let count = outcomes.iter().filter(|o| o.program == id).count();
        rows.push((id, module, count, latencies));
    }
    let retried = outcomes.iter().filter(|o| o.attempts > 1).count();
    let accounted = outcomes.len() == args.requests;
    if args.json {
        let programs: Vec<Value> = rows
            .iter()
            .map(|(id, module, count, l)| {
                json!({"program": id, "module": module.name(), "requests": count, "ok": l.len(),
                       "p50_ms": ms(percentile(l, 0.5)), "p99_ms": ms(percentile(l, 0.99))})
            })
            .collect();
        let summary = json!({
            "model": model, "requests": args.requests, "completed": outcomes.len(),
            "ok": outcomes.len() - failed.len(), "failed": failed.len(), "retried": retried,
            "elapsed_s": elapsed.as_secs_f64(), "killed_pid": killed, "restarts": restarts,
            "workers_before": pids_before, "workers_after": pids(dspex), "programs": programs,
            "errors": failed.iter().map(|o| o.error.clone()).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        let mut table = Table::new();
        table.load_style(UTF8_FULL_CONDENSED).set_header(vec![
            "program", "module", "requests", "ok", "p50 ms", "p95 ms", "p99 ms", "max ms",
        ]);
        for (id, module, count, l) in &rows {
            table.add_row(vec![
                (*id).to_owned(),
                module.name().to_owned(),
                count.to_string(),
                l.len().to_string(),
                format!("{:.1}", ms(percentile(l, 0.5))),
                format!("{:.1}", ms(percentile(l, 0.95))),
                format!("{:.1}", ms(percentile(l, 0.99))),
                format!("{:.1}", ms(l.last().copied().unwrap_or_default())),
            ]);
        }
        println!("{table}");
        println!(
            "{} requests on {} workers ({model}) in {:.2} s: {} ok, {} failed, {} retried ({:.0} req/s)",
            outcomes.len(),
            args.pool_size,
            elapsed.as_secs_f64(),
            outcomes.len() - failed.len(),
            failed.len(),
            retried,
            outcomes.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        );
        match killed {
            Some(pid) => println!(
                "killed worker pid {pid} mid-run; restarts {restarts}; workers before {pids_before:?}, after {:?}",
                pids(dspex)
            ),
            None => println!("workers {pids_before:?}; restarts {restarts}"),
        }
        for outcome in failed.iter().take(5) {
            println!("error: {}", outcome.error.as_deref().unwrap_or_default());
        }
    }
    if !accounted {
        bail!(
            "{} of {} requests unaccounted for",
            args.requests - outcomes.len(),
            args.requests
        );
    }
    if !failed.is_empty() {
        bail!("{} requests failed", failed.len());
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
