//! `dspex serve`: DSPex programs over HTTP.
//!
//! The programs of a configuration file ([`ServeFile`]) run on the same
//! [`Dspex`] handle a Rust service embeds, behind an axum router:
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/programs/{id}/execute` | typed JSON in and out (`inputs`, `session`, `stateful`, `timeout_ms`, `idempotent`) |
//! | `POST /v1/programs/{id}/stream` | server-sent events: `chunk`s, then `prediction` (or `error`) |
//! | `POST /v1/programs/{id}/batch` | many inputs, one result each |
//! | `GET /v1/programs`, `GET /v1/programs/{id}` | the programs; one's signature and JSON Schemas |
//! | `POST /v1/programs` | create one (built-in modules; only with `serve.allow_create`) |
//! | `GET /healthz`, `GET /readyz` | alive; ready (a worker ready, not `Failed`, not draining) |
//! | `GET /v1/status`, `GET /v1/live` | the tree as JSON; live server-sent updates |
//! | `GET /metrics` | Prometheus text format (recorded by the library) |
//! | `GET /openapi.json` | OpenAPI 3.1, each program's schemas included |
//! | `GET /` | the live page |
//!
//! Errors are JSON `{"error": {"category", "message", "retryable",
//! "retry_after_ms"}}` with the status of their category (validation 422,
//! overloaded 429 and unavailable 503 with `Retry-After`, timeout 504).
//! The server binds 127.0.0.1 unless told otherwise and then requires a
//! bearer token; no import path, file path or LM endpoint comes from a
//! request. A graceful stop ([`Server::stop`]) stops admitting, drains the
//! requests and streams in flight within the grace, then stops the pool.

mod api;
mod app;
pub mod config;
mod error;
mod live;
mod openapi;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dspex::{Dspex, SavedProgram, Signature};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::sync::watch;

pub use api::{
    BatchBody, BatchItem, BatchResults, CallOptions, CreateBody, ExecuteBody, PredictionBody,
    ProgramDetail, ProgramSummary,
};
pub use app::{AppState, router};
pub use config::{ProgramSpec, ServeFile, ServeSettings};
pub use error::{ApiError, ErrorBody, ErrorDetail, ServeError};

/// The process-wide Prometheus recorder, installed on first use (a
/// process has one `metrics` recorder). `None` if another recorder was
/// installed first.
pub fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ];
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .ok()?
                .install_recorder()
                .ok()?;
            dspex::describe_metrics();
            Some(handle)
        })
        .clone()
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    state: AppState,
    grace: Duration,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Starts DSPex from `file`, creates its programs, binds and serves.
    ///
    /// # Cancel safety
    /// Not cancel safe once the workers have started (dropping the future
    /// leaves the pool to the drop of its tree).
    ///
    /// # Errors
    /// [`ServeError::Config`] for a bad file or an exposed address without
    /// a token; DSPex's start errors; a program that cannot be created; an
    /// address that cannot be bound.
    pub async fn start(file: ServeFile) -> Result<Self, ServeError> {
        file.validate()?;
        file.check_exposure()?;
        let metrics = prometheus();
        let dspex = Dspex::builder().config(file.dspex.clone()).start().await?;
        match Self::start_with(dspex.clone(), file, metrics).await {
            Ok(server) => Ok(server),
            Err(error) => {
                dspex.shutdown().await;
                Err(error)
            }
        }
    }

    /// Serves `file`'s programs on a handle the caller started.
    ///
    /// # Cancel safety
    /// Cancel safe until it returns (the handle is the caller's).
    ///
    /// # Errors
    /// As [`Server::start`], DSPex's start excepted.
    pub async fn start_with(
        dspex: Dspex,
        file: ServeFile,
        metrics: Option<PrometheusHandle>,
    ) -> Result<Self, ServeError> {
        file.check_exposure()?;
        let state = AppState::new(
            dspex.clone(),
            file.serve.clone(),
            file.token.clone(),
            metrics,
        );
        for spec in &file.programs {
            create(&dspex, spec).await?;
            if let Some(lm) = &spec.lm {
                state.set_program_lm(&spec.id, lm.to_lm_config()?);
            }
        }
        let listener = tokio::net::TcpListener::bind(file.serve.bind)
            .await
            .map_err(|source| ServeError::Io {
                context: format!("binding {}", file.serve.bind),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServeError::Io {
            context: "reading the bound address".into(),
            source,
        })?;
        let (stop, mut stopped) = watch::channel(false);
        let app = router(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                })
                .await
        });
        tracing::info!(%addr, programs = file.programs.len(), "dspex serve: listening");
        Ok(Self {
            addr,
            state,
            grace: file.dspex.shutdown_grace(),
            stop,
            task,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared state (the handle among it).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `signal` resolves, then stops gracefully.
    ///
    /// # Cancel safety
    /// As [`Server::stop`].
    ///
    /// # Errors
    /// As [`Server::stop`].
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> Result<(), ServeError> {
        signal.await;
        self.stop().await
    }

    /// Stops gracefully: `/readyz` turns 503, the live streams end and
    /// every response says `Connection: close`; after `drain_delay_ms` no
    /// new connection is accepted, the requests and streams in flight
    /// finish within the shutdown grace (`shutdown_grace_ms`), then the
    /// pool stops and its workers are gone.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropped midway, requests may be cut and the pool
    /// left to the drop of its tree.
    ///
    /// # Errors
    /// [`ServeError::Io`] if serving had failed.
    pub async fn stop(self) -> Result<(), ServeError> {
        let started = Instant::now();
        self.state.begin_drain();
        tokio::time::sleep(Duration::from_millis(self.state.drain_delay_ms())).await;
        let _ = self.stop.send(true);
        let mut task = self.task;
        let served = match tokio::time::timeout(self.grace, &mut task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(std::io::Error::other(join)),
            Err(_) => {
                tracing::warn!(grace = ?self.grace, "dspex serve: requests still open after the grace; closing them");
                task.abort();
                Ok(())
            }
        };
        let left = self.grace.saturating_sub(started.elapsed());
        self.state.dspex().shutdown_within(left).await;
        served.map_err(|source| ServeError::Io {
            context: "serving".into(),
            source,
        })
    }
}

/// Creates one configured program.
async fn create(dspex: &Dspex, spec: &ProgramSpec) -> Result<(), ServeError> {
    let context = |e: dspex::Error| ServeError::Config(format!("program {:?}: {e}", spec.id));
    let module = spec.build_module()?;
    let saved = spec
        .state
        .as_ref()
        .map(SavedProgram::read)
        .transpose()
        .map_err(context)?;
    let mut signature = match (&spec.signature, &saved) {
        (Some(text), _) => Signature::parse(text)
            .map_err(|e| ServeError::Config(format!("program {:?}: signature: {e}", spec.id)))?,
        (None, Some(saved)) => saved.signature().map_err(context)?.ok_or_else(|| {
            ServeError::Config(format!(
                "program {:?}: its state file was not saved by DSPex: give its signature",
                spec.id
            ))
        })?,
        (None, None) => {
            return Err(ServeError::Config(format!(
                "program {:?}: give it a signature",
                spec.id
            )));
        }
    };
    if let Some(instructions) = &spec.instructions {
        signature = signature.with_instructions(instructions.clone());
    }
    match &spec.state {
        Some(path) => dspex
            .load_program(&spec.id, signature, module, path)
            .await
            .map(drop),
        None => dspex
            .create_program(&spec.id, signature, module)
            .await
            .map(drop),
    }
    .map_err(context)?;
    if !spec.demos.is_empty() {
        dspex
            .set_demos(&spec.id, spec.demos.clone())
            .await
            .map_err(context)?;
    }
    Ok(())
}
