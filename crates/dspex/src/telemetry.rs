//! Metrics, recorded through the [`metrics`] facade by the library itself,
//! so an embedding service gets them with whatever recorder it installs
//! (`dspex serve` installs a Prometheus one); with no recorder installed
//! every call here is a no-op.
//!
//! Every metric carries an `instance` label, the instance's name (the
//! `metrics` recorder is one per process: two instances in one process
//! stay apart by it).
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `dspex_requests_total` | counter | `program`, `operation`, `outcome` (`ok` or the error's category) |
//! | `dspex_request_duration_seconds` | histogram | `program`, `operation` |
//! | `dspex_lm_tokens_total` | counter | `model`, `kind` (`prompt`, `completion`) |
//! | `dspex_jobs_running` | gauge | `operation` (`evaluate`, `optimize`) |
//! | `dspex_queue_depth` | gauge | |
//! | `dspex_in_flight` | gauge | |
//! | `dspex_workers` | gauge | `phase` (`idle`, `busy`, `starting`, `retiring`, `not_started`) |
//! | `dspex_worker_rss_bytes` | gauge | `worker` |
//! | `dspex_worker_restarts_total` | counter | |
//! | `dspex_worker_recycles_total` | counter | |
//! | `dspex_breaker_state` | gauge | (0 closed, 1 half-open, 2 open) |
//! | `dspex_pool_failed` | gauge | (1 while nothing can serve) |
//!
//! Counters and histograms are recorded as calls end; the gauges are set
//! from the status snapshot once a second by a task the handle starts (and
//! by [`Dspex::record_gauges`], for a scrape that wants them exact).

use std::sync::{Arc, Weak};
use std::time::Duration;

use dspex_bridge::pool::{PoolState, Run};
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

use crate::handle::{Dspex, Inner};
use crate::program::Usage;
use crate::resilience::BreakerState;

/// How often the handle's task refreshes the gauges.
const GAUGE_PERIOD: Duration = Duration::from_secs(1);

/// Registers the metrics' descriptions and units with the recorder
/// installed now. Called when a handle starts; call it again if the
/// recorder is installed later.
pub fn describe_metrics() {
    use metrics::Unit;
    describe_counter!(
        "dspex_requests_total",
        "Calls through the handle, by program, operation and outcome"
    );
    describe_histogram!(
        "dspex_request_duration_seconds",
        Unit::Seconds,
        "Time from a call to its result, retries included"
    );
    describe_counter!("dspex_lm_tokens_total", "LM tokens used, by model and kind");
    describe_gauge!(
        "dspex_jobs_running",
        "Evaluation and optimization jobs running"
    );
    describe_gauge!("dspex_queue_depth", "Callers waiting for a worker");
    describe_gauge!("dspex_in_flight", "Calls in flight through the handle");
    describe_gauge!("dspex_workers", "Worker slots by phase");
    describe_gauge!(
        "dspex_worker_rss_bytes",
        Unit::Bytes,
        "Resident memory of each worker process"
    );
    describe_counter!("dspex_worker_restarts_total", "Worker restarts");
    describe_counter!(
        "dspex_worker_recycles_total",
        "Workers retired by recycling"
    );
    describe_gauge!(
        "dspex_breaker_state",
        "The circuit breaker: 0 closed, 1 half-open, 2 open"
    );
    describe_gauge!("dspex_pool_failed", "1 while the pool has given up");
}

/// The `operation` label of a run.
pub(crate) fn operation(run: &Run) -> &'static str {
    match run {
        Run::One(args) if args.stream => "stream",
        Run::One(_) => "execute",
        Run::Batch(_) => "batch",
        Run::Evaluate(_) => "evaluate",
        Run::Optimize(_) => "optimize",
        Run::State(_) => "state",
    }
}

/// Counts a call that ended, and its time.
pub(crate) fn record_call(
    instance: &str,
    program: &str,
    operation: &'static str,
    outcome: &'static str,
    took: Duration,
) {
    let (instance, program) = (instance.to_owned(), program.to_owned());
    counter!("dspex_requests_total", "instance" => instance.clone(), "program" => program.clone(), "operation" => operation, "outcome" => outcome)
        .increment(1);
    histogram!("dspex_request_duration_seconds", "instance" => instance, "program" => program, "operation" => operation)
        .record(took.as_secs_f64());
}

/// Keeps `dspex_jobs_running` right while a job runs, however it ends.
pub(crate) struct JobGauge(Option<metrics::Gauge>);

impl JobGauge {
    pub(crate) fn start(instance: &str, operation: &'static str) -> Self {
        if matches!(operation, "evaluate" | "optimize") {
            let running = gauge!("dspex_jobs_running", "instance" => instance.to_owned(), "operation" => operation);
            running.increment(1.0);
            Self(Some(running))
        } else {
            Self(None)
        }
    }
}

impl Drop for JobGauge {
    fn drop(&mut self) {
        if let Some(running) = &self.0 {
            running.decrement(1.0);
        }
    }
}

/// Counts a prediction's LM tokens by model.
pub(crate) fn record_tokens(instance: &str, usage: &Usage) {
    for (model, tokens) in &usage.by_model {
        counter!("dspex_lm_tokens_total", "instance" => instance.to_owned(), "model" => model.clone(), "kind" => "prompt")
            .increment(tokens.prompt_tokens);
        counter!("dspex_lm_tokens_total", "instance" => instance.to_owned(), "model" => model.clone(), "kind" => "completion")
            .increment(tokens.completion_tokens);
    }
}

impl Dspex {
    /// Sets the gauges (queue depth, workers by phase, each worker's RSS,
    /// restarts, recycles, the breaker, `Failed`) from a status snapshot.
    /// The handle does this once a second by itself; a scrape may call it
    /// to be exact. Never waits on an actor.
    pub fn record_gauges(&self) {
        let status = self.status();
        let instance = self.name().to_owned();
        gauge!("dspex_in_flight", "instance" => instance.clone()).set(status.in_flight as f64);
        gauge!("dspex_breaker_state", "instance" => instance.clone()).set(
            match status.breaker.state {
                BreakerState::Closed => 0.0,
                BreakerState::HalfOpen => 1.0,
                BreakerState::Open => 2.0,
            },
        );
        let pool_failed = status.adapter.failed.is_some()
            || status
                .adapter
                .pool
                .as_ref()
                .is_some_and(|pool| matches!(pool.state, PoolState::Failed(_)));
        gauge!("dspex_pool_failed", "instance" => instance.clone())
            .set(f64::from(u8::from(pool_failed)));
        let Some(pool) = &status.adapter.pool else {
            return;
        };
        gauge!("dspex_queue_depth", "instance" => instance.clone()).set(pool.queued as f64);
        for (phase, n) in [
            ("idle", pool.idle),
            ("busy", pool.busy),
            ("starting", pool.starting),
            ("retiring", pool.retiring),
            ("not_started", pool.not_started),
        ] {
            gauge!("dspex_workers", "instance" => instance.clone(), "phase" => phase).set(n as f64);
        }
        counter!("dspex_worker_restarts_total", "instance" => instance.clone())
            .absolute(u64::from(pool.restarts));
        counter!("dspex_worker_recycles_total", "instance" => instance.clone())
            .absolute(pool.counters.recycled);
        for worker in &pool.workers {
            let rss = match worker.rss_bytes {
                0 if worker.pid != 0 => dspex_bridge::process::rss_bytes(worker.pid).unwrap_or(0),
                measured => measured,
            };
            gauge!("dspex_worker_rss_bytes", "instance" => instance.clone(), "worker" => worker.id.clone()).set(rss as f64);
        }
    }
}

/// Refreshes the gauges once a second until the handle is gone or closed.
pub(crate) fn spawn_gauge_task(inner: Weak<Inner>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(GAUGE_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = inner.upgrade() else { return };
            let dspex = Dspex::from_inner(Arc::clone(&inner));
            dspex.record_gauges();
            if dspex.status().closing {
                return;
            }
        }
    });
}
