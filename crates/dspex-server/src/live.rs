//! What the live page shows: a snapshot of the tree (also `GET
//! /v1/status`), throughput and latency in 5-second buckets over the last
//! ten minutes, and the pool's events as they happen (`GET /v1/live`,
//! server-sent events `snapshot` once a second and `event`).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use dspex::bridge::conditional::Mode;
use dspex::bridge::pool::{PoolState, SlotPhase};
use dspex::{AdapterKind, Dspex};
use futures::{Stream, StreamExt};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_stream::wrappers::{BroadcastStream, IntervalStream};

use crate::app::AppState;

/// Seconds per point of the series.
const BUCKET_SECS: u64 = 5;
/// Points kept (ten minutes).
const BUCKETS: usize = 120;
/// Latencies kept per bucket for its percentiles.
const SAMPLES_PER_BUCKET: usize = 4096;

/// The live view's state.
#[derive(Debug)]
pub(crate) struct Live {
    started: Instant,
    series: Mutex<VecDeque<Bucket>>,
    events: broadcast::Sender<Value>,
    /// Restarts by worker id, counted from the events.
    restarts: Arc<Mutex<HashMap<String, u64>>>,
}

#[derive(Debug)]
struct Bucket {
    /// Unix seconds at its start.
    t: u64,
    ok: u64,
    errors: u64,
    latencies_ms: Vec<f32>,
}

fn unix_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Live {
    /// Starts following `dspex`'s events (the task ends with the handle's
    /// event channel).
    pub(crate) fn start(dspex: &Dspex) -> Self {
        let (events, _) = broadcast::channel(256);
        let restarts: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
        let mut pool_events = dspex.events();
        let sender = events.clone();
        let counts = Arc::clone(&restarts);
        tokio::spawn(async move {
            loop {
                let event = match pool_events.recv().await {
                    Ok(event) => event,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let (kind, worker, pid, detail) = describe(&event);
                if kind == "worker_exited"
                    && let Some(worker) = &worker
                {
                    *counts
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .entry(worker.clone())
                        .or_default() += 1;
                }
                let _ = sender.send(json!({
                    "t": unix_secs(), "kind": kind, "worker": worker, "pid": pid, "detail": detail,
                }));
            }
        });
        Self {
            started: Instant::now(),
            series: Mutex::new(VecDeque::with_capacity(BUCKETS + 1)),
            events,
            restarts,
        }
    }

    /// Counts one program call that ended.
    pub(crate) fn observe(&self, ok: bool, took: Duration) {
        let now = unix_secs() as u64 / BUCKET_SECS * BUCKET_SECS;
        let mut series = self
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if series.back().is_none_or(|b| b.t != now) {
            series.push_back(Bucket {
                t: now,
                ok: 0,
                errors: 0,
                latencies_ms: Vec::new(),
            });
            while series.len() > BUCKETS {
                series.pop_front();
            }
        }
        let bucket = series.back_mut().expect("just pushed");
        if ok {
            bucket.ok += 1;
        } else {
            bucket.errors += 1;
        }
        if bucket.latencies_ms.len() < SAMPLES_PER_BUCKET {
            bucket.latencies_ms.push(took.as_secs_f32() * 1e3);
        }
    }

    fn series(&self) -> Vec<Value> {
        let oldest = (unix_secs() as u64).saturating_sub(BUCKET_SECS * BUCKETS as u64);
        let mut series = self
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        series
            .iter_mut()
            .filter(|b| b.t >= oldest)
            .map(|b| {
                b.latencies_ms.sort_by(f32::total_cmp);
                let at = |q: f64| {
                    let n = b.latencies_ms.len();
                    (n > 0).then(|| b.latencies_ms[((n - 1) as f64 * q).round() as usize])
                };
                json!({"t": b.t, "ok": b.ok, "errors": b.errors, "p50_ms": at(0.5), "p99_ms": at(0.99)})
            })
            .collect()
    }

    /// The snapshot of the contract in `assets/live.html`.
    pub(crate) fn snapshot(&self, state: &AppState) -> Value {
        let dspex = state.dspex();
        let status = dspex.status();
        let restarts = self
            .restarts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let pool = status.adapter.pool.as_ref();
        let state_word = match (&status.adapter.failed, pool.map(|p| &p.state)) {
            (Some(_), _) | (_, Some(PoolState::Failed(_))) => "failed",
            (_, Some(PoolState::Draining)) => "draining",
            (_, Some(PoolState::Stopped)) => "stopped",
            _ if status.closing => "draining",
            _ => "running",
        };
        let failed = status
            .adapter
            .failed
            .clone()
            .or_else(|| match pool.map(|p| &p.state) {
                Some(PoolState::Failed(cause)) => Some(cause.clone()),
                _ => None,
            });
        let pool_json = pool.map(|pool| {
            let workers: Vec<Value> = pool
                .workers
                .iter()
                .map(|w| {
                    let rss = match w.rss_bytes {
                        0 if w.pid != 0 => dspex::bridge::process::rss_bytes(w.pid).unwrap_or(0),
                        measured => measured,
                    };
                    json!({
                        "id": w.id, "pid": w.pid, "phase": phase(w.phase), "leases": w.leases,
                        "requests": w.requests, "rss_bytes": rss,
                        "restarts": restarts.get(&w.id).copied().unwrap_or(0),
                        "overflow": w.overflow,
                    })
                })
                .collect();
            json!({
                "restarts": pool.restarts, "leases": pool.leases,
                "capacity_per_worker": pool.capacity_per_worker, "workers": workers,
                "idle": pool.idle, "busy": pool.busy, "starting": pool.starting,
                "counters": {
                    "checkouts": pool.counters.checkouts, "overloaded": pool.counters.overloaded,
                    "removed": pool.counters.removed, "recycled": pool.counters.recycled,
                    "revived": pool.counters.revived,
                },
            })
        });
        let programs: Vec<Value> = dspex
            .list_programs()
            .iter()
            .map(|p| {
                json!({
                    "id": p.program_id, "module": p.module,
                    "calls": status.usage.get(&p.program_id).map_or(0, |u| u.calls),
                })
            })
            .collect();
        json!({
            "name": dspex.name(),
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": self.started.elapsed().as_secs_f64(),
            "adapter": match status.adapter.kind {
                AdapterKind::Python => "python",
                AdapterKind::BridgeMock => "bridge_mock",
                AdapterKind::Mock => "mock",
            },
            "mode": status.adapter.mode.map(|mode| match mode {
                Mode::Pool => "pool",
                Mode::Single => "single",
                Mode::Disabled => "disabled",
            }),
            "state": state_word,
            "failed": failed,
            "breaker": {"state": match status.breaker.state {
                dspex::resilience::BreakerState::Closed => "closed",
                dspex::resilience::BreakerState::Open => "open",
                dspex::resilience::BreakerState::HalfOpen => "half_open",
            }, "trips": status.breaker.trips},
            "queue": {"queued": pool.map_or(0, |p| p.queued), "max_queue": pool.and_then(|p| p.max_queue)},
            "in_flight": status.in_flight,
            "pool": pool_json,
            "programs": programs,
            "series": self.series(),
        })
    }
}

fn phase(phase: SlotPhase) -> &'static str {
    match phase {
        SlotPhase::NotStarted => "not_started",
        SlotPhase::Starting => "starting",
        SlotPhase::Configuring => "configuring",
        SlotPhase::Ready => "ready",
        SlotPhase::Down => "down",
        SlotPhase::Retiring => "retiring",
        SlotPhase::Retired => "retired",
    }
}

/// An event's kind, worker, pid and detail.
fn describe(event: &dspex::Event) -> (&'static str, Option<String>, Option<u32>, String) {
    use dspex::Event as E;
    match event {
        E::WorkerReady { id, pid } => {
            ("worker_ready", Some(id.clone()), Some(*pid), "ready".into())
        }
        E::WorkerExited { id, pid, exit } => (
            "worker_exited",
            Some(id.clone()),
            Some(*pid),
            exit.to_string(),
        ),
        E::WorkerRemoved { id, pid, reason } => (
            "worker_removed",
            Some(id.clone()),
            Some(*pid),
            reason.clone(),
        ),
        E::WorkerRecycled { id, pid, reason } => (
            "worker_recycled",
            Some(id.clone()),
            Some(*pid),
            reason.clone(),
        ),
        E::SessionLost { session_id } => {
            ("session_lost", None, None, format!("session {session_id}"))
        }
        E::Failed { cause } => ("failed", None, None, cause.clone()),
        E::Revived => ("revived", None, None, "serving again".into()),
        other => ("other", None, None, format!("{other:?}")),
    }
}

/// `GET /v1/live`: `snapshot` at once and every second, `event` as they
/// happen.
pub(crate) async fn events(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let snapshots = {
        let state = state.clone();
        IntervalStream::new(tokio::time::interval(Duration::from_secs(1))).map(move |_| {
            Event::default()
                .event("snapshot")
                .json_data(state.live().snapshot(&state))
        })
    };
    let events = BroadcastStream::new(state.live().events.subscribe())
        .filter_map(|event| async move { event.ok() })
        .map(|event| Event::default().event("event").json_data(event));
    let merged = futures::stream::select(snapshots, events)
        .filter_map(|event| async move { event.ok() })
        .map(Ok)
        .take_until(state.drained());
    Sse::new(merged).keep_alive(KeepAlive::default())
}
