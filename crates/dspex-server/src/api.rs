//! The program routes: execute, stream, batch, list, describe, create.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use dspex::bridge::pool::Session;
use dspex::{ExecuteOptions, Prediction, ProgramInfo, Signature, StreamEvent};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::app::AppState;
use crate::config::module_named;
use crate::error::{ApiError, ErrorBody, ErrorDetail};

/// JSON in, with every rejection (not JSON, wrong shape, too large) as an
/// [`ApiError`] body.
#[derive(Debug, FromRequest)]
#[from_request(via(Json), rejection(ApiError))]
pub(crate) struct Body<T>(pub(crate) T);

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let category = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::UNPROCESSABLE_ENTITY => "validation",
            _ => "bad_request",
        };
        Self::new(status, category, rejection.body_text())
    }
}

/// A call's options, shared by execute, stream and batch.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CallOptions {
    /// A session id: calls of one session prefer one worker.
    #[serde(default)]
    pub session: Option<String>,
    /// Whether the session keeps state on its worker (then it runs only
    /// there, and fails with a `session` error once that worker is gone).
    #[serde(default)]
    pub stateful: bool,
    /// The call's whole time budget in milliseconds (default: the
    /// configured request timeout).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// The call may run twice without harm: retried even after failures
    /// that may have run it.
    #[serde(default)]
    pub idempotent: bool,
}

/// `POST /v1/programs/{id}/execute` and `/stream`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteBody {
    /// Input values by field name (see the program's input schema).
    #[schema(value_type = Object)]
    pub inputs: Map<String, Value>,
    /// Options.
    #[serde(flatten)]
    pub options: CallOptions,
}

/// `POST /v1/programs/{id}/batch`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// One map of inputs per item.
    #[schema(value_type = Vec<Object>)]
    pub inputs: Vec<Map<String, Value>>,
    /// Threads DSPy runs the batch on (default: the worker's choice).
    #[serde(default)]
    pub threads: Option<u32>,
    /// Options.
    #[serde(flatten)]
    pub options: CallOptions,
}

/// A program's result.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PredictionBody {
    /// The program that ran.
    pub program_id: String,
    /// Output values by field name (see the program's output schema).
    #[schema(value_type = Object)]
    pub outputs: Map<String, Value>,
    /// The LM that answered, when known.
    pub model: Option<String>,
    /// Tokens by model: `{"model": {"prompt_tokens", "completion_tokens", "total_tokens"}}`.
    #[schema(value_type = Object)]
    pub usage: Value,
    /// Attempts it took (1 unless retried).
    pub attempts: u32,
    /// Time from the call to the result, in milliseconds.
    pub latency_ms: f64,
}

impl From<Prediction> for PredictionBody {
    fn from(prediction: Prediction) -> Self {
        Self {
            usage: serde_json::to_value(&prediction.usage.by_model).unwrap_or(Value::Null),
            program_id: prediction.program_id,
            outputs: prediction.outputs,
            model: prediction.model,
            attempts: prediction.attempts,
            latency_ms: prediction.latency.as_secs_f64() * 1e3,
        }
    }
}

/// One item of a batch's results: a prediction or an error.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BatchItem {
    /// The item's prediction, if it succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prediction: Option<PredictionBody>,
    /// Why it failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

/// A batch's results, in the order of its inputs.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BatchResults {
    /// One per input.
    pub results: Vec<BatchItem>,
}

/// A program as listed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProgramSummary {
    /// Its id.
    pub id: String,
    /// Its module (`predict`, `chain_of_thought`, ...).
    pub module: String,
    /// Its signature in DSPy's string form.
    pub signature: String,
    /// Few-shot examples it carries.
    pub demos: usize,
    /// Whether it carries compiled state.
    pub compiled: bool,
    /// Calls that returned a prediction since the server started.
    pub calls: u64,
}

/// A program, described.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProgramDetail {
    /// The summary.
    #[serde(flatten)]
    pub summary: ProgramSummary,
    /// Its instructions.
    pub instructions: String,
    /// The JSON Schema (2020-12) of `inputs`.
    #[schema(value_type = Object)]
    pub input_schema: Value,
    /// The JSON Schema (2020-12) of `outputs`.
    #[schema(value_type = Object)]
    pub output_schema: Value,
    /// The hash of its exact definition.
    pub hash: String,
}

/// `POST /v1/programs` (only when `serve.allow_create` is on).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    /// Its id.
    pub id: String,
    /// Its signature, e.g. `"question: str -> answer: str"`.
    pub signature: String,
    /// A built-in module: `predict`, `chain_of_thought` or
    /// `multi_chain_comparison` (no Python import path).
    #[serde(default = "predict")]
    pub module: String,
    /// Instructions for the LM.
    #[serde(default)]
    pub instructions: Option<String>,
    /// Few-shot examples.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub demos: Vec<Map<String, Value>>,
}

fn predict() -> String {
    "predict".into()
}

impl AppState {
    fn info(&self, id: &str) -> Result<ProgramInfo, ApiError> {
        self.dspex()
            .program_info(id)
            .map_err(|_| ApiError::not_found(format!("no program {id:?}")))
    }

    fn options(&self, id: &str, options: CallOptions) -> Result<ExecuteOptions, ApiError> {
        let mut execute = ExecuteOptions {
            lm: self.program_lm(id),
            idempotent: options.idempotent,
            ..ExecuteOptions::default()
        };
        if let Some(ms) = options.timeout_ms {
            if ms == 0 || ms > self.settings().max_timeout_ms {
                return Err(ApiError::validation(format!(
                    "timeout_ms must be between 1 and {}",
                    self.settings().max_timeout_ms
                )));
            }
            execute.timeout = Some(Duration::from_millis(ms));
        }
        if let Some(session) = options.session {
            dspex::validate_id("session", &session)?;
            execute.session = Some(if options.stateful {
                Session::stateful(session)
            } else {
                Session::new(session)
            });
        } else if options.stateful {
            return Err(ApiError::validation("stateful needs a session"));
        }
        Ok(execute)
    }

    /// `info` as listed, with its calls from `status`.
    pub(crate) fn summary(info: &ProgramInfo, status: &dspex::Status) -> ProgramSummary {
        ProgramSummary {
            id: info.program_id.clone(),
            module: info.module.clone(),
            signature: info.signature.to_string(),
            demos: info.demos,
            compiled: info.compiled,
            calls: status
                .usage
                .get(&info.program_id)
                .map_or(0, |usage| usage.calls),
        }
    }
}

/// Runs a program once.
#[utoipa::path(
    post,
    path = "/v1/programs/{id}/execute",
    tag = "programs",
    params(("id" = String, Path, description = "The program id")),
    request_body = ExecuteBody,
    responses(
        (status = 200, description = "The prediction", body = PredictionBody),
        (status = 404, description = "No such program", body = ErrorBody),
        (status = 422, description = "Inputs that do not fit the signature", body = ErrorBody),
        (status = 429, description = "Overloaded (see Retry-After)", body = ErrorBody),
        (status = 503, description = "Unavailable or circuit open (see Retry-After)", body = ErrorBody),
        (status = 504, description = "The call's deadline passed", body = ErrorBody),
    ),
)]
pub(crate) async fn execute(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Body(body): Body<ExecuteBody>,
) -> Result<Json<PredictionBody>, ApiError> {
    state.info(&id)?;
    let options = state.options(&id, body.options)?;
    let started = Instant::now();
    let result = state.dspex().execute(&id, body.inputs, options).await;
    state.live().observe(result.is_ok(), started.elapsed());
    Ok(Json(result?.into()))
}

/// Runs a program and streams its output fields as the LM writes them
/// (server-sent events: `chunk` events, then one `prediction` or `error`).
#[utoipa::path(
    post,
    path = "/v1/programs/{id}/stream",
    tag = "programs",
    params(("id" = String, Path, description = "The program id")),
    request_body = ExecuteBody,
    responses(
        (status = 200, description = "Server-sent events: `chunk` ({field, text}), then `prediction` (a PredictionBody) or `error` (an ErrorBody)", content_type = "text/event-stream", body = String),
        (status = 404, description = "No such program", body = ErrorBody),
        (status = 422, description = "Inputs that do not fit the signature", body = ErrorBody),
    ),
)]
pub(crate) async fn stream(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Body(body): Body<ExecuteBody>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    state.info(&id)?;
    let options = state.options(&id, body.options)?;
    let started = Instant::now();
    let mut predictions = state.dspex().execute_stream(&id, body.inputs, options)?;
    let events = channel_stream(move |tx| async move {
        while let Some(event) = predictions.next().await {
            let (event, last) = match event {
                Ok(StreamEvent::Chunk(chunk)) => (
                    Event::default()
                        .event("chunk")
                        .json_data(serde_json::json!({"field": chunk.field, "text": chunk.text})),
                    false,
                ),
                Ok(StreamEvent::Prediction(prediction)) => {
                    state.live().observe(true, started.elapsed());
                    (
                        Event::default()
                            .event("prediction")
                            .json_data(PredictionBody::from(prediction)),
                        true,
                    )
                }
                Err(error) => {
                    state.live().observe(false, started.elapsed());
                    let error = ApiError::from(error);
                    (
                        Event::default()
                            .event("error")
                            .json_data(serde_json::json!({
                                "status": error.status().as_u16(),
                                "error": error.detail(),
                            })),
                        true,
                    )
                }
            };
            let event =
                event.unwrap_or_else(|e| Event::default().event("error").data(e.to_string()));
            if tx.send(event).await.is_err() || last {
                return;
            }
        }
    });
    Ok(Sse::new(events.map(Ok)).keep_alive(KeepAlive::default()))
}

/// A stream fed by a task: the task ends (and with it the DSPex call) when
/// the client goes.
fn channel_stream<F, Fut>(body: F) -> impl Stream<Item = Event>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let task = tokio::spawn(body(tx));
    let guard = AbortOnDrop(task);
    tokio_stream::wrappers::ReceiverStream::new(rx).map(move |event| {
        let _ = &guard;
        event
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs a program on many inputs in one call (DSPy's own parallelism on one
/// worker); each item gets its own result.
#[utoipa::path(
    post,
    path = "/v1/programs/{id}/batch",
    tag = "programs",
    params(("id" = String, Path, description = "The program id")),
    request_body = BatchBody,
    responses(
        (status = 200, description = "One result per input, in order", body = BatchResults),
        (status = 404, description = "No such program", body = ErrorBody),
        (status = 422, description = "An input that does not fit (the message names the item)", body = ErrorBody),
    ),
)]
pub(crate) async fn batch(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Body(body): Body<BatchBody>,
) -> Result<Json<BatchResults>, ApiError> {
    state.info(&id)?;
    let max = state.settings().max_batch;
    if body.inputs.is_empty() || body.inputs.len() > max {
        return Err(ApiError::validation(format!(
            "a batch carries 1 to {max} inputs, not {}",
            body.inputs.len()
        )));
    }
    let mut options = state.options(&id, body.options)?;
    options.threads = body.threads;
    let started = Instant::now();
    let results = state.dspex().execute_batch(&id, body.inputs, options).await;
    state.live().observe(results.is_ok(), started.elapsed());
    let results = results?
        .into_iter()
        .map(|result| match result {
            Ok(prediction) => BatchItem {
                prediction: Some(prediction.into()),
                error: None,
            },
            Err(error) => BatchItem {
                prediction: None,
                error: Some(ApiError::from(error).detail().clone()),
            },
        })
        .collect();
    Ok(Json(BatchResults { results }))
}

/// The programs this server runs.
#[utoipa::path(
    get,
    path = "/v1/programs",
    tag = "programs",
    responses((status = 200, description = "The programs, by id", body = Vec<ProgramSummary>)),
)]
pub(crate) async fn list(State(state): State<AppState>) -> Json<Vec<ProgramSummary>> {
    let status = state.dspex().status();
    Json(
        state
            .dspex()
            .list_programs()
            .iter()
            .map(|info| AppState::summary(info, &status))
            .collect(),
    )
}

/// One program: its signature and the JSON Schemas of its inputs and
/// outputs.
#[utoipa::path(
    get,
    path = "/v1/programs/{id}",
    tag = "programs",
    params(("id" = String, Path, description = "The program id")),
    responses(
        (status = 200, description = "The program", body = ProgramDetail),
        (status = 404, description = "No such program", body = ErrorBody),
    ),
)]
pub(crate) async fn describe(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ProgramDetail>, ApiError> {
    let info = state.info(&id)?;
    Ok(Json(detail(&state, &info)))
}

pub(crate) fn detail(state: &AppState, info: &ProgramInfo) -> ProgramDetail {
    ProgramDetail {
        summary: AppState::summary(info, &state.dspex().status()),
        instructions: info.signature.instructions().to_owned(),
        input_schema: info.signature.input_schema(),
        output_schema: info.signature.output_schema(),
        hash: info.hash.clone(),
    }
}

/// Creates a program from a signature and a built-in module (only when the
/// configuration allows it).
#[utoipa::path(
    post,
    path = "/v1/programs",
    tag = "programs",
    request_body = CreateBody,
    responses(
        (status = 201, description = "Created", body = ProgramDetail),
        (status = 403, description = "Creating programs over HTTP is off", body = ErrorBody),
        (status = 409, description = "The id is taken", body = ErrorBody),
        (status = 422, description = "A bad signature, module or demo", body = ErrorBody),
    ),
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    Body(body): Body<CreateBody>,
) -> Result<(StatusCode, Json<ProgramDetail>), ApiError> {
    if !state.settings().allow_create {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "creating programs over HTTP is off (serve.allow_create)",
        ));
    }
    dspex::validate_id("program", &body.id)?;
    let module = match module_named(&body.module) {
        Some(module) if module.name() != "python" => module,
        _ => {
            return Err(ApiError::validation(format!(
                "module {:?}: a request may name predict, chain_of_thought or \
                 multi_chain_comparison",
                body.module
            )));
        }
    };
    let mut signature = Signature::parse(&body.signature)
        .map_err(|e| ApiError::validation(format!("signature: {e}")))?;
    if let Some(instructions) = body.instructions {
        signature = signature.with_instructions(instructions);
    }
    let dspex = state.dspex();
    if dspex.program_info(&body.id).is_ok() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("program {:?} exists", body.id),
        ));
    }
    if dspex.list_programs().len() >= state.settings().max_programs {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "the server holds serve.max_programs = {} programs",
                state.settings().max_programs
            ),
        ));
    }
    dspex.create_program(&body.id, signature, module).await?;
    if !body.demos.is_empty()
        && let Err(error) = dspex.set_demos(&body.id, body.demos).await
    {
        let _ = dspex.delete_program(&body.id).await;
        return Err(error.into());
    }
    let info = state.info(&body.id)?;
    Ok((StatusCode::CREATED, Json(detail(&state, &info))))
}
