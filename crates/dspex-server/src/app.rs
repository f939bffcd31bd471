//! The application: shared state, the router and its layers (request id,
//! trace span, body limit, bearer token), and the operational routes
//! (health, readiness, status, metrics, the live page).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use dspex::{Dspex, LmConfig, Secret};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::api;
use crate::config::ServeSettings;
use crate::error::ApiError;
use crate::live::Live;

/// What every handler shares. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    dspex: Dspex,
    settings: ServeSettings,
    token: Option<Secret>,
    /// Per-program LMs (`[[programs]] lm`).
    lms: RwLock<HashMap<String, LmConfig>>,
    metrics: Option<PrometheusHandle>,
    live: Live,
    /// Set once a graceful stop began: `/readyz` says so, and the live
    /// streams end.
    draining: tokio::sync::watch::Sender<bool>,
}

impl AppState {
    /// State for a server over `dspex`. `metrics` renders `/metrics` (404
    /// without it).
    pub fn new(
        dspex: Dspex,
        settings: ServeSettings,
        token: Option<Secret>,
        metrics: Option<PrometheusHandle>,
    ) -> Self {
        let live = Live::start(&dspex);
        Self(Arc::new(Shared {
            dspex,
            settings,
            token,
            lms: RwLock::default(),
            metrics,
            live,
            draining: tokio::sync::watch::Sender::new(false),
        }))
    }

    /// The handle.
    pub fn dspex(&self) -> &Dspex {
        &self.0.dspex
    }

    pub(crate) fn settings(&self) -> &ServeSettings {
        &self.0.settings
    }

    pub(crate) fn live(&self) -> &Live {
        &self.0.live
    }

    /// Runs program `id` on `lm` (instead of the instance's LM).
    pub fn set_program_lm(&self, id: &str, lm: LmConfig) {
        self.0
            .lms
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.to_owned(), lm);
    }

    pub(crate) fn program_lm(&self, id: &str) -> Option<LmConfig> {
        self.0
            .lms
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// Marks the server draining: `/readyz` answers 503 from now on.
    pub fn begin_drain(&self) {
        self.0.draining.send_replace(true);
    }

    pub(crate) fn drain_delay_ms(&self) -> u64 {
        self.0.settings.drain_delay_ms
    }

    fn draining(&self) -> bool {
        *self.0.draining.borrow()
    }

    /// Resolves once a graceful stop began.
    pub(crate) fn drained(&self) -> impl std::future::Future<Output = ()> + Send + use<> {
        let mut draining = self.0.draining.subscribe();
        async move {
            let _ = draining.wait_for(|draining| *draining).await;
        }
    }
}

/// The router with every route and layer.
pub fn router(state: AppState) -> Router {
    let limit = state.settings().body_limit_bytes;
    let guarded = Router::new()
        .route("/v1/programs", get(api::list).post(api::create))
        .route("/v1/programs/{id}", get(api::describe))
        .route("/v1/programs/{id}/execute", post(api::execute))
        .route("/v1/programs/{id}/stream", post(api::stream))
        .route("/v1/programs/{id}/batch", post(api::batch))
        .route("/v1/status", get(status))
        .route("/v1/live", get(crate::live::events))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(crate::openapi::document))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(guarded)
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            close_when_draining,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http()
                // A failed call is counted in the metrics and logged where it
                // failed; the access log says it at WARN, not ERROR.
                .on_failure(DefaultOnFailure::new().level(tracing::Level::WARN))
                .make_span_with(|request: &Request| {
                    let id = request
                        .extensions()
                        .get::<RequestId>()
                        .and_then(|id| id.header_value().to_str().ok())
                        .unwrap_or("");
                    tracing::info_span!(
                        "http.request",
                        method = %request.method(),
                        path = request.uri().path(),
                        request_id = id,
                    )
                }),
        )
        .layer(SetRequestIdLayer::x_request_id(Sequential::default()))
        .with_state(state)
}

/// Request ids `<start time in hex>-<n>`: unique per process run, in order.
#[derive(Debug, Clone)]
struct Sequential {
    prefix: String,
    next: Arc<AtomicU64>,
}

impl Default for Sequential {
    fn default() -> Self {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        Self {
            prefix: format!("{started:x}"),
            next: Arc::new(AtomicU64::new(1)),
        }
    }
}

impl MakeRequestId for Sequential {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{}-{n}", self.prefix))
            .ok()
            .map(RequestId::new)
    }
}

#[derive(Debug, Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// The bearer token, compared in constant time: the `Authorization` header,
/// or (for `/v1/live`, which a browser's `EventSource` opens without
/// headers) a `token` query parameter.
async fn authorize(
    State(state): State<AppState>,
    Query(query): Query<TokenQuery>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = &state.0.token else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::to_owned)
        .or_else(|| {
            (request.uri().path() == "/v1/live")
                .then_some(query.token)
                .flatten()
        });
    let ok =
        given.is_some_and(|given| bool::from(given.as_bytes().ct_eq(expected.expose().as_bytes())));
    if ok {
        next.run(request).await
    } else {
        let mut response = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a bearer token is required (Authorization: Bearer <token>)",
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        response
    }
}

/// While draining, every response closes its connection, so clients move
/// off before the idle connections are closed.
async fn close_when_draining(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    if state.draining() {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

async fn page() -> Html<&'static str> {
    Html(include_str!("../assets/live.html"))
}

/// `GET /healthz`: the process answers.
async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: at least one worker ready, the pool not `Failed`, and
/// the server not draining.
async fn readyz(State(state): State<AppState>) -> Response {
    let status = state.dspex().status();
    let why_not = if state.draining() || status.closing {
        Some("draining".to_owned())
    } else if let Some(failed) = &status.adapter.failed {
        Some(format!("failed: {failed}"))
    } else {
        match &status.adapter.pool {
            Some(pool) if matches!(pool.state, dspex::bridge::pool::PoolState::Failed(_)) => {
                Some("the pool has failed".to_owned())
            }
            Some(pool) if pool.idle + pool.busy == 0 => Some("no worker is ready".to_owned()),
            _ => None,
        }
    };
    match why_not {
        None => "ready".into_response(),
        Some(why) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why).into_response()
        }
    }
}

/// `GET /v1/status`: the supervision tree, queue, breaker and programs as
/// JSON (what the live page shows).
async fn status(State(state): State<AppState>) -> Response {
    axum::Json(state.live().snapshot(&state)).into_response()
}

/// `GET /metrics`: the Prometheus text format.
async fn metrics(State(state): State<AppState>) -> Response {
    let Some(handle) = &state.0.metrics else {
        return ApiError::not_found("metrics are off").into_response();
    };
    state.dspex().record_gauges();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}
