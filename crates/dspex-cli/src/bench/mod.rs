//! `dspex bench`: the benchmarks B1–B8 of the performance design, each beside
//! its anchors measured in the same run on the same machine, reported as
//! medians of repeated runs and as ratios.
//!
//! The Python anchors are `python -m dspex_bridge.bench ...` in the managed
//! environment (`python/dspex_bridge/bench/`). Figures are printed, never
//! asserted: the machine is shared and noisy, so pairs of runs are
//! interleaved and the median ratio is the figure.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dspex::bridge::pool::{Pool, PoolConfig, RequestOptions};
use dspex::bridge::{PythonConfig, PythonEnv, SpawnMode};
use dspex::protocol::Command;
use dspex::{Dspex, ExecuteOptions, LmConfig, ModeSetting, Module, Signature, SpawnSetting};
use serde_json::{Value, json};

mod report;
mod serve;

use report::{markdown, table};

/// How long B4 lets a fresh zygote finish its deferred imports before the
/// first kill.
const ZYGOTE_WARM: Duration = Duration::from_secs(8);

/// In the Markdown file, the line after which the text is kept on rewrite.
const NOTES_MARKER: &str = "<!-- notes: kept by dspex bench -->";

/// Arguments of `dspex bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// A short run: fewer requests and repeats (a few minutes in all).
    #[arg(long)]
    quick: bool,
    /// Runs per figure; the median is reported [default: 5, 3 with --quick].
    #[arg(long)]
    repeats: Option<usize>,
    /// Only these workloads, e.g. `--only b2,b6`.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also write the table, with the command that made it, to this
    /// Markdown file (docs/benchmarks.md).
    #[arg(long, value_name = "FILE.md")]
    markdown: Option<PathBuf>,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// One row of the table.
#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    id: &'static str,
    workload: String,
    ours: String,
    anchors: String,
    ratio: String,
    goal: String,
    met: Option<bool>,
    note: String,
}

/// Sizes of one run.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    repeats: usize,
    b1_requests: usize,
    b2_requests: usize,
    b4_kills: usize,
    b6_calls: usize,
    b6_one_at_a_time_calls: usize,
    b7_calls: usize,
    b8_duration: Duration,
}

impl Sizes {
    fn of(args: &BenchArgs) -> Self {
        let quick = args.quick;
        Self {
            repeats: args.repeats.unwrap_or(if quick { 3 } else { 5 }).max(1),
            b1_requests: if quick { 5_000 } else { 20_000 },
            b2_requests: if quick { 2_000 } else { 5_000 },
            b4_kills: if quick { 4 } else { 12 },
            b6_calls: if quick { 2_000 } else { 5_000 },
            b6_one_at_a_time_calls: if quick { 240 } else { 480 },
            b7_calls: if quick { 300 } else { 1_000 },
            b8_duration: Duration::from_secs(if quick { 5 } else { 10 }),
        }
    }
}

/// Runs the benchmarks and prints the table.
pub(crate) async fn run(python: PythonConfig, args: BenchArgs) -> Result<()> {
    let env = PythonEnv::resolve_async(python)
        .await
        .context("resolving the Python environment")?;
    let sizes = Sizes::of(&args);
    let wanted =
        |id: &str| args.only.is_empty() || args.only.iter().any(|o| o.eq_ignore_ascii_case(id));
    let bench = Bench { env, sizes };
    let mut rows = Vec::new();
    type Step<'a> = (
        &'static str,
        futures::future::BoxFuture<'a, Result<Vec<Row>>>,
    );
    let steps: Vec<Step<'_>> = vec![
        ("b1", Box::pin(bench.b1())),
        ("b2", Box::pin(bench.b2())),
        ("b3", Box::pin(bench.b3())),
        ("b4", Box::pin(bench.b4())),
        ("b5", Box::pin(bench.b5())),
        ("b6", Box::pin(bench.b6())),
        ("b7", Box::pin(bench.b7())),
        ("b8", Box::pin(bench.b8())),
    ];
    for (id, step) in steps {
        if !wanted(id) {
            continue;
        }
        eprintln!("dspex bench: {id} ...");
        match step.await {
            Ok(done) => rows.extend(done),
            Err(error) => rows.push(Row {
                id: static_id(id),
                workload: "(failed)".into(),
                ours: "-".into(),
                anchors: "-".into(),
                ratio: "-".into(),
                goal: "-".into(),
                met: None,
                note: format!("{error:#}"),
            }),
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!("{}", table(&rows));
    }
    if let Some(path) = &args.markdown {
        let command = std::iter::once("dspex".to_owned())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" ");
        // What follows the notes marker is written by people: kept as is.
        let notes = std::fs::read_to_string(path)
            .ok()
            .and_then(|old| old.find(NOTES_MARKER).map(|at| old[at..].to_owned()))
            .unwrap_or_else(|| format!("{NOTES_MARKER}\n"));
        let text = format!("{}\n{notes}", markdown(&rows, &command, &sizes));
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("dspex bench: wrote {}", path.display());
    }
    Ok(())
}

fn static_id(id: &str) -> &'static str {
    match id {
        "b1" => "B1",
        "b2" => "B2",
        "b3" => "B3",
        "b4" => "B4",
        "b5" => "B5",
        "b6" => "B6",
        "b7" => "B7",
        _ => "B8",
    }
}

struct Bench {
    env: PythonEnv,
    sizes: Sizes,
}

impl Bench {
    /// Runs an anchor script and returns its JSON line.
    async fn anchor(&self, args: &[String]) -> Result<Value> {
        let output = tokio::process::Command::new(&self.env.interpreter)
            .args(["-m", "dspex_bridge.bench"])
            .args(args)
            .env("PYTHONPATH", self.env.python_path())
            .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .context("running an anchor")?;
        if !output.status.success() {
            bail!(
                "anchor {} failed ({}): {}",
                args.join(" "),
                output.status,
                tail(&String::from_utf8_lossy(&output.stderr))
            );
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().last().unwrap_or_default();
        serde_json::from_str(line).with_context(|| format!("anchor printed {line:?}"))
    }

    async fn pool(&self, config: PoolConfig) -> Result<Pool> {
        let size = config.size;
        let pool = Pool::start_on(config, self.env.clone()).await?;
        let mut status = pool.status_watch();
        tokio::time::timeout(
            Duration::from_secs(120),
            status.wait_for(|s| s.idle == size),
        )
        .await
        .context("workers not ready in 120 s")??;
        Ok(pool)
    }

    /// B1: tiny requests through a pool of 2, 64 callers.
    async fn b1(&self) -> Result<Vec<Row>> {
        let n = self.sizes.b1_requests;
        let pool = self.pool(base_config(2)).await?;
        let (mut ours, mut mp, mut ppe, mut ratio_mp, mut ratio_ppe) =
            (vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..self.sizes.repeats {
            let rate = ping_throughput(&pool, n, 64).await?;
            let anchor = self
                .anchor(&args([
                    "b1",
                    "--requests",
                    &n.to_string(),
                    "--callers",
                    "64",
                    "--processes",
                    "2",
                ]))
                .await?;
            let a_mp = number(&anchor, "multiprocessing_pool_per_s")?;
            let a_ppe = number(&anchor, "process_pool_executor_per_s")?;
            ratio_mp.push(rate / a_mp);
            ratio_ppe.push(rate / a_ppe);
            ours.push(rate);
            mp.push(a_mp);
            ppe.push(a_ppe);
        }
        pool.shutdown(Duration::from_secs(5), Duration::from_secs(30))
            .await;
        let (r_mp, r_ppe) = (median(&ratio_mp), median(&ratio_ppe));
        Ok(vec![Row {
            id: "B1",
            workload: format!("ping, pool of 2, 64 callers, {n} requests"),
            ours: format!("{:.0}/s", median(&ours)),
            anchors: format!(
                "multiprocessing.Pool(2) {:.0}/s; ProcessPoolExecutor(2) {:.0}/s",
                median(&mp),
                median(&ppe)
            ),
            ratio: format!("{r_mp:.2}× / {r_ppe:.2}×"),
            goal: "≥ 2× / ≥ 6×".into(),
            met: Some(r_mp >= 2.0 && r_ppe >= 6.0),
            note: "median of interleaved pairs".into(),
        }])
    }

    /// B2: one caller, one worker, sequential pings.
    async fn b2(&self) -> Result<Vec<Row>> {
        let n = self.sizes.b2_requests;
        let pool = self.pool(base_config(1).single()).await?;
        let (mut ours, mut bare, mut ratios, mut p99s) = (vec![], vec![], vec![], vec![]);
        for _ in 0..self.sizes.repeats {
            let mut took = Vec::with_capacity(n);
            for _ in 0..200 {
                pool.call(Command::Ping, RequestOptions::default()).await?;
            }
            for _ in 0..n {
                let started = Instant::now();
                pool.call(Command::Ping, RequestOptions::default()).await?;
                took.push(started.elapsed().as_secs_f64() * 1e6);
            }
            let p50 = percentile(&mut took, 0.50);
            p99s.push(percentile(&mut took, 0.99));
            let anchor = self
                .anchor(&args(["b2", "--requests", &n.to_string()]))
                .await?;
            let a = number(&anchor, "p50_us")?;
            ours.push(p50);
            bare.push(a);
            ratios.push(p50 / a);
        }
        pool.shutdown(Duration::from_secs(5), Duration::from_secs(30))
            .await;
        let ratio = median(&ratios);
        Ok(vec![Row {
            id: "B2",
            workload: format!("sequential ping, 1 caller, 1 worker, {n} requests"),
            ours: format!("p50 {:.0} µs (p99 {:.0} µs)", median(&ours), median(&p99s)),
            anchors: format!(
                "bare loop over the same worker's pipes: p50 {:.0} µs",
                median(&bare)
            ),
            ratio: format!("{ratio:.2}×"),
            goal: "≤ 1.2×".into(),
            met: Some(ratio <= 1.2),
            note: String::new(),
        }])
    }

    /// B3: cold start of N workers that import DSPy.
    async fn b3(&self) -> Result<Vec<Row>> {
        let anchor = self
            .anchor(&args(["b3", "--repeats", &self.sizes.repeats.to_string()]))
            .await?;
        let import = number(&anchor, "import_wall_s")?;
        let mut rows = Vec::new();
        for (n, spawn) in [
            (2, SpawnMode::default()),
            (4, SpawnMode::default()),
            (8, SpawnMode::default()),
            (8, SpawnMode::Direct),
        ] {
            let mut took = Vec::new();
            for _ in 0..self.sizes.repeats {
                let config = PoolConfig {
                    spawn: spawn.clone(),
                    ..base_config(n)
                };
                let started = Instant::now();
                let pool = self.pool(config).await?;
                took.push(started.elapsed().as_secs_f64());
                pool.shutdown(Duration::from_secs(5), Duration::from_secs(30))
                    .await;
            }
            let ours = median(&took);
            let ratio = ours / import;
            let direct = spawn == SpawnMode::Direct;
            let goal_row = n == 8 && !direct;
            rows.push(Row {
                id: "B3",
                workload: format!(
                    "cold start, N = {n}{}, start to all ready",
                    if direct { " (direct spawning)" } else { "" }
                ),
                ours: format!("{ours:.2} s"),
                anchors: format!("one `import dspy`: {import:.2} s"),
                ratio: format!("{ratio:.2}×"),
                goal: if goal_row {
                    "≤ 1.3×".into()
                } else {
                    "-".into()
                },
                met: goal_row.then_some(ratio <= 1.3),
                note: if direct {
                    "the fallback, for comparison".into()
                } else {
                    String::new()
                },
            });
        }
        Ok(rows)
    }

    /// B4: SIGKILL an idle worker; time until its replacement is ready.
    async fn b4(&self) -> Result<Vec<Row>> {
        // T_boot of a fresh worker: a directly spawned one, start to ready.
        let mut boots = Vec::new();
        for _ in 0..self.sizes.repeats {
            let started = Instant::now();
            let pool = self
                .pool(PoolConfig {
                    spawn: SpawnMode::Direct,
                    ..base_config(1).single()
                })
                .await?;
            boots.push(started.elapsed().as_secs_f64() * 1e3);
            pool.shutdown(Duration::from_secs(5), Duration::from_secs(30))
                .await;
        }
        let t_boot = median(&boots);
        // Four workers killed in turn, each once per restart window, so
        // every restart is a first one (the default budget, raised so the
        // run is not cut short by it).
        let mut config = base_config(4);
        config.intensity.max_restarts = 1_000;
        let window = config.intensity.within;
        let pool = self.pool(config).await?;
        // Steady state: the zygote imports litellm while idle after it is
        // ready, and a fork waits for that import (a few seconds).
        tokio::time::sleep(ZYGOTE_WARM).await;
        let mut took = Vec::new();
        for k in 0..self.sizes.b4_kills {
            let status = pool.status();
            let victim = status.workers[k % status.workers.len()].pid;
            let killed = Instant::now();
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(victim)?),
                nix::sys::signal::Signal::SIGKILL,
            )?;
            let mut watch = pool.status_watch();
            tokio::time::timeout(
                Duration::from_secs(30),
                watch.wait_for(|s| s.idle == 4 && s.workers.iter().all(|w| w.pid != victim)),
            )
            .await
            .context("no replacement in 30 s")??;
            took.push(killed.elapsed().as_secs_f64() * 1e3);
            // The next kill of this worker comes a whole window later.
            tokio::time::sleep(window / 4 + Duration::from_millis(100)).await;
        }
        pool.shutdown(Duration::from_secs(5), Duration::from_secs(30))
            .await;
        let p50 = percentile(&mut took.clone(), 0.5);
        let p99 = percentile(&mut took, 0.99);
        Ok(vec![Row {
            id: "B4",
            workload: format!(
                "recovery: SIGKILL an idle worker ({} kills), until its replacement is ready",
                self.sizes.b4_kills
            ),
            ours: format!("p99 {p99:.0} ms (p50 {p50:.0} ms)"),
            anchors: format!("T_boot of a fresh worker: {t_boot:.0} ms"),
            ratio: format!("{:.2}× T_boot", p99 / t_boot),
            goal: "p99 ≤ 50 ms".into(),
            met: Some(p99 <= 50.0),
            note: format!(
                "first restarts are immediate; forked; kills start {}s after the pool is ready",
                ZYGOTE_WARM.as_secs()
            ),
        }])
    }

    /// B5: total PSS of 8 ready workers that have each run a program.
    async fn b5(&self) -> Result<Vec<Row>> {
        let anchor = self.anchor(&args(["b5"])).await?;
        let one = number(&anchor, "rss_bytes")?;
        let mut totals = Vec::new();
        for _ in 0..self.sizes.repeats.min(3) {
            let dspex = self.dspex(8, 8, 20).await?;
            create_qa(&dspex).await?;
            // Until every worker has run the program.
            for _ in 0..20 {
                let calls: Vec<_> = (0..64).map(|i| call(&dspex, i)).collect();
                for call in futures::future::join_all(calls).await {
                    call?;
                }
                if pool_status(&dspex)?.workers.iter().all(|w| w.requests > 1) {
                    break;
                }
            }
            let status = pool_status(&dspex)?;
            let mut total = 0u64;
            for worker in &status.workers {
                total += pss_bytes(worker.pid).unwrap_or(0);
            }
            total += zygotes().iter().filter_map(|&p| pss_bytes(p)).sum::<u64>();
            totals.push(total as f64);
            dspex.shutdown().await;
        }
        let total = median(&totals);
        let ratio = total / one;
        Ok(vec![Row {
            id: "B5",
            workload:
                "memory: total PSS of 8 ready workers that each ran a program (zygote included)"
                    .into(),
            ours: format!("{:.0} MB", total / 1e6),
            anchors: format!(
                "RSS of one process after `import dspy`: {:.0} MB",
                one / 1e6
            ),
            ratio: format!("{ratio:.2}×"),
            goal: "≤ 2×".into(),
            met: Some(ratio <= 2.0),
            note: String::new(),
        }])
    }

    /// B6: LM-bound throughput with the default configuration.
    async fn b6(&self) -> Result<Vec<Row>> {
        let cpu = self
            .anchor(&args(["cpu", "--calls", &self.sizes.b7_calls.to_string()]))
            .await?;
        let cpu_per_call = number(&cpu, "cpu_per_call_us")? / 1e6;
        let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        let bound = cores / cpu_per_call;
        let default_concurrency = dspex::bridge::DEFAULT_PER_WORKER_CONCURRENCY;
        let (mut ours, mut single, mut ratios) = (vec![], vec![], vec![]);
        for _ in 0..self.sizes.repeats.min(3) {
            let rate = self
                .lm_throughput(default_concurrency, self.sizes.b6_calls)
                .await?;
            let one = self
                .lm_throughput(1, self.sizes.b6_one_at_a_time_calls)
                .await?;
            ours.push(rate);
            single.push(one);
            ratios.push(rate / one);
        }
        let ours = median(&ours);
        let ratio = median(&ratios);
        let of_bound = ours / bound;
        Ok(vec![Row {
            id: "B6",
            workload: format!(
                "LM-bound execute, offline LM 50 ms, 4 workers, 256 callers, default config ({default_concurrency} per worker)"
            ),
            ours: format!("{ours:.0} calls/s"),
            anchors: format!(
                "one request per worker: {:.0}/s; CPU bound: {bound:.0}/s ({cores} cores ÷ {:.0} µs of DSPy CPU per call)",
                median(&single),
                cpu_per_call * 1e6
            ),
            ratio: format!("{ratio:.1}× / {:.0} % of the bound", of_bound * 100.0),
            goal: "≥ 15× / ≥ 80 %".into(),
            met: Some(ratio >= 15.0 && of_bound >= 0.8),
            note: String::new(),
        }])
    }

    /// B7: CPU per `Predict` through DSPex against plain DSPy in-process.
    async fn b7(&self) -> Result<Vec<Row>> {
        let n = self.sizes.b7_calls;
        let (mut ours, mut plain, mut ratios) = (vec![], vec![], vec![]);
        let dspex = self
            .dspex(1, dspex::bridge::DEFAULT_PER_WORKER_CONCURRENCY, 0)
            .await?;
        create_qa(&dspex).await?;
        for i in 0..50 {
            call(&dspex, i).await?;
        }
        for _ in 0..self.sizes.repeats {
            let pids = worker_pids(&dspex)?;
            let before = cpu_seconds(&pids);
            for i in 0..n {
                call(&dspex, i).await?;
            }
            let per_call = (cpu_seconds(&pids) - before) / n as f64 * 1e6;
            let anchor = self
                .anchor(&args(["cpu", "--calls", &n.to_string()]))
                .await?;
            let a = number(&anchor, "cpu_per_call_us")?;
            ours.push(per_call);
            plain.push(a);
            ratios.push(per_call / a);
        }
        dspex.shutdown().await;
        let ratio = median(&ratios);
        Ok(vec![Row {
            id: "B7",
            workload: format!(
                "CPU per Predict on the offline LM, {n} sequential calls (host + worker)"
            ),
            ours: format!("{:.0} µs", median(&ours)),
            anchors: format!(
                "the same dspy.Predict in plain Python: {:.0} µs",
                median(&plain)
            ),
            ratio: format!("{ratio:.2}×"),
            goal: "≤ 1.1×".into(),
            met: Some(ratio <= 1.1),
            note: String::new(),
        }])
    }

    async fn dspex(&self, workers: usize, per_worker: usize, latency_ms: u64) -> Result<Dspex> {
        let mut lm = LmConfig::dummy();
        lm.extra.insert("latency_ms".into(), latency_ms.into());
        let dspex = Dspex::builder()
            .name("bench")
            .mode(if workers == 1 {
                ModeSetting::Single
            } else {
                ModeSetting::Pool
            })
            .pool_size(workers)
            .per_worker_concurrency(per_worker)
            .python(&self.env.interpreter)
            .spawn(SpawnSetting::Zygote)
            .lm(lm)
            .start()
            .await?;
        let mut ready = false;
        for _ in 0..1200 {
            if pool_status(&dspex)?.idle == workers {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !ready {
            bail!("workers not ready in 120 s");
        }
        Ok(dspex)
    }

    async fn lm_throughput(&self, per_worker: usize, calls: usize) -> Result<f64> {
        let dspex = self.dspex(4, per_worker, 50).await?;
        create_qa(&dspex).await?;
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let callers: Vec<_> = (0..256)
            .map(|_| {
                let dspex = dspex.clone();
                let next = Arc::clone(&next);
                tokio::spawn(async move {
                    while next.fetch_add(1, Ordering::Relaxed) < calls {
                        call(&dspex, 0).await?;
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for caller in callers {
            caller.await??;
        }
        let rate = calls as f64 / started.elapsed().as_secs_f64();
        dspex.shutdown().await;
        Ok(rate)
    }
}

/// The pool configuration of the benchmarks: the library's defaults.
fn base_config(size: usize) -> PoolConfig {
    PoolConfig {
        name: format!("bench{size}"),
        size,
        ..PoolConfig::default()
    }
}

async fn ping_throughput(pool: &Pool, n: usize, callers: usize) -> Result<f64> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let pool = pool.clone();
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    pool.call(Command::Ping, RequestOptions::default()).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

async fn create_qa(dspex: &Dspex) -> Result<()> {
    dspex
        .create_program(
            "qa",
            Signature::parse("question -> answer")?,
            Module::Predict,
        )
        .await?;
    Ok(())
}

async fn call(dspex: &Dspex, i: usize) -> Result<()> {
    dspex
        .execute(
            "qa",
            json!({"question": format!("q{i}")}),
            ExecuteOptions::default(),
        )
        .await?;
    Ok(())
}

fn pool_status(dspex: &Dspex) -> Result<dspex::bridge::PoolStatus> {
    dspex
        .status()
        .adapter
        .pool
        .context("the adapter has no pool")
}

fn worker_pids(dspex: &Dspex) -> Result<Vec<u32>> {
    let mut pids: Vec<u32> = pool_status(dspex)?.workers.iter().map(|w| w.pid).collect();
    pids.push(std::process::id());
    Ok(pids)
}

/// The zygotes this process runs (children whose command line says so).
fn zygotes() -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            dspex::bridge::process::proc_stat(pid).is_some_and(|s| s.ppid == me)
                && std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.contains("--mode\0zygote"))
        })
        .collect()
}

fn pss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Pss:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// User + system CPU seconds of these processes (threads included).
fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    pids.iter()
        .filter_map(|pid| {
            let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let rest = &text[text.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of stat (11 and 12 here).
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .sum()
}

fn args<const N: usize>(parts: [&str; N]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

fn number(value: &Value, key: &str) -> Result<f64> {
    value[key]
        .as_f64()
        .with_context(|| format!("the anchor's output has no {key}: {value}"))
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    percentile(&mut sorted, 0.5)
}

fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = (q * (values.len() - 1) as f64).round() as usize;
    values[rank.min(values.len() - 1)]
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}
